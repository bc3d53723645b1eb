"""Places on the token grid: boxes, their names, and where the mean saliency peaks.

A place is a box of tokens ``(r0, r1, c0, c1)``: rows ``r0 <= r < r1`` and columns
``c0 <= c < c1`` of the ``h x w`` grid. A single token is a 1x1 box.

Example:
    >>> place_name((0, 1, 0, 1), (8, 8))
    'token row 0, column 0 (on the top-left corner)'
    >>> place_name((3, 5, 6, 8), (8, 8))
    'the tokens at rows 3-4, columns 6-7 (on the right border)'
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_vitrcam.metrics import mean_saliency_map

__all__ = [
    "Box",
    "border_name",
    "hotspot_location",
    "is_token",
    "on_border",
    "place_name",
]

#: a place on the token grid: rows ``r0 <= r < r1``, columns ``c0 <= c < c1``
Box = tuple[int, int, int, int]


def is_token(box: Sequence[int]) -> bool:
    """Whether ``box`` is a single token."""
    return box[1] - box[0] == 1 and box[3] - box[2] == 1


def on_border(box: Sequence[int], h: int, w: int) -> bool:
    """Whether ``box`` touches the border of the ``h x w`` grid."""
    return box[0] == 0 or box[2] == 0 or box[1] == h or box[3] == w


def border_name(r0: int, r1: int, c0: int, c1: int, h: int, w: int) -> str | None:
    """The border of an ``h x w`` token grid that the box of rows ``r0 <= r < r1`` and
    columns ``c0 <= c < c1`` touches (``"top-left corner"``, ``"right border"`` ...), or None
    for a box inside the grid.

    Example:
        >>> border_name(0, 2, 6, 8, 8, 8), border_name(3, 4, 0, 1, 8, 8)
        ('top-right corner', 'left border')
        >>> print(border_name(2, 4, 2, 4, 8, 8))
        None
    """
    vertical = "top" if r0 == 0 else "bottom" if r1 == h else None
    horizontal = "left" if c0 == 0 else "right" if c1 == w else None
    if vertical and horizontal:
        return f"{vertical}-{horizontal} corner"
    return f"{vertical or horizontal} border" if vertical or horizontal else None


def place_name(box: Sequence[int], grid: Sequence[int]) -> str:
    """What the warning calls a place: the token or tokens, and where they sit."""
    r0, r1, c0, c1 = box
    if r1 - r0 == 1 and c1 - c0 == 1:
        what = f"token row {r0}, column {c0}"
    else:
        rows = f"row {r0}" if r1 - r0 == 1 else f"rows {r0}-{r1 - 1}"
        cols = f"column {c0}" if c1 - c0 == 1 else f"columns {c0}-{c1 - 1}"
        what = f"the tokens at {rows}, {cols}"
    where = border_name(r0, r1, c0, c1, *grid)
    return f"{what} ({'on the ' + where if where else 'inside the image'})"


def hotspot_location(maps_or_mean: torch.Tensor) -> tuple[int, int, str | None]:
    """``(row, col, where)`` of the mean map's maximum on the token grid.

    ``where`` names the border the cell lies on (:func:`border_name`), or None for an
    interior cell. Ties go to the first cell in row-major order. Takes ``[B, h, w]`` maps or
    an ``[h, w]`` mean map.

    Example:
        >>> m = torch.zeros(5, 5); m[0, 2] = 1.0
        >>> hotspot_location(m)
        (0, 2, 'top border')
    """
    mean = mean_saliency_map(maps_or_mean[None] if maps_or_mean.dim() == 2 else maps_or_mean)
    h, w = mean.shape
    row, col = divmod(int(mean.flatten().argmax()), w)
    return row, col, border_name(row, row + 1, col, col + 1, h, w)


def mode_box(boxes: torch.Tensor) -> Box:
    """The most frequent row of ``[N, 4]`` boxes (ties: the smallest)."""
    values, counts = boxes.unique(dim=0, return_counts=True)
    r0, r1, c0, c1 = values[counts.argmax()].tolist()
    return (r0, r1, c0, c1)


def window_around(mean_map: torch.Tensor, row: int, col: int, side: int) -> Box | None:
    """The ``side x side`` window (clipped to the grid) holding ``(row, col)`` with the most
    saliency, or None when that window is a single token."""
    h, w = mean_map.shape
    sh, sw = min(side, h), min(side, w)
    if sh * sw == 1:
        return None
    sums = torch.nn.functional.avg_pool2d(mean_map[None, None], (sh, sw), stride=1)[0, 0]
    r_lo, r_hi = max(0, row - sh + 1), min(row, h - sh)
    c_lo, c_hi = max(0, col - sw + 1), min(col, w - sw)
    window = sums[r_lo : r_hi + 1, c_lo : c_hi + 1]
    dr, dc = divmod(int(window.flatten().argmax()), window.shape[1])
    return (r_lo + dr, r_lo + dr + sh, c_lo + dc, c_lo + dc + sw)
