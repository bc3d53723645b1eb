"""Regions of any shape on the token grid: where a mark may be, its control, and its name.

A region is a bool mask ``[h, w]`` over the token grid (a batch: ``[B, h, w]``). The mark
evidence (:mod:`~lightning_vitrcam.shortcut.mark`) proposes regions from two sources: the
connected high-saliency parts of each probe's map (:func:`salient_parts`: bands, lines,
blobs, any size up to a share of the grid) and the same fixed shapes for every probe along
the image's edges (:func:`edge_shapes`: bands and corners, where scanners, rulers and text
tags sit). :func:`elsewhere` gives a region's control, the same shape at another place, and
:func:`describe` says in words what a region looks like.

Example:
    >>> maps = torch.zeros(1, 8, 8); maps[0, 7, :] = 1.0; maps[0, 2, 2] = 0.6
    >>> parts, _ = salient_parts(maps)
    >>> describe(parts[0, 0])
    'a band along the bottom edge'
    >>> describe(edge_shapes(8, 8)["bottom-left corner"])
    'a 3x3-token region in the bottom-left corner'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "components",
    "describe",
    "edge_segments",
    "edge_shapes",
    "elsewhere",
    "salient_parts",
    "shifts",
    "token_lines",
]


def components(masks: torch.Tensor) -> torch.Tensor:
    """``[B, h, w]`` long: each token's 8-connected component in ``masks`` ``[B, h, w]``
    (the smallest flat index of its tokens), -1 off the masks. Label propagation on the
    whole batch at once: at most ``h * w`` rounds, usually a few.

    Example:
        >>> m = torch.tensor([[[1, 1, 0], [0, 0, 0], [0, 1, 1]]]).bool()
        >>> components(m)[0].tolist()
        [[0, 0, -1], [-1, -1, -1], [-1, 7, 7]]
    """
    b, h, w = masks.shape
    big = h * w
    index = torch.arange(big, device=masks.device).view(1, h, w).expand(b, h, w)
    labels = torch.where(masks, index, torch.full_like(index, big))
    for _ in range(big):
        # the smallest label among the 3x3 neighbours, kept on the masks only
        spread = -F.max_pool2d(-labels[:, None].float(), 3, stride=1, padding=1)[:, 0].long()
        new = torch.where(masks, torch.minimum(labels, spread), labels)
        if torch.equal(new, labels):
            break
        labels = new
    return torch.where(masks, labels, torch.full_like(labels, -1))


def salient_parts(
    maps: torch.Tensor, threshold: float = 0.5, max_share: float = 1 / 3, parts: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(parts [B, parts, h, w], found [B, parts])``: each map's ``parts`` connected regions
    of tokens at or above ``threshold`` with the most saliency, strongest first, each at most
    ``max_share`` of the grid (a map that is high nearly everywhere points at no part).

    Example:
        >>> m = torch.zeros(1, 4, 4); m[0, 0, :2] = 1.0; m[0, 3, 3] = 0.9
        >>> p, found = salient_parts(m)
        >>> p[0, 0].nonzero().tolist(), p[0, 1].nonzero().tolist(), found.tolist()
        ([[0, 0], [0, 1]], [[3, 3]], [[True, True]])
    """
    b, h, w = maps.shape
    labels = components(maps >= threshold).flatten(1)  # [B, h*w]
    on = labels >= 0
    slot = labels.clamp_min(0)
    score = torch.zeros(b, h * w, device=maps.device).scatter_add_(
        1, slot, torch.where(on, maps.flatten(1).float(), torch.zeros_like(maps.flatten(1)))
    )
    size = torch.zeros(b, h * w, device=maps.device).scatter_add_(1, slot, on.float())
    score = torch.where((size > 0) & (size <= max_share * h * w), score, torch.zeros_like(score))
    best = score.topk(min(parts, h * w), dim=1)
    found = best.values > 0
    masks = labels[:, None, :] == best.indices[:, :, None]  # [B, parts, h*w]
    masks &= found[:, :, None]
    return masks.view(b, -1, h, w), found


