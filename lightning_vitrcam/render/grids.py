"""Pictures of explanations: captioned grids, heatmaps and timelines, as uint8 CPU tensors.

Example:
    >>> import torch
    >>> grid = saliency_grid(torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4),
    ...                      preds=torch.tensor([0, 1]), probs=torch.tensor([0.9, 0.4]),
    ...                      labels=torch.tensor([0, 2]))
    >>> grid.dtype, grid.shape[0]
    (torch.uint8, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from lightning_vitrcam._ops import minmax
from lightning_vitrcam.render.captions import caption_parts, row_captions
from lightning_vitrcam.render.colour import colorize, denormalize, overlay, to_uint8
from lightning_vitrcam.render.style import Style
from lightning_vitrcam.render.text import (
    BG,
    FG,
    GREEN,
    PAD,
    RED,
    font_fitting,
    font_size,
    load_font,
    strip,
    upscale,
)

__all__ = [
    "Picture",
    "evaluation_pictures",
    "evenly_spaced",
    "heatmap",
    "probe_timelines",
    "saliency_grid",
    "saliency_picture",
    "timeline",
]


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


def _columns(
    images: torch.Tensor,
    maps: torch.Tensor,
    true_maps: torch.Tensor | None,
    style: Style,
    extra_maps: Sequence[torch.Tensor] = (),
    map_titles: Sequence[str] | None = None,
) -> tuple[list[torch.Tensor], list[str]]:
    """The grid's columns (``uint8 [B, 3, H, W]`` each, on the images' device) and titles."""
    all_maps = [maps, *extra_maps]
    titles = list(
        map_titles or ["predicted class"] + [f"label {i + 2}" for i in range(len(extra_maps))]
    )
    if len(titles) != len(all_maps):
        raise ValueError(f"{len(titles)} map titles for {len(all_maps)} overlays")
    columns = [to_uint8(denormalize(images, style))]
    columns += [overlay(images, m, style) for m in all_maps]
    titles = ["input", *titles]
    if true_maps is not None:
        columns.append(overlay(images, true_maps, style))
        titles.append("true class")
    return columns, titles


def _grid(
    columns: Sequence[torch.Tensor],
    titles: Sequence[str],
    parts: Sequence[tuple[str, str | None, bool]],
    captions: bool,
) -> torch.Tensor:
    n, ncol = columns[0].shape[0], len(columns)
    tiles = upscale(torch.stack([c.cpu() for c in columns], dim=1).flatten(0, 1))
    th, tw = tiles.shape[-2:]
    if not captions:
        return make_grid(tiles, nrow=ncol, padding=PAD, pad_value=0)
    font = load_font(font_size(min(th, tw)))
    row_width = ncol * (tw + PAD) + PAD

    header = torch.cat([strip([(t, FG)], tw + PAD, font, align="center") for t in titles], dim=2)
    header = F.pad(header, (0, row_width - header.shape[2]), value=BG[0])
    rows = [header]
    tiles = tiles.view(n, ncol, 3, th, tw)
    for i, (pred, true, wrong) in enumerate(parts):
        row = make_grid(tiles[i], nrow=ncol, padding=PAD, pad_value=0)
        lines = [(pred, RED if wrong else FG)]
        if true is not None:
            lines.append((f"{true}  MISMATCH" if wrong else true, RED if wrong else GREEN))
        rows.append(row)
        rows.append(strip(lines, row_width, font, cross=wrong))
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
    parts = caption_parts(preds, probs, labels, class_names, notes)
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
    style: Style = Style(),
    captions: bool = True,
    extra_maps: Sequence[torch.Tensor] = (),
    map_titles: Sequence[str] | None = None,
) -> torch.Tensor:
    """One captioned picture ``uint8 [3, H, W]`` (CPU) of a batch's explanations.

    Rows are images; columns are the input, the overlay of ``maps`` (predicted class) and,
    when ``true_maps`` is given, the overlay for the true class. A header names the columns;
    a strip under each row says the predicted class and its probability and, with ``labels``,
    the true class; a wrong prediction is written in red with ``MISMATCH``, a drawn cross and
    a red bar. Tiles under 96 px are upscaled (nearest) so small images stay readable.
    ``captions=False`` leaves out the header and the strips (the bare tile grid); ``style``
    says how images and maps are shown (:class:`~lightning_vitrcam.render.style.Style`).
    ``extra_maps`` add overlay columns after the first (e.g. a multi-label model's next
    labels; ``preds``/``probs`` are then ``[N, k]``), titled by ``map_titles``.

    Example:
        >>> g = saliency_grid(torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4),
        ...                   preds=[0, 1], probs=[0.9, 0.6], labels=[0, 0],
        ...                   true_maps=torch.rand(2, 4, 4), class_names=["cat", "dog"])
        >>> g.dtype, g.shape[0], g.shape[2] > 3 * 96
        (torch.uint8, 3, True)
    """
    parts = _checked_parts(images, preds, probs, labels, true_maps, class_names)
    columns, titles = _columns(images, maps, true_maps, style, extra_maps, map_titles)
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
    style: Style = Style(),
    notes: Sequence[str | None] | None = None,
    extra_maps: Sequence[torch.Tensor] = (),
    map_titles: Sequence[str] | None = None,
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
    columns, titles = _columns(images, maps, true_maps, style, extra_maps, map_titles)
    return Picture(
        tag,
        _grid(columns, titles, parts, captions=True),
        parts=list(torch.cat(columns, dim=-1).cpu()),
        captions=row_captions(preds, probs, labels, class_names, notes),
    )


def heatmap(
    mean_map: torch.Tensor,
    size: int = 256,
    style: Style = Style(),
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
    pic = to_uint8(colorize(m[None], (h * factor, w * factor), style.cmap, mode="nearest")[0]).cpu()
    if title:
        font = font_fitting(title, pic.shape[-1], font_size(min(pic.shape[-2:])))
        pic = torch.cat([strip([(title, FG)], pic.shape[-1], font), pic], dim=1)
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
    tiles = upscale(torch.stack(picked))
    th, tw = tiles.shape[-2:]
    font = load_font(font_size(min(th, tw)))
    cells = []
    for i, tile in zip(keep, tiles, strict=True):
        label = strip([(str(labels[i]), FG)], tw, font, align="center")
        cells.append(torch.cat([label, tile], dim=1))
    return make_grid(torch.stack(cells), nrow=len(cells), padding=PAD, pad_value=0)


def probe_timelines(
    images: torch.Tensor,
    frames: Sequence[torch.Tensor],
    labels: Sequence[str],
    style: Style = Style(),
    max_columns: int = 8,
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
    drawn = overlay(images.repeat(len(frames), 1, 1, 1), maps, style)
    # [F*N, 3, H, W] -> [N, F, 3, H, W]: one row of frames per image
    drawn = drawn.view(len(frames), -1, *drawn.shape[1:]).transpose(0, 1).cpu()
    return [timeline(list(row), labels, max_columns) for row in drawn]


def evaluation_pictures(
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    preds: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor | None,
    true_maps: torch.Tensor | None,
    flat: torch.Tensor,
    mean_map: torch.Tensor,
    hotspot_ratio: float | None,
    class_names: Sequence[str] | None = None,
    style: Style = Style(),
    extra_maps: Sequence[torch.Tensor] = (),
) -> list[Picture]:
    """An evaluation's ``vitrcam/saliency_grid`` (flat maps marked) and
    ``vitrcam/mean_saliency``.

    Example:
        >>> pics = evaluation_pictures(torch.randn(2, 3, 8, 8), torch.rand(2, 2, 2),
        ...     preds=torch.tensor([0, 1]), probs=torch.tensor([0.9, 0.6]), labels=None,
        ...     true_maps=None, flat=torch.tensor([False, True]), mean_map=torch.rand(2, 2),
        ...     hotspot_ratio=1.5)
        >>> [p.tag for p in pics], pics[0].captions[1]
        (['vitrcam/saliency_grid', 'vitrcam/mean_saliency'], 'pred: 1 (0.60), flat map')
    """
    grid = saliency_picture(
        "vitrcam/saliency_grid",
        images,
        maps,
        preds=preds,
        probs=probs,
        labels=labels,
        true_maps=true_maps,
        class_names=class_names,
        style=style,
        notes=["flat map" if f else None for f in flat.tolist()],
        extra_maps=extra_maps,
        map_titles=[f"label {i + 1}" for i in range(len(extra_maps) + 1)] if extra_maps else None,
    )
    title = (
        "mean saliency: all maps flat"
        if hotspot_ratio is None
        else f"mean saliency, hotspot x{hotspot_ratio:.1f}"
    )
    return [grid, Picture("vitrcam/mean_saliency", heatmap(mean_map, style=style, title=title))]
