"""Tests of lightning_vitrcam.render: colours, captions, layouts and real PNG files."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_vitrcam.render import (
    Style,
    colorize,
    denormalize,
    heatmap,
    overlay,
    row_captions,
    saliency_grid,
    save_png,
    timeline,
    to_png,
)

torch.set_num_threads(1)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(x01: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (x01 - m) / s


def black_images(n: int, size: int = 32) -> torch.Tensor:
    return normalise(torch.zeros(n, 3, size, size))


def is_red(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.int()
    return (r > 200) & (g < 120) & (b < 120)


# --------------------------------------------------------------------------- normalisation
def test_denormalize_inverts_normalisation():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    back = denormalize(normalise(x), Style(IMAGENET_MEAN, IMAGENET_STD))
    assert back.dtype == torch.float32 and back.shape == (2, 3, 8, 8)
    torch.testing.assert_close(back, x)
    # out-of-range values are clipped into [0, 1]
    assert float(denormalize(torch.full((1, 3, 2, 2), 50.0)).max()) == 1.0


# --------------------------------------------------------------------------- colour
def test_colorize_matches_matplotlib_and_gradient_ends_differ():
    grad = torch.linspace(0, 1, 16).repeat(16, 1)[None]  # left 0 .. right 1
    for name in ("inferno", "viridis"):
        rgb = colorize(grad, cmap=name)
        ref = matplotlib.colormaps[name]([0.0, 1.0])[:, :3]
        np.testing.assert_allclose(rgb[0, :, 0, 0].numpy(), ref[0], atol=1e-6)
        np.testing.assert_allclose(rgb[0, :, 0, -1].numpy(), ref[1], atol=1e-6)


def test_overlay_colour_follows_map():
    images = black_images(1)
    grad = torch.linspace(0, 1, 4).repeat(4, 1)[None]
    out = overlay(images, grad, Style(alpha=1.0))
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 32, 32)
    left, right = out[0, :, 16, 0].int(), out[0, :, 16, -1].int()
    assert (left - right).abs().sum() > 200  # dark purple/black vs bright yellow
    # a different map gives a different picture; alpha 0 is the de-normalised image itself
    assert not torch.equal(out, overlay(images, grad.flip(-1), Style(alpha=1.0)))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain = overlay(normalise(x), grad, Style(alpha=0.0))
    torch.testing.assert_close(plain.float(), (x * 255).round(), atol=1, rtol=0)
    half = overlay(normalise(x), grad, Style(alpha=0.5, cmap="gray"))
    expect = (0.5 * x + 0.5 * colorize(grad, (32, 32), "gray")) * 255
    torch.testing.assert_close(half.float(), expect.round(), atol=1, rtol=0)


def test_bad_colormap_name():
    with pytest.raises(ValueError, match="matplotlib.colormaps"):
        overlay(black_images(1), torch.rand(1, 2, 2), Style(cmap="no-such-map"))


# --------------------------------------------------------------------------- grid
def grid_args(n: int = 2):
    return dict(
        preds=torch.tensor([0, 1, 2][:n]),
        probs=torch.tensor([0.9, 0.6, 0.3][:n]),
        class_names=["cat", "dog", "bird"],
    )


def test_saliency_grid_layout_and_png(tmp_path):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps = torch.rand(2, 4, 4)
    g2 = saliency_grid(images, maps, **grid_args())
    g3 = saliency_grid(
        images, maps, labels=torch.tensor([0, 1]), true_maps=torch.rand(2, 4, 4), **grid_args()
    )
    for g in (g2, g3):
        assert g.dtype == torch.uint8 and g.dim() == 3 and g.shape[0] == 3
    # 32 px tiles are upscaled to 96 px; a third column adds one tile and its padding
    assert g2.shape[2] == 2 * (96 + 2) + 2
    assert g3.shape[2] == g2.shape[2] + 96 + 2
    bare = saliency_grid(images, maps, captions=False, **grid_args())
    assert bare.shape == (3, 2 * (96 + 2) + 2, g2.shape[2])
    path = save_png(g3, tmp_path / "grid.png")
    with Image.open(path) as im:
        assert im.size == (g3.shape[2], g3.shape[1]) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), g3.permute(1, 2, 0).numpy())


def test_saliency_grid_captions_change_pixels():
    # black images and a map coloured black: every bright pixel is caption text
    images, maps = black_images(2), torch.zeros(2, 4, 4)
    kw = dict(style=Style(cmap="gray"), **grid_args())
    bare = saliency_grid(images, maps, captions=False, **kw)
    captioned = saliency_grid(images, maps, **kw)
    assert int(bare.max()) == 0
    assert captioned.shape[1] > bare.shape[1]
    assert int((captioned.int().sum(0) > 300).sum()) > 100  # lots of light text pixels
    # different text, same tiles: the pictures differ
    other = saliency_grid(
        images,
        maps,
        style=Style(cmap="gray"),
        preds=torch.tensor([0, 1]),
        probs=torch.tensor([0.1, 0.6]),
        class_names=["cat", "dog", "bird"],
    )
    assert other.shape == captioned.shape and not torch.equal(other, captioned)


def test_saliency_grid_marks_mismatch_in_red():
    images, maps = black_images(2), torch.zeros(2, 4, 4)
    kw = dict(style=Style(cmap="gray"), **grid_args())
    right = saliency_grid(images, maps, labels=torch.tensor([0, 1]), **kw)
    wrong = saliency_grid(images, maps, labels=torch.tensor([0, 2]), **kw)
    assert int(is_red(right).sum()) == 0
    red_rows = is_red(wrong).any(dim=1).nonzero().flatten()
    assert len(red_rows) > 10
    # the mark belongs to the second image's strip: below the middle of the picture
    assert int(red_rows.min()) > wrong.shape[1] // 2


def test_saliency_grid_needs_labels_for_true_maps():
    with pytest.raises(ValueError, match="labels"):
        saliency_grid(
            black_images(1),
            torch.rand(1, 2, 2),
            preds=[0],
            probs=[0.5],
            true_maps=torch.rand(1, 2, 2),
        )


def test_row_captions():
    caps = row_captions(
        torch.tensor([0, 2]),
        torch.tensor([0.93, 0.4]),
        torch.tensor([0, 1]),
        ["cat", "dog", "bird"],
    )
    assert caps[0] == "pred: cat (0.93) | true: cat"
    assert caps[1].startswith("pred: bird (0.40) | true: dog") and "MISMATCH" in caps[1]
    assert row_captions([3], [0.5]) == ["pred: 3 (0.50)"]


# --------------------------------------------------------------------------- heatmap, timeline
def test_heatmap_cells_title_and_png(tmp_path):
    m = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    pic = heatmap(m, size=64)
    assert pic.dtype == torch.uint8 and pic.shape == (3, 64, 64)
    # nearest upsampling: every token cell is one flat colour, and cells differ
    cells = pic.view(3, 2, 32, 2, 32)
    assert (cells == cells[:, :, :1, :, :1]).all()
    assert not torch.equal(pic[:, 0, 0], pic[:, 0, 63])
    titled = heatmap(m, size=64, title="mean saliency")
    assert titled.shape[1] > 64 and titled.shape[2] == 64
    torch.testing.assert_close(titled[:, -64:], pic)
    assert int((titled[:, :-64].int().sum(0) > 300).sum()) > 20  # title text drawn
    with Image.open(save_png(titled, tmp_path / "heat.png")) as im:
        assert im.size == (64, titled.shape[1])


def test_timeline_picks_first_and_last(tmp_path):
    frames = [torch.full((3, 8, 8), 10 * i, dtype=torch.uint8) for i in range(20)]
    labels = [f"ep {i}" for i in range(20)]
    row = timeline(frames, labels, max_columns=5)
    assert row.dtype == torch.uint8
    assert row.shape[2] == 5 * (96 + 2) + 2
    tile_colours = {int(v) for v in row[0, -50, 2::98][:5]}
    assert tile_colours == {0, 50, 100, 140, 190}  # 0, 5, 10, 14, 19: evenly spaced, ends kept
    short = timeline(frames[:3], labels[:3], max_columns=5)
    assert short.shape[2] == 3 * (96 + 2) + 2
    relabelled = timeline(frames, [f"step {i}" for i in range(20)], max_columns=5)
    assert relabelled.shape == row.shape and not torch.equal(relabelled, row)
    assert to_png(row)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        timeline(frames, labels[:3])


def test_png_roundtrip(tmp_path):
    img = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    path = save_png(img, tmp_path / "sub" / "x.png")
    with Image.open(path) as im:
        assert im.size == (7, 5)
        assert np.array_equal(np.asarray(im), img.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="uint8"):
        to_png(img.float())


# --------------------------------------------------------------------------- channels
def test_grayscale_images_render_grey():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    base = denormalize((x - 0.5) / 0.25, Style((0.5,), (0.25,)))
    assert base.shape == (2, 3, 16, 16)
    assert torch.equal(base[:, 0], base[:, 1]) and torch.equal(base[:, 1], base[:, 2])
    torch.testing.assert_close(base[:, 0], x[:, 0])
    # default statistics: ImageNet's fitted to one channel (the mean of the three)
    plain = overlay(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 2), Style(alpha=0.0))
    assert plain.shape == (1, 3, 8, 8) and int(plain[0, 0, 0, 0]) == round(0.449 * 255)
    grid = saliency_grid(
        (x - 0.5) / 0.25, torch.rand(2, 4, 4), style=Style((0.5,), (0.25,)), **grid_args()
    )
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3


def test_more_than_three_channels_render_chosen_channels():
    x = torch.rand(1, 5, 8, 8, generator=torch.Generator().manual_seed(4))
    mean, std = (0.0,) * 5, (1.0,) * 5
    torch.testing.assert_close(denormalize(x, Style(mean, std)), x[:, :3])  # the first three
    torch.testing.assert_close(
        denormalize(x, Style(mean, std, channels=[4, 0, 2])), x[:, [4, 0, 2]]
    )
    grey = denormalize(x, Style(mean, std, channels=[3]))
    torch.testing.assert_close(grey, x[:, [3, 3, 3]])
    out = overlay(x, torch.rand(1, 2, 2), Style(mean, std, channels=[4, 3, 2], alpha=0.0))
    torch.testing.assert_close(out.float(), (x[:, [4, 3, 2]] * 255).round(), atol=1, rtol=0)
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3"):
        denormalize(x, Style(mean, std, channels=[0, 1]))
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3"):
        denormalize(x, Style(mean, std, channels=[5, 0, 1]))
    with pytest.raises(ValueError, match="5 channels but mean/std have 3 values"):
        denormalize(x, Style(IMAGENET_MEAN, IMAGENET_STD))
