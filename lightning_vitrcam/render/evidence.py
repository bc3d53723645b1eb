"""The evidence picture: what the alarm did to the probes a finding rests on, and what the
model then predicted (``vitrcam/shortcut_evidence``).

One row per probe of the finding's examples; each kind of evidence has its own columns:

* ``region``: the probe with its decisive region outlined; the region occluded (the
  predicted-class probability before -> after); the region pasted into a probe of another
  class (its own decisive place occluded first) and what that predicts; the two control
  pastes of the same size (from elsewhere in the probe; another class's decisive region)
  and what they predict;
* ``mark``: the probe with its mark (a region of any shape) outlined; the mark pasted into
  a probe of another class (which keeps its own salient tokens) and what that predicts; the
  same shape from elsewhere in the probe, and another class's pixels in the mark's shape,
  pasted the same way, and what they predict;
* ``place``: the probe with the place outlined; the place occluded (before -> after); the
  place kept alone;
* ``colour``: the probe; the probe whose colours it gets; the probe in those colours and what
  it predicts; the same-size random colour change and what that predicts;
* ``background``: the probe; the probe whose background it gets; the object on that
  background and what it predicts; the object on a background of its own class.

The numbers are the alarm's own (:class:`~lightning_vitrcam.shortcut.report.Example`); the
images are rebuilt with the same interventions.

Example:
    >>> import torch
    >>> from lightning_vitrcam.shortcut.report import Example, Suspect
    >>> s = Suspect(box=(0, 1, 0, 1), grid=(4, 4), group=None, probes=4, hits=4,
    ...             mean_drop=0.9, examples=(Example(probe=1, target=0, before=0.9,
    ...             box=(0, 1, 0, 1), after=0.05),))
    >>> pic = evidence_picture(s, torch.zeros(4, 3, 32, 32))
    >>> pic.tag, pic.captions
    ('vitrcam/shortcut_evidence', ["probe 1 '0' 0.90 | occluded 0.90 -> 0.05"])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from lightning_vitrcam.render.captions import class_name
from lightning_vitrcam.render.colour import denormalize, to_uint8
from lightning_vitrcam.render.grids import Picture
from lightning_vitrcam.render.style import Style
from lightning_vitrcam.render.text import BG, PAD, RED, font_fitting, load_font, strip, upscale
from lightning_vitrcam.shortcut.interventions import (
    colour_shift,
    colour_swap,
    keep_boxes,
    move_object,
    occlude_boxes,
    paste_regions,
    region_pixels,
    transplant,
)
from lightning_vitrcam.shortcut.report import Example, Finding

__all__ = ["LAYOUTS", "Tile", "evidence_picture", "outline", "outline_region"]

#: a tile of a row: the picture (float [3, H, W] in [0, 1]) and its caption lines
Tile = tuple[torch.Tensor, list[str]]
Layout = Callable[..., list[Tile]]
_GREY = (170, 170, 170)


def outline(
    image: torch.Tensor, box: Sequence[int], grid: tuple[int, int], colour: tuple = RED
) -> torch.Tensor:
    """``image`` (float ``[3, H, W]`` in [0, 1]) with a one-pixel frame around the token box.

    Example:
        >>> framed = outline(torch.zeros(3, 8, 8), (0, 1, 0, 1), (2, 2))
        >>> framed[0, 0, :5].tolist(), float(framed[0, 2, 2])
        ([1.0, 1.0, 1.0, 1.0, 0.0], 0.0)
    """
    out = image.clone()
    H, W = image.shape[-2:]
    h, w = grid
    r0, r1 = box[0] * H // h, max(box[0] * H // h + 1, box[1] * H // h)
    c0, c1 = box[2] * W // w, max(box[2] * W // w + 1, box[3] * W // w)
    rgb = torch.tensor(colour, dtype=out.dtype, device=out.device).view(3, 1) / 255.0
    out[:, r0, c0:c1] = rgb
    out[:, r1 - 1, c0:c1] = rgb
    out[:, r0:r1, c0] = rgb
    out[:, r0:r1, c1 - 1] = rgb
    return out


def _mask(
    region: Sequence[int] | None, grid: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """``[1, h, w]`` bool: a region given as flat token indices."""
    mask = torch.zeros(grid[0] * grid[1], dtype=torch.bool, device=device)
    if region:
        mask[torch.tensor(list(region), device=device)] = True
    return mask.view(1, *grid)


def outline_region(
    image: torch.Tensor, region: Sequence[int], grid: tuple[int, int], colour: tuple = RED
) -> torch.Tensor:
    """``image`` (float ``[3, H, W]``) with a one-pixel line along the edge of the token
    region ``region`` (flat token indices) of any shape.

    Example:
        >>> framed = outline_region(torch.zeros(3, 8, 8), [0, 1], (2, 2))
        >>> framed[0, 0].tolist(), framed[0, 3].tolist()
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    """
    pixels = region_pixels(_mask(region, grid, image.device), tuple(image.shape[-2:]))[0]
    # eroded by one pixel, the image's own edge counting as outside
    padded = F.pad(pixels[None, None].float(), (1, 1, 1, 1))
    inner = -F.max_pool2d(-padded, 3, stride=1)[0, 0] > 0
    edge = pixels & ~inner
    rgb = torch.tensor(colour, dtype=image.dtype, device=image.device).view(3, 1, 1) / 255.0
    return torch.where(edge[None], rgb, image)


def _name(c: int | None, names: Sequence[str] | None) -> str:
    return "?" if c is None else repr(class_name(int(c), names))


def _said(e: Example, names: Sequence[str] | None, p: float | None, to: int | None) -> list[str]:
    """What an intervention made the model say: the tested class's probability, and the
    prediction when it is another class."""
    said = [f"{_name(e.target, names)} {p:.2f}"]
    return said if to is None or to == e.target else [*said, f"predicts {_name(to, names)}"]


def _is(e: Example, names: Sequence[str] | None) -> list[str]:
    return [f"probe {e.probe}", f"{_name(e.target, names)} {e.before:.2f}"]


def _change(e: Example) -> str:
    return f"{e.before:.2f} -> {e.after:.2f}"


def _one(images: torch.Tensor, i: int) -> torch.Tensor:
    return torch.tensor([i], device=images.device)


def _box(box: Sequence[int] | None, device: torch.device) -> torch.Tensor:
    return torch.tensor([list(box or (0, 0, 0, 0))], device=device)


def _region(
    e: Example,
    images: torch.Tensor,
    grid: tuple[int, int],
    show: Callable,
    names: Sequence[str] | None,
) -> list[Tile]:
    dev = images.device
    probe, box = _one(images, e.probe), _box(e.box, dev)
    tiles = [
        (outline(show(images[probe])[0], e.box, grid), _is(e, names)),
        (show(occlude_boxes(images, probe, box, grid))[0], ["occluded", _change(e)]),
    ]
    if e.partner is not None:
        r, own = _one(images, e.partner), _box(e.partner_box, dev)
        pasted = transplant(images, r, own, probe, box, grid)
        control = transplant(images, r, own, probe, _box(e.control_box, dev), grid)
        moved = [f"pasted into {e.partner}", *_said(e, names, e.moved_p, e.moved_to)]
        tiles.append((outline(show(pasted)[0], e.box, grid), moved))
        control_said = ["control paste", *_said(e, names, e.control_p, e.control_to)]
        tiles.append((outline(show(control)[0], e.control_box, grid, _GREY), control_said))
    if e.partner is not None and e.other is not None and e.other >= 0:
        r, own = _one(images, e.partner), _box(e.partner_box, dev)
        other = transplant(images, r, own, _one(images, e.other), _box(e.other_box, dev), grid)
        said = [f"probe {e.other}'s part", *_said(e, names, e.other_p, e.other_to)]
        tiles.append((outline(show(other)[0], e.other_box, grid, _GREY), said))
    return tiles


def _mark(
    e: Example,
    images: torch.Tensor,
    grid: tuple[int, int],
    show: Callable,
    names: Sequence[str] | None,
) -> list[Tile]:
    dev = images.device
    d, r = _one(images, e.probe), _one(images, int(e.partner or 0))
    region, control = _mask(e.region, grid, dev), _mask(e.control_region, grid, dev)
    tiles = [(outline_region(show(images[d])[0], e.region or (), grid), _is(e, names))]
    pasted = paste_regions(images, r, d, region)
    moved = [f"pasted into {e.partner}", *_said(e, names, e.moved_p, e.moved_to)]
    tiles.append((outline_region(show(pasted)[0], e.region or (), grid), moved))
    elsewhere = paste_regions(images, r, d, control)
    said = ["same shape elsewhere", *_said(e, names, e.control_p, e.control_to)]
    tiles.append((outline_region(show(elsewhere)[0], e.control_region or (), grid, _GREY), said))
    if e.other is not None and e.other >= 0:
        other = paste_regions(images, r, _one(images, e.other), region)
        said = [f"probe {e.other}'s pixels", *_said(e, names, e.other_p, e.other_to)]
        tiles.append((outline_region(show(other)[0], e.region or (), grid, _GREY), said))
    return tiles


def _place(
    e: Example,
    images: torch.Tensor,
    grid: tuple[int, int],
    show: Callable,
    names: Sequence[str] | None,
) -> list[Tile]:
    probe, box = _one(images, e.probe), _box(e.box, images.device)
    tiles = [
        (outline(show(images[probe])[0], e.box, grid), _is(e, names)),
        (show(occlude_boxes(images, probe, box, grid))[0], ["occluded", _change(e)]),
    ]
    if e.kept is not None:
        alone = ["kept alone", f"{_name(e.target, names)} {e.kept:.2f}"]
        tiles.append((show(keep_boxes(images, probe, box, grid))[0], alone))
    return tiles


def _colour(
    e: Example,
    images: torch.Tensor,
    grid: tuple[int, int],
    show: Callable,
    names: Sequence[str] | None,
) -> list[Tile]:
    r, d = _one(images, e.probe), _one(images, int(e.partner or 0))
    moved, control = (
        _said(e, names, e.moved_p, e.moved_to),
        _said(e, names, e.control_p, e.control_to),
    )
    return [
        (show(images[r])[0], _is(e, names)),
        (show(images[d])[0], [f"colours of {e.partner}"]),
        (show(colour_swap(images, r, d))[0], ["in those colours", *moved]),
        (show(colour_shift(images, r, d))[0], ["random change", *control]),
    ]


def _background(
    e: Example,
    images: torch.Tensor,
    grid: tuple[int, int],
    show: Callable,
    names: Sequence[str] | None,
    masks: torch.Tensor | None = None,
) -> list[Tile]:
    assert masks is not None, "the background evidence needs the probes' masks"
    o, d = _one(images, e.probe), _one(images, int(e.partner or 0))
    c = _one(images, int(e.control_partner if e.control_partner is not None else e.probe))
    moved, control = (
        _said(e, names, e.moved_p, e.moved_to),
        _said(e, names, e.control_p, e.control_to),
    )
    return [
        (show(images[o])[0], _is(e, names)),
        (show(images[d])[0], [f"background of {e.partner}"]),
        (show(move_object(images, masks, o, d))[0], ["object moved there", *moved]),
        (show(move_object(images, masks, o, c))[0], ["own class's bg", *control]),
    ]


#: each kind of evidence's columns, by the kind's name
LAYOUTS: dict[str, Layout] = {
    "region": _region,
    "mark": _mark,
    "place": _place,
    "colour": _colour,
    "background": _background,
}


def _title(finding: Finding, names: Sequence[str] | None) -> str:
    group = (
        "all probes"
        if finding.group is None
        else f"probes predicted as {_name(finding.group, names)}"
    )
    return f"possible shortcut ({finding.kind} evidence, {group})"


def evidence_picture(
    finding: Finding,
    images: torch.Tensor,
    style: Style = Style(),
    class_names: Sequence[str] | None = None,
    masks: torch.Tensor | None = None,
    grid: tuple[int, int] | None = None,
) -> Picture:
    """The picture of ``finding`` (one row per example) on the probe ``images``: a captioned
    ``uint8 [3, H, W]`` image, and one part per row with its caption for loggers that caption
    images. ``grid`` defaults to the finding's."""
    layout = LAYOUTS.get(finding.kind)
    if layout is None:
        raise ValueError(f"no evidence picture for the kind {finding.kind!r} ({sorted(LAYOUTS)})")
    grid = grid or getattr(finding, "grid", None) or (1, 1)
    images = images.float()

    def show(x: torch.Tensor) -> torch.Tensor:
        return denormalize(x, style)

    extra: dict[str, Any] = {"masks": masks} if finding.kind == "background" else {}
    rows = [layout(e, images, grid, show, class_names, **extra) for e in finding.examples]
    if not rows:
        rows = [[(show(images[:1])[0] * 0, ["no example recorded"])]]
    width = max(len(r) for r in rows)
    lines_per_tile = max(len(lines) for row in rows for _, lines in row)
    tiles = upscale(to_uint8(torch.stack([t for row in rows for t, _ in row])).cpu(), 128)
    th, tw = tiles.shape[-2:]
    font = load_font(max(10, min(14, tw // 10)))
    blank = torch.full((3, th, tw), BG[0], dtype=torch.uint8)
    picture_rows, captions, k = [], [], 0
    for row in rows:
        cells = []
        for j in range(width):
            if j < len(row):
                tile, lines = tiles[k], list(row[j][1])
                k += 1
            else:
                tile, lines = blank, []
            lines += [""] * (lines_per_tile - len(lines))
            cells.append(torch.cat([tile, strip(lines, tw, font)], dim=1))
        picture_rows.append(make_grid(torch.stack(cells), nrow=width, padding=PAD, pad_value=0))
        captions.append(" | ".join(" ".join(lines) for _, lines in row))
    body = torch.cat(picture_rows, dim=1)
    title = _title(finding, class_names)
    header = strip([title], body.shape[-1], font_fitting(title, body.shape[-1], 16))
    image = torch.cat([header, body], dim=1)
    parts = [F.pad(r, (0, 0, 0, 0)) for r in picture_rows]
    return Picture("vitrcam/shortcut_evidence", image, parts, captions)
