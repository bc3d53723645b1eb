"""Pictures of saliency maps for loggers and files.

:func:`overlay` colours maps and blends them onto the de-normalised images on the images'
device. :func:`saliency_grid`, :func:`heatmap` and :func:`timeline` build one ``uint8
[3, H, W]`` CPU picture each, with captions drawn into the pixels because TensorBoard images
have no caption field; :func:`saliency_picture` adds the bare rows and their captions
(:func:`row_captions`) for loggers that caption each image. :func:`to_png` and :func:`save_png`
write PNGs. Normalisation statistics are passed in (see :mod:`lightning_vitrcam.normalization`);
nothing here looks inside a model.

Example:
    >>> import torch
    >>> images, maps = torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4)
    >>> overlay(images, maps).shape, overlay(images, maps).dtype
    (torch.Size([2, 3, 32, 32]), torch.uint8)
    >>> grid = saliency_grid(images, maps, preds=torch.tensor([0, 1]),
    ...                      probs=torch.tensor([0.9, 0.4]), labels=torch.tensor([0, 2]))
    >>> grid.dtype, grid.shape[0]
    (torch.uint8, 3)
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from lightning_vitrcam._ops import as_maps, minmax
from lightning_vitrcam.normalization import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_mean_std,
    fit_channels,
)

__all__ = [
    "Picture",
    "colorize",
    "denormalize",
    "evenly_spaced",
    "heatmap",
    "overlay",
    "probe_timelines",
    "row_captions",
    "saliency_grid",
    "saliency_picture",
    "save_png",
    "timeline",
    "to_png",
    "to_uint8",
]

# Tiles smaller than this are upscaled (nearest) so that captions and token cells stay legible.
MIN_TILE = 96
_PAD = 2
_BG = (24, 24, 24)
# zlib level of every PNG written: on the demo's 16-probe grid (2906x392) level 1 took 0.036 s
# and PIL's default 6 took 0.127 s for a file 5% smaller; encoding is the callback's cost, not
# the run's storage
PNG_COMPRESS_LEVEL = 1
# zlib strategy: run-length matches only. On the demo's grid 480 KB in 28 ms against 507 KB in
# 33 ms with the default strategy; smaller and faster on every picture tried (a mean map, a grid
# of smooth 224-px images: 2.58 MB against 2.98 MB), and TensorBoard checksums every byte
PNG_STRATEGY = zlib.Z_RLE
_FG = (235, 235, 235)
_RED = (255, 70, 70)
_GREEN = (120, 220, 120)


@dataclass
class Picture:
    """One picture to log under ``tag``: ``image`` is a ``uint8 [3, H, W]`` tensor.

    Loggers that caption every image (W&B) show ``parts`` (e.g. one picture per probe row)
    with their ``captions`` instead when given.
    """

    tag: str
    image: torch.Tensor
    parts: Sequence[torch.Tensor] | None = None
    captions: Sequence[str] | None = None


# --------------------------------------------------------------------------- normalisation
def _shown_channels(c: int, channels: Sequence[int] | None) -> tuple[int, ...]:
    if channels is None:
        return (0, 1, 2) if c >= 3 else (0,)
    shown = tuple(int(i) for i in channels)
    if len(shown) not in (1, 3) or not all(0 <= i < c for i in shown):
        raise ValueError(
            f"channels must be 1 (grey) or 3 (red, green, blue) indices into the images'"
            f" {c} channels, got {tuple(channels)}"
        )
    return shown


def denormalize(
    images: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: Sequence[int] | None = None,
) -> torch.Tensor:
    """Undo ``(x - mean) / std``: float ``[B, 3, H, W]`` in [0, 1] on the images' device.

    ``mean``/``std`` have one value per image channel (or one for all); they default to
    ImageNet's, fitted to the channel count (one channel: the mean of the three values, see
    :func:`~lightning_vitrcam.normalization.fit_channels`). ``channels`` picks what is shown:
    one index (grey) or three (red, green, blue); by default one-channel (and two-channel)
    images show their first channel in grey and images with three or more channels their
    first three.

    Example:
        >>> x = torch.zeros(1, 3, 2, 2)
        >>> denormalize(x, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))[0, :, 0, 0].tolist()
        [0.5, 0.5, 0.5]
        >>> grey = denormalize(torch.zeros(1, 1, 2, 2), (0.25,), (0.5,))
        >>> tuple(grey.shape), grey[0, :, 0, 0].tolist()
        ((1, 3, 2, 2), [0.25, 0.25, 0.25])
        >>> denormalize(torch.zeros(1, 4, 2, 2), [0.0, 0.25, 0.5, 0.75], [1.0] * 4,
        ...             channels=[3, 2, 1])[0, :, 0, 0].tolist()
        [0.75, 0.5, 0.25]
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {getattr(images, 'shape', None)}")
    c = images.shape[1]
    shown = _shown_channels(c, channels)
    mean = fit_channels(IMAGENET_MEAN, c) if mean is None else mean
    std = fit_channels(IMAGENET_STD, c) if std is None else std
    mean_t, std_t = check_mean_std(mean, std)
    if len(mean_t) == 1:
        mean_t, std_t = mean_t * c, std_t * c
    if len(mean_t) != c:
        raise ValueError(f"images have {c} channels but mean/std have {len(mean_t)} values")
    idx = list(shown)
    x = images[:, idx].float()
    m = torch.tensor([mean_t[i] for i in idx], device=x.device).view(1, -1, 1, 1)
    s = torch.tensor([std_t[i] for i in idx], device=x.device).view(1, -1, 1, 1)
    x = (x * s + m).clamp(0.0, 1.0)
    return x.expand(-1, 3, -1, -1) if len(idx) == 1 else x


