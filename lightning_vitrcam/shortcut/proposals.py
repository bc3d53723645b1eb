"""Where to look: the places the alarm tests.

Three sources propose ``(box, group)`` pairs, ``group`` being a predicted class or None (all
probes): :func:`map_places`, the peaks of the mean ViT-ReciproCAM map of each group (and the
``max_box`` window around a peak with the most saliency); :func:`search_path`, a hierarchical
occlusion search of each probe that finds its most sensitive place whichever block reads it
(:func:`searched_places` turns the paths into each group's most frequent places); and
:class:`PlaceMemory`, the places tested at the previous evaluation.

Example:
    >>> import torch
    >>> maps = torch.zeros(4, 4, 4); maps[:, 0, 3] = 1.0
    >>> groups = probe_groups(torch.tensor([0, 0, 1, 1]), min_group=3)
    >>> map_places([maps], groups, torch.ones(4, dtype=torch.bool), max_box=1)
    [((0, 1, 3, 4), None)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_vitrcam.metrics import mean_saliency_map
from lightning_vitrcam.shortcut.interventions import Copy, CopyCache
from lightning_vitrcam.shortcut.places import Box, is_token, mode_box, on_border, window_around

__all__ = [
    "Group",
    "PlaceMemory",
    "map_places",
    "probe_groups",
    "search_path",
    "searched_places",
]

#: a group of probes: its class (None: every probe) and which probes belong to it
Group = tuple[int | None, torch.Tensor]
#: a place to test in the probes of one group
Candidate = tuple[Box, int | None]


def probe_groups(targets: torch.Tensor, min_group: int) -> list[Group]:
    """All probes, then each explained class with at least ``min_group`` probes (and fewer
    than all)."""
    groups: list[Group] = [(None, torch.ones_like(targets).bool())]
    classes, counts = targets.unique(return_counts=True)
    for c, k in zip(classes.tolist(), counts.tolist(), strict=True):
        if k >= min_group and k < targets.numel():
            groups.append((int(c), targets == c))
    return groups


def map_places(
    maps: Sequence[torch.Tensor], groups: Sequence[Group], informative: torch.Tensor, max_box: int
) -> list[Candidate]:
    """The peak token of the mean of each group's informative maps, for each batch of maps
    given (e.g. one per explained block), and the ``max_box`` window around it with the most
    saliency where that window touches the border."""
    w = maps[0].shape[-1]
    found: list[Candidate] = []
    for group, members in groups:
        keep = (members & informative).float()
        if not bool(keep.any()):
            continue
        for batch in maps:
            mean_map = mean_saliency_map(batch * keep[:, None, None])
            row, col = divmod(int(mean_map.flatten().argmax()), w)
            found.append(((row, row + 1, col, col + 1), group))
            grown = window_around(mean_map, row, col, max_box)
            if grown is not None and on_border(grown, *mean_map.shape):
                found.append((grown, group))
    return found


def _child(side: int) -> int:
    """Side of the search's windows in a box side: over half, so the two windows overlap."""
    return side // 2 + 1 if side > 2 else 1


def search_path(
    p0: torch.Tensor, cache: CopyCache, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``[N, levels, 4]``: each probe's box at every level of the search, coarse to fine, the
    last a single token (``rows``: only those probes, in that order).

    Each level occludes the four corner windows of the probe's box, each a little over half
    its size along each axis (``side // 2 + 1``; 1 from a side of 2) so that they overlap in
    the middle and a cue of up to 2x2 tokens straddling the midlines lies inside one of them,
    and keeps the one that drops the probe's score ``p0`` the most: 16 occluded copies per
    probe on an 8x8 grid (8, 5, 3, 2, 1 tokens a side), 20 on 14x14.
    """
    device = cache.images.device
    if rows is None:
        rows = torch.arange(cache.images.shape[0], device=device)
    n = len(rows)
    r0 = torch.zeros(n, dtype=torch.long, device=device)
    c0 = torch.zeros_like(r0)
    bh, bw = cache.grid
    path = []
    while bh > 1 or bw > 1:
        ch, cw = _child(bh), _child(bw)
        offsets = torch.tensor(
            [(a, b) for a in sorted({0, bh - ch}) for b in sorted({0, bw - cw})], device=device
        )  # [k, 2], k = 4 (2 where one side is already a single token)
        k = len(offsets)
        tops = r0[:, None] + offsets[:, 0]  # [n, k]
        lefts = c0[:, None] + offsets[:, 1]
        children = torch.stack([tops, tops + ch, lefts, lefts + cw], dim=-1)  # [n, k, 4]
        copy_rows = rows.repeat_interleave(k)
        scored = cache.copies(copy_rows, children.reshape(-1, 4), Copy.OCCLUDED)
        drop = (p0[copy_rows] - scored).view(n, k)
        best = children[torch.arange(n, device=device), drop.argmax(dim=1)]
        r0, c0, bh, bw = best[:, 0], best[:, 2], ch, cw
        path.append(best)
    if not path:
        return torch.tensor([0, 1, 0, 1], device=device).repeat(n, 1, 1)
    return torch.stack(path, dim=1)


def searched_places(
    path: torch.Tensor, groups: Sequence[Group], grid: tuple[int, int], max_box: int
) -> list[Candidate]:
    """Each group's most frequent single token, and box of up to ``max_box`` tokens a side
    that touches the border, on the probes' search paths."""
    found: list[Candidate] = []
    sides = torch.stack([path[..., 1] - path[..., 0], path[..., 3] - path[..., 2]], -1)
    small = (sides <= max_box).all(-1).all(0)  # the levels whose boxes are small
    for group, members in groups:
        for level in small.nonzero().flatten().tolist():
            box = mode_box(path[members, level])
            if is_token(box) or on_border(box, *grid):
                found.append((box, group))
    return found


class PlaceMemory:
    """The places tested at the last evaluation (this evaluation's first), re-tested at the
    next one: a cue the model keeps using is re-tested even when the maps peak elsewhere."""

    def __init__(self, size: int = 24) -> None:
        self.size = size
        self.places: list[Candidate] = []

    def remember(self, tested: Sequence[Candidate]) -> None:
        self.places = list(tested[: self.size])

    def recall(self, groups: Sequence[Group]) -> list[Candidate]:
        """The remembered places whose group is present."""
        present = {g for g, _ in groups}
        return [(box, group) for box, group in self.places if group in present]

    def state_dict(self) -> dict[str, Any]:
        return {"candidates": [[*box, group] for box, group in self.places]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.places = [
            (tuple(int(v) for v in place), None if group is None else int(group))  # type: ignore[misc]
            for *place, group in state["candidates"]
        ]