def edge_shapes(h: int, w: int) -> dict[str, torch.Tensor]:
    """The fixed shapes along the edges, by name: a band of an eighth of the grid along each
    edge (at least one token) and a box of three eighths of a side in each corner (at least
    two tokens): where rulers, scanner bands and text tags sit. The bands are thin because
    objects that fill the image reach into a deeper band with parts that name their class
    (the top bar of a 5 or a 7); a deeper mark is proposed by the maps."""
    dh, dw = max(1, round(h / 8)), max(1, round(w / 8))
    ch, cw = max(2, round(3 * h / 8)), max(2, round(3 * w / 8))
    out: dict[str, torch.Tensor] = {}
    for name, rows, cols in (
        ("top band", slice(0, dh), slice(None)),
        ("bottom band", slice(h - dh, h), slice(None)),
        ("left band", slice(None), slice(0, dw)),
        ("right band", slice(None), slice(w - dw, w)),
        ("top-left corner", slice(0, ch), slice(0, cw)),
        ("top-right corner", slice(0, ch), slice(w - cw, w)),
        ("bottom-left corner", slice(h - ch, h), slice(0, cw)),
        ("bottom-right corner", slice(h - ch, h), slice(w - cw, w)),
    ):
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[rows, cols] = True
        out[name] = mask
    return out


def token_lines(h: int, w: int) -> torch.Tensor:
    """``[h + w, h, w]``: every whole token row, then every whole token column: where a stripe,
    a scan line or a fold that runs across the image may be, wherever it is.

    Example:
        >>> lines = token_lines(3, 4)
        >>> lines.shape, lines[3].nonzero()[:, 1].unique().tolist()
        (torch.Size([7, 3, 4]), [0])
    """
    rows, cols = torch.arange(h), torch.arange(w)
    lines = torch.zeros(h + w, h, w, dtype=torch.bool)
    lines[rows, rows] = True
    lines[h + cols, :, cols] = True
    return lines