# --------------------------------------------------------------------------- colour
@lru_cache(maxsize=32)
def _lut_cpu(name: str) -> torch.Tensor:
    import matplotlib
    import numpy as np

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r}; any matplotlib colormap name works, e.g. 'inferno',"
            " 'viridis', 'jet', 'magma' (list them with: import matplotlib;"
            " print(sorted(matplotlib.colormaps)))"
        ) from None
    rgba = cmap(np.linspace(0.0, 1.0, 256))
    return torch.from_numpy(np.ascontiguousarray(rgba[:, :3])).float()


def _lut(cmap: Any, device: torch.device) -> torch.Tensor:
    """``[256, 3]`` float colour table in [0, 1] for a colormap name (or Colormap object)."""
    if isinstance(cmap, str):
        return _lut_cpu(cmap).to(device)
    if callable(cmap):  # a matplotlib Colormap instance
        import numpy as np

        rgba = cmap(np.linspace(0.0, 1.0, 256))
        return torch.as_tensor(np.asarray(rgba)[:, :3], dtype=torch.float32, device=device)
    raise ValueError(f"cmap must be a matplotlib colormap name, got {cmap!r}")


def colorize(
    maps: torch.Tensor,
    size: tuple[int, int] | None = None,
    cmap: Any = "inferno",
    mode: str = "bilinear",
) -> torch.Tensor:
    """Colour ``[B, h, w]`` maps in [0, 1] (clipped) with a colormap: float ``[B, 3, H, W]``.

    ``size`` upsamples first (``mode`` ``"bilinear"``, ``align_corners=False``, or
    ``"nearest"``). The 256-entry table is indexed on the maps' device.

    Example:
        >>> colorize(torch.tensor([[[0.0, 1.0]]]), cmap="gray")[0, :, 0].tolist()
        [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    """
    maps = as_maps(maps, allow_single=True).float()
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        maps = F.interpolate(maps[:, None], size=tuple(size), mode=mode, **kwargs)[:, 0]
    lut = _lut(cmap, maps.device)
    idx = (maps.nan_to_num(0.0).clamp(0.0, 1.0) * 255.0).round().long()
    return lut[idx].permute(0, 3, 1, 2)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pictures in [0, 1] to uint8 [0, 255] (rounded, clamped), on the same device."""
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def overlay(
    images: torch.Tensor,
    maps: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cmap: Any = "inferno",
    alpha: float = 0.5,
    channels: Sequence[int] | None = None,
) -> torch.Tensor:
    """Blend coloured maps onto the images: ``uint8 [B, 3, H, W]`` on the images' device.

    The images are de-normalised with ``mean``/``std`` (ImageNet's by default) and shown as
    :func:`denormalize` says (``channels``: one index for grey, three for colour; one-channel
    images are grey), each map is upsampled bilinearly to the image size and coloured with
    ``cmap`` (any matplotlib name), then ``(1 - alpha) * image + alpha * colour``.

    Example:
        >>> out = overlay(torch.zeros(1, 3, 8, 8), torch.ones(1, 2, 2), cmap="gray", alpha=1.0)
        >>> int(out.min()), int(out.max())
        (255, 255)
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = denormalize(images, mean, std, channels)
    maps = as_maps(maps, allow_single=True).to(base.device)
    if maps.shape[0] != base.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {base.shape[0]} images")
    heat = colorize(maps, tuple(base.shape[-2:]), cmap)
    return to_uint8((1.0 - alpha) * base + alpha * heat)


# --------------------------------------------------------------------------- text
@lru_cache(maxsize=16)
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed bitmap font
        return ImageFont.load_default()


def _font_size(tile: int) -> int:
    # about an eighth of a tile, bounded so that 96 px tiles and 512 px tiles both read well
    return int(min(22, max(11, round(tile / 8))))


def _text_width(font: Any, text: str) -> float:
    if hasattr(font, "getlength"):
        return float(font.getlength(text))
    box = font.getbbox(text)
    return float(box[2] - box[0])


def _line_height(font: Any) -> int:
    box = font.getbbox("Ag|")
    return int(box[3] - min(box[1], 0)) + 3


def _fit(font: Any, text: str, width: float) -> str:
    """``text`` cut with ``..`` so that it fits ``width`` pixels."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "..") > width:
        text = text[:-1]
    return text + ".."


def _font_fitting(text: str, width: int, start: int) -> Any:
    """The largest default font from ``start`` down to 10 px that fits ``text`` in ``width``."""
    for size in range(start, 9, -1):
        font = _font(size)
        if _text_width(font, text) <= width - 8:
            return font
    return _font(10)


def _draw_cross(
    draw: ImageDraw.ImageDraw, x: int, y: int, size: int, color: tuple[int, int, int]
) -> None:
    # drawn as lines: the default font has no glyph for "✗"
    w = max(2, size // 5)
    draw.line([(x, y), (x + size, y + size)], fill=color, width=w)
    draw.line([(x, y + size), (x + size, y)], fill=color, width=w)


def _strip(
    lines: Sequence[tuple[str, tuple[int, int, int]]],
    width: int,
    font: Any,
    cross: bool = False,
    align: str = "left",
) -> torch.Tensor:
    """A caption strip ``uint8 [3, h, width]``: one coloured line of text per entry."""
    lh = _line_height(font)
    height = lh * len(lines) + 4
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    mark = lh - 4 if cross else 0
    room = width - 8 - (mark + 6 if cross else 0)
    for i, (text, color) in enumerate(lines):
        text = _fit(font, text, room)
        x = 4 if align == "left" else max(4, int((width - _text_width(font, text)) / 2))
        draw.text((x, 2 + i * lh), text, font=font, fill=color)
    if cross:
        _draw_cross(draw, width - mark - 5, 4, mark, _RED)
        # a red bar on the left makes a mismatching row visible even in a thumbnail
        draw.rectangle([(0, 0), (2, height - 1)], fill=_RED)
    return _pil_to_tensor(img)


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    import numpy as np

    arr = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _upscale(tiles: torch.Tensor, min_size: int = MIN_TILE) -> torch.Tensor:
    """Nearest upscaling by an integer factor until the smaller side is at least ``min_size``."""
    side = min(tiles.shape[-2:])
    factor = max(1, math.ceil(min_size / max(1, side)))
    if factor == 1:
        return tiles
    return tiles.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


# --------------------------------------------------------------------------- captions
def _name(index: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if class_names is not None:
        try:
            return str(class_names[index])
        except (IndexError, KeyError):
            pass
    return str(index)


def _as_list(values: Any, n: int, what: str) -> list[Any]:
    if isinstance(values, torch.Tensor):
        values = values.detach().reshape(-1).cpu().tolist()
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} images")
    return values


def _caption_parts(
    preds: Any, probs: Any, labels: Any, class_names: Any, notes: Any = None
) -> list[tuple[str, str | None, bool]]:
    p = (
        preds.detach().reshape(-1).cpu().tolist()
        if isinstance(preds, torch.Tensor)
        else list(preds)
    )
    n = len(p)
    q = _as_list(probs, n, "probs")
    y = _as_list(labels, n, "labels") if labels is not None else [None] * n
    extra = _as_list(notes, n, "notes") if notes is not None else [None] * n
    rows = []
    for pi, qi, yi, note in zip(p, q, y, extra, strict=True):
        pred = f"pred: {_name(int(pi), class_names)} ({float(qi):.2f})"
        pred = f"{pred}, {note}" if note else pred
        true = None if yi is None else f"true: {_name(int(yi), class_names)}"
        rows.append((pred, true, yi is not None and int(yi) != int(pi)))
    return rows


def row_captions(
    preds: Any,
    probs: Any,
    labels: Any = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    notes: Sequence[str | None] | None = None,
) -> list[str]:
    """One caption per image, e.g. ``"pred: cat (0.93) | true: dog ✗ MISMATCH"``; ``notes``
    (one per image, or None) follow the prediction, e.g. ``"pred: cat (0.93), flat map"``.

    Example:
        >>> row_captions(torch.tensor([1, 0]), torch.tensor([0.9, 0.5]), torch.tensor([1, 1]),
        ...              ["cat", "dog"])
        ['pred: dog (0.90) | true: dog', 'pred: cat (0.50) | true: dog ✗ MISMATCH']
    """
    out = []
    for pred, true, wrong in _caption_parts(preds, probs, labels, class_names, notes):
        text = pred if true is None else f"{pred} | {true}"
        out.append(text + (" ✗ MISMATCH" if wrong else ""))
    return out


# --------------------------------------------------------------------------- pictures
def _columns(
    images: torch.Tensor,
    maps: torch.Tensor,
    true_maps: torch.Tensor | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    cmap: Any,
    alpha: float,
    channels: Sequence[int] | None = None,
) -> tuple[list[torch.Tensor], list[str]]:
    """The grid's columns (``uint8 [B, 3, H, W]`` each, on the images' device) and titles."""
    columns = [
        to_uint8(denormalize(images, mean, std, channels)),
        overlay(images, maps, mean, std, cmap=cmap, alpha=alpha, channels=channels),
    ]
    titles = ["input", "predicted class"]
    if true_maps is not None:
        columns.append(
            overlay(images, true_maps, mean, std, cmap=cmap, alpha=alpha, channels=channels)
        )
        titles.append("true class")
    return columns, titles


def _grid(
    columns: Sequence[torch.Tensor],
    titles: Sequence[str],
    parts: Sequence[tuple[str, str | None, bool]],
    captions: bool,
) -> torch.Tensor:
    n, ncol = columns[0].shape[0], len(columns)
    tiles = _upscale(torch.stack([c.cpu() for c in columns], dim=1).flatten(0, 1))
    th, tw = tiles.shape[-2:]
    if not captions:
        return make_grid(tiles, nrow=ncol, padding=_PAD, pad_value=0)
    font = _font(_font_size(min(th, tw)))
    row_width = ncol * (tw + _PAD) + _PAD

    header = torch.cat([_strip([(t, _FG)], tw + _PAD, font, align="center") for t in titles], dim=2)
    header = F.pad(header, (0, row_width - header.shape[2]), value=_BG[0])
    rows = [header]
    tiles = tiles.view(n, ncol, 3, th, tw)
    for i, (pred, true, wrong) in enumerate(parts):
        row = make_grid(tiles[i], nrow=ncol, padding=_PAD, pad_value=0)
        lines = [(pred, _RED if wrong else _FG)]
        if true is not None:
            lines.append((f"{true}  MISMATCH" if wrong else true, _RED if wrong else _GREEN))
        rows.append(row)
        rows.append(_strip(lines, row_width, font, cross=wrong))
    return torch.cat(rows, dim=1)


def _checked_parts(
    images: torch.Tensor,
    preds: Any,
    probs: Any,
    labels: Any,
    true_maps: Any,
    class_names: Any,
    notes: Any = None,
) -> list[tuple[str, str | None, bool]]:
    if true_maps is not None and labels is None:
        raise ValueError("true_maps needs labels (the class each true-class map explains)")
    parts = _caption_parts(preds, probs, labels, class_names, notes)
    if len(parts) != images.shape[0]:
        raise ValueError(f"preds has {len(parts)} entries for {images.shape[0]} images")
    return parts


def saliency_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    preds: Any,
    probs: Any,
    labels: Any = None,
    true_maps: torch.Tensor | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cmap: Any = "inferno",
    alpha: float = 0.5,
    captions: bool = True,
    channels: Sequence[int] | None = None,
) -> torch.Tensor:
    """One captioned picture ``uint8 [3, H, W]`` (CPU) of a batch's explanations.

    Rows are images; columns are the input, the overlay of ``maps`` (predicted class) and,
    when ``true_maps`` is given, the overlay for the true class. A header names the columns;
    a strip under each row says the predicted class and its probability and, with ``labels``,
    the true class; a wrong prediction is written in red with ``MISMATCH``, a drawn cross and
    a red bar. Tiles under 96 px are upscaled (nearest) so small images stay readable.
    ``captions=False`` leaves out the header and the strips (the bare tile grid). ``channels``
    picks the image channels shown (see :func:`denormalize`).

    Example:
        >>> g = saliency_grid(torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4),
        ...                   preds=[0, 1], probs=[0.9, 0.6], labels=[0, 0],
        ...                   true_maps=torch.rand(2, 4, 4), class_names=["cat", "dog"])
        >>> g.dtype, g.shape[0], g.shape[2] > 3 * 96
        (torch.uint8, 3, True)
    """
    parts = _checked_parts(images, preds, probs, labels, true_maps, class_names)
    columns, titles = _columns(images, maps, true_maps, mean, std, cmap, alpha, channels)
    return _grid(columns, titles, parts, captions)


def saliency_picture(
    tag: str,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    preds: Any,
    probs: Any,
    labels: Any = None,
    true_maps: torch.Tensor | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cmap: Any = "inferno",
    alpha: float = 0.5,
    channels: Sequence[int] | None = None,
    notes: Sequence[str | None] | None = None,
) -> Picture:
    """The captioned :func:`saliency_grid` as a :class:`Picture`, with one uncaptioned picture
    per row (input | overlays, at the images' size) and its :func:`row_captions` as ``parts``
    for loggers that caption each image. The overlays are drawn once for both. ``notes`` (one
    per image or None, e.g. ``"flat map"``) follow each row's prediction.

    Example:
        >>> pic = saliency_picture("vitrcam/grid", torch.randn(2, 3, 8, 8), torch.rand(2, 2, 2),
        ...                        preds=[0, 1], probs=[0.9, 0.6], notes=[None, "flat map"])
        >>> len(pic.parts), tuple(pic.parts[0].shape), pic.captions[1]
        (2, (3, 8, 16), 'pred: 1 (0.60), flat map')
    """
    parts = _checked_parts(images, preds, probs, labels, true_maps, class_names, notes)
    columns, titles = _columns(images, maps, true_maps, mean, std, cmap, alpha, channels)
    return Picture(
        tag,
        _grid(columns, titles, parts, captions=True),
        parts=list(torch.cat(columns, dim=-1).cpu()),
        captions=row_captions(preds, probs, labels, class_names, notes),
    )


def heatmap(
    mean_map: torch.Tensor,
    size: int = 256,
    cmap: Any = "inferno",
    title: str | None = None,
) -> torch.Tensor:
    """Picture ``uint8 [3, H, W]`` (CPU) of an ``[h, w]`` map, e.g. the mean saliency map.

    The map is min-max scaled for colour (a constant map takes the colormap's lowest colour)
    and upsampled with nearest by an integer factor so the token cells stay visible; the
    longer side is about ``size`` pixels. ``title`` adds a text strip on top.

    Example:
        >>> tuple(heatmap(torch.rand(4, 4), size=64).shape)
        (3, 64, 64)
        >>> heatmap(torch.rand(4, 4), size=64, title="mean").shape[1] > 64
        True
    """
    m = mean_map.detach().float()
    if m.dim() == 3 and m.shape[0] == 1:
        m = m[0]
    if m.dim() != 2:
        raise ValueError(f"mean_map must be [h, w], got {tuple(mean_map.shape)}")
    m = minmax(m.nan_to_num(0.0), dim=(0, 1))
    h, w = m.shape
    factor = max(1, round(size / max(h, w)))
    pic = to_uint8(colorize(m[None], (h * factor, w * factor), cmap, mode="nearest")[0]).cpu()
    if title:
        font = _font_fitting(title, pic.shape[-1], _font_size(min(pic.shape[-2:])))
        pic = torch.cat([_strip([(title, _FG)], pic.shape[-1], font), pic], dim=1)
    return pic


def evenly_spaced(n: int, k: int) -> list[int]:
    """At most ``k`` evenly spaced indices into ``n`` items, the first and the last included
    (with ``k=1`` only the last).

    Example:
        >>> evenly_spaced(20, 4), evenly_spaced(3, 8), evenly_spaced(5, 1)
        ([0, 6, 13, 19], [0, 1, 2], [4])
    """
    if k < 1:
        raise ValueError(f"max_columns must be >= 1, got {k}")
    if k == 1:
        return [n - 1]
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def timeline(
    frames: Sequence[torch.Tensor], labels: Sequence[str], max_columns: int = 8
) -> torch.Tensor:
    """One probe image's overlays across evaluations, in a row: ``uint8 [3, H, W]`` (CPU).

    At most ``max_columns`` evenly spaced frames are kept, always the first and the last (with
    ``max_columns=1`` only the last). Each gets its label (e.g. ``"ep 3"``) above it. Frames
    must share one size; tiles under 96 px are upscaled (nearest).

    Example:
        >>> frames = [torch.full((3, 8, 8), 10 * i, dtype=torch.uint8) for i in range(20)]
        >>> timeline(frames, [f"ep {i}" for i in range(20)], max_columns=4).shape[-1]
        394
    """
    if len(frames) == 0:
        raise ValueError("timeline needs at least one frame")
    if len(labels) != len(frames):
        raise ValueError(f"{len(labels)} labels for {len(frames)} frames")
    keep = evenly_spaced(len(frames), max_columns)
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames must share one shape, got {sorted(shapes)}")
    picked = []
    for i in keep:
        f = frames[i].detach().cpu()
        if f.dim() != 3 or f.shape[0] != 3:
            raise ValueError(f"frames must be [3, h, w] uint8, got {tuple(f.shape)}")
        picked.append(f if f.dtype == torch.uint8 else to_uint8(f.float()))
    tiles = _upscale(torch.stack(picked))
    th, tw = tiles.shape[-2:]
    font = _font(_font_size(min(th, tw)))
    cells = []
    for i, tile in zip(keep, tiles, strict=True):
        label = _strip([(str(labels[i]), _FG)], tw, font, align="center")
        cells.append(torch.cat([label, tile], dim=1))
    return make_grid(torch.stack(cells), nrow=len(cells), padding=_PAD, pad_value=0)


def probe_timelines(
    images: torch.Tensor,
    frames: Sequence[torch.Tensor],
    labels: Sequence[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cmap: Any = "inferno",
    max_columns: int = 8,
    channels: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """One :func:`timeline` per image: its overlays with the maps of each frame.

    ``frames`` holds one ``[N, h, w]`` batch of maps per evaluation (labelled by ``labels``)
    for the same ``N`` images. The overlays of all frames are drawn in one batch.

    Example:
        >>> rows = probe_timelines(torch.randn(2, 3, 8, 8), [torch.rand(2, 2, 2)] * 3,
        ...                        ["ep 0", "ep 1", "ep 2"])
        >>> len(rows), rows[0].dtype
        (2, torch.uint8)
    """
    images = images.float()
    maps = torch.cat(list(frames)).to(images.device, torch.float32)
    drawn = overlay(
        images.repeat(len(frames), 1, 1, 1), maps, mean, std, cmap=cmap, channels=channels
    )
    # [F*N, 3, H, W] -> [N, F, 3, H, W]: one row of frames per image
    drawn = drawn.view(len(frames), -1, *drawn.shape[1:]).transpose(0, 1).cpu()
    return [timeline(list(row), labels, max_columns) for row in drawn]


# --------------------------------------------------------------------------- files
def _to_pil(image: torch.Tensor) -> Image.Image:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype} (see overlay/saliency_grid)")
    img = image.detach().cpu()
    if img.dim() == 2:
        return Image.fromarray(img.numpy(), mode="L")
    if img.dim() != 3 or img.shape[0] not in (1, 3, 4):
        raise ValueError(f"image must be [C, H, W] with C in (1, 3, 4), got {tuple(img.shape)}")
    if img.shape[0] == 1:
        return Image.fromarray(img[0].numpy())
    return Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())


def to_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a ``uint8 [3, H, W]`` (or ``[1|4, H, W]``, ``[H, W]``) image.

    Example:
        >>> to_png(torch.zeros(3, 4, 4, dtype=torch.uint8))[:4]
        b'\\x89PNG'
    """
    buf = io.BytesIO()
    _to_pil(image).save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_STRATEGY
    )
    return buf.getvalue()


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a ``uint8 [3, H, W]`` image as PNG (parent folders are created); returns the path.

    Example:
        >>> import tempfile, os
        >>> p = save_png(torch.zeros(3, 4, 4, dtype=torch.uint8),
        ...              os.path.join(tempfile.mkdtemp(), "a", "x.png"))
        >>> p.exists()
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_png(image))
    return path