def edge_segments(h: int, w: int, shortest: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masks [M, h, w], edges [M])``: every run of at least ``shortest`` tokens, and shorter
    than its side, along the outermost token line of each edge (``edges``: 0 top, 1 bottom,
    2 left, 3 right): where a ruler lies along an edge at any place (a whole line is one of
    :func:`token_lines`; one or two tokens, a small region the corner boxes hold).

    Example:
        >>> masks, edges = edge_segments(4, 5)
        >>> masks.shape, edges.tolist()  # runs of 3 and 4 of 5 tokens; of 3 of 4
        (torch.Size([14, 4, 5]), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 3, 3])
        >>> masks[0].nonzero().tolist()
        [[0, 0], [0, 1], [0, 2]]
    """
    out: list[torch.Tensor] = []
    edges: list[int] = []
    for edge, side in enumerate((w, w, h, h)):
        for length in range(shortest, side):
            for start in range(side - length + 1):
                run = torch.zeros(side, dtype=torch.bool)
                run[start : start + length] = True
                mask = torch.zeros(h, w, dtype=torch.bool)
                if edge < 2:
                    mask[0 if edge == 0 else h - 1] = run
                else:
                    mask[:, 0 if edge == 2 else w - 1] = run
                out.append(mask)
                edges.append(edge)
    if not out:
        return torch.zeros(0, h, w, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
    return torch.stack(out), torch.tensor(edges)


def elsewhere(masks: torch.Tensor) -> torch.Tensor:
    """``[B, h, w]``: each region's control, the same shape at another place: its point
    reflection through the grid's centre or, where that overlaps it, the region moved by
    half the grid (wrapping round).

    Example:
        >>> m = torch.zeros(1, 4, 4, dtype=torch.bool); m[0, 3, :] = True
        >>> elsewhere(m)[0].nonzero()[:, 0].unique().tolist()
        [0]
    """
    h, w = masks.shape[-2:]
    mirrored = masks.flip(-1).flip(-2)
    shifted = masks.roll((h // 2, w // 2), (-2, -1))
    return torch.where(shifts(masks)[:, None, None], shifted, mirrored)


def shifts(masks: torch.Tensor) -> torch.Tensor:
    """``[B]``: whether :func:`elsewhere` moves each region by half the grid (its point
    reflection would overlap it) rather than reflecting it."""
    return (masks.flip(-1).flip(-2) & masks).flatten(1).any(1)


def _side(lo: int, hi: int, size: int, low: str, high: str) -> str | None:
    if lo == 0 and hi == size:
        return "across"
    if lo == 0:
        return low
    if hi == size:
        return high
    return None


def describe(mask: torch.Tensor) -> str:
    """What a region looks like and where it is, in words a user can act on: "a band along
    the bottom edge", "two thin vertical lines", "a 3x2-token region near the top-left
    corner".

    Example:
        >>> m = torch.zeros(8, 8, dtype=torch.bool); m[:, 2] = True; m[:, 6] = True
        >>> describe(m)
        'two thin vertical lines'
        >>> m = torch.zeros(8, 8, dtype=torch.bool); m[3:5, 3:5] = True
        >>> describe(m)
        'a 2x2-token region inside the image'
    """
    h, w = mask.shape
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    if not len(rows):
        return "an empty region"
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    parts = int(components(mask[None])[0].unique().numel()) - 1
    count = {1: "a", 2: "two", 3: "three"}.get(parts, "several")
    plural = "s" if parts > 1 else ""
    tall, wide = r1 - r0, c1 - c0
    per_col = mask.sum(0)[c0:c1].float()
    per_row = mask.sum(1)[r0:r1].float()
    used_cols, used_rows = int((per_col > 0).sum()), int((per_row > 0).sum())
    if tall >= 0.75 * h and float(per_col[per_col > 0].mean()) >= 0.75 * h and used_cols < w / 2:
        # full-height columns: vertical lines or a band along the left or right edge
        edge = _side(c0, c1, w, "left", "right")
        if parts == 1 and edge in ("left", "right") and wide <= max(1, w // 4):
            return f"a band along the {edge} edge"
        return f"{count} thin vertical line{plural}"
    if wide >= 0.75 * w and float(per_row[per_row > 0].mean()) >= 0.75 * w and used_rows < h / 2:
        edge = _side(r0, r1, h, "top", "bottom")
        if parts == 1 and edge in ("top", "bottom") and tall <= max(1, h // 4):
            return f"a band along the {edge} edge"
        return f"{count} thin horizontal line{plural}"
    vertical = _side(r0, r1, h, "top", "bottom")
    horizontal = _side(c0, c1, w, "left", "right")
    if vertical in ("top", "bottom") and horizontal in ("left", "right"):
        where = f"in the {vertical}-{horizontal} corner"
    elif vertical in ("top", "bottom") or horizontal in ("left", "right"):
        edge = vertical if vertical in ("top", "bottom") else horizontal
        # a long thin region along an edge: a ruler, a strip of text
        if (wide >= 3 * tall and vertical in ("top", "bottom")) or (
            tall >= 3 * wide and horizontal in ("left", "right")
        ):
            return f"{count} strip{plural} along the {edge} edge"
        where = f"at the {edge} edge"
    else:
        near = [
            s for s in (
                "top" if r1 <= h / 2 else "bottom" if r0 >= h / 2 else None,
                "left" if c1 <= w / 2 else "right" if c0 >= w / 2 else None,
            ) if s
        ]  # fmt: skip
        where = f"near the {'-'.join(near)} corner" if len(near) == 2 else "inside the image"
    shape = f"{wide}x{tall}-token region{plural}" if parts > 1 else f"{wide}x{tall}-token region"
    return f"{'a' if parts == 1 else count} {shape} {where}"
