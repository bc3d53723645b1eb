"""Evidence of a cue at one fixed place: saliency and search propose, occlusion confirms.

A model that learned a cue at a fixed place (a watermark, a border, a corner logo) reads that
place whatever the object does. The places the maps, the memory and (when those confirm
nothing) the occlusion search propose are occluded in the probes of their group; a place is
confirmed by the :class:`~lightning_vitrcam.shortcut.rule.Rule`.

Example:
    >>> import torch
    >>> from lightning_vitrcam.shortcut import ShortcutAlarm
    >>> def corner(x):  # reads the mean colour of the top-left 8x8 cell only
    ...     cue = x[:, :, :8, :8].mean(dim=(2, 3))
    ...     return 10.0 * torch.cat([cue, -cue.sum(1, keepdim=True)], dim=1)
    >>> images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.1
    >>> images[:, :, :8, :8] += 2.0 * torch.eye(3)[torch.arange(8) % 3][:, :, None, None]
    >>> maps = torch.zeros(8, 4, 4); maps[:, 0, 0] = 1.0
    >>> verdict = ShortcutAlarm(kinds=["place"]).check(
    ...     corner, lambda z: z.softmax(-1), images, [maps],
    ...                                 corner(images).argmax(1), torch.ones(8).bool())
    >>> [(s.box, s.hits, s.probes) for s in verdict.suspects]
    [((0, 1, 0, 1), 8, 8)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_vitrcam.shortcut.evidence import Evidence, Findings, Probing, register_evidence
from lightning_vitrcam.shortcut.interventions import Copy
from lightning_vitrcam.shortcut.places import is_token
from lightning_vitrcam.shortcut.proposals import (
    Candidate,
    PlaceMemory,
    map_places,
    searched_places,
)
from lightning_vitrcam.shortcut.report import Example, Suspect
from lightning_vitrcam.shortcut.rule import PlaceTest, Rule, needs_sufficiency

__all__ = ["FixedPlace", "score_places", "suspects_of"]


def _stacked(
    pairs: Sequence[tuple[Sequence[int], torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, boxes)``: every pair's probe rows, one after the other, each with its box."""
    rows = torch.cat([r for _, r in pairs])
    boxes = torch.cat([torch.tensor(box, device=device).repeat(len(r), 1) for box, r in pairs])
    return rows, boxes


def score_places(candidates: Sequence[Candidate], probing: Probing, rule: Rule) -> list[PlaceTest]:
    """Occlude each candidate place in the probes of its group (one batched forward for the
    copies not scored yet) and, for the places that must also be sufficient and whose
    occlusion ``rule`` confirms, keep them alone in one more forward."""
    if not candidates:
        return []
    p0, cache, grid = probing.p0, probing.cache, probing.grid
    rows = [probing.rows(group) for _, group in candidates]
    rows_all, boxes = _stacked([(box, r) for (box, _), r in zip(candidates, rows, strict=True)],
                               p0.device)  # fmt: skip
    p_occ = cache.copies(rows_all, boxes, Copy.OCCLUDED)
    drop = ((p0[rows_all] - p_occ) / p0[rows_all].clamp_min(1e-12)).clamp(-1.0, 1.0)
    drops = drop.cpu().split([len(r) for r in rows])  # one transfer for a few dozen numbers
    keep = [
        i
        for i, (box, _) in enumerate(candidates)
        if needs_sufficiency(box, grid) and rule.confirms(drops[i])[1]
    ]
    kept: dict[int, list[float]] = {}
    if keep:
        k_rows, k_boxes = _stacked([(candidates[i][0], rows[i]) for i in keep], p0.device)
        q = cache.copies(k_rows, k_boxes, Copy.KEPT)
        shares = (q / p0[k_rows].clamp_min(1e-12)).clamp(0.0, 1.0).cpu()
        for i, part in zip(keep, shares.split([len(rows[i]) for i in keep]), strict=True):
            kept[i] = part.tolist()
    return [
        PlaceTest(box=box, grid=grid, group=group, drops=part.tolist(), kept=kept.get(i))
        for i, ((box, group), part) in enumerate(zip(candidates, drops, strict=True))
    ]


def suspects_of(
    tests: Sequence[PlaceTest], rule: Rule, probing: Probing | None = None
) -> list[Suspect]:
    """The suspects ``rule`` confirms among ``tests``, most convincing first, without repeats:
    a place confirmed on all probes needs no repeat per class, and a box holding a token
    confirmed for the same group says less."""
    found = []
    for test in tests:
        if rule.judge(test):
            drops = torch.tensor(test.drops)
            found.append(
                Suspect(
                    box=test.box,
                    grid=test.grid,
                    group=test.group,
                    probes=len(test.drops),
                    hits=rule.confirms(drops)[0],
                    mean_drop=float(drops.mean()),
                    min_drop=rule.min_drop,
                    kept=rule.both(drops, test.kept)[0],
                    examples=() if probing is None else _examples(test, probing, rule),
                )
            )
    everyone = {s.box for s in found if s.group is None}
    tokens = {(s.row, s.col, s.group) for s in found if is_token(s.box)}

    def redundant(s: Suspect) -> bool:
        if s.group is not None and s.box in everyone:
            return True
        r0, r1, c0, c1 = s.box
        return not is_token(s.box) and any(
            (r, c, s.group) in tokens for r in range(r0, r1) for c in range(c0, c1)
        )

    kept = [s for s in found if not redundant(s)]
    kept.sort(key=lambda s: (s.group is not None, -s.hits / s.probes, -s.mean_drop))
    return kept


def _examples(test: PlaceTest, probing: Probing, rule: Rule, most: int = 4) -> tuple[Example, ...]:
    """Up to ``most`` hit probes of the place: their probability before and after the
    occlusion (and alone, where the place had to be sufficient)."""
    rows = probing.rows(test.group).tolist()
    out = []
    for i, (row, drop) in enumerate(zip(rows, test.drops, strict=True)):
        if drop < rule.min_drop or len(out) == most:
            continue
        before = float(probing.p0[row])
        kept = None if test.kept is None else before * test.kept[i]
        out.append(Example(probe=row, target=int(probing.targets[row]), before=before,
                           box=test.box, after=before * (1.0 - drop), kept=kept))  # fmt: skip
    return tuple(out)


@register_evidence("place")
class FixedPlace(Evidence):
    """The places proposed by the maps' peaks and the memory are tested first; the occlusion
    search (most of this evidence's cost) runs only when none of them is confirmed, or always
    with ``search_always``. Scalar: ``shortcut_place_drop``, the largest mean relative drop of
    any place tested in its group (0 without candidates)."""

    def __init__(self, alarm: Any) -> None:
        super().__init__(alarm)
        self.memory = PlaceMemory()

    def check(self, probing: Probing, rule: Rule) -> Findings:
        alarm = self.alarm
        fresh = map_places(probing.maps, probing.groups, probing.informative, alarm.max_box)
        recalled = self.memory.recall(probing.groups)
        candidates = list(dict.fromkeys(fresh + recalled))
        tests: list[PlaceTest] = []
        suspects: list[Suspect] = []
        if not (alarm.search and alarm.search_always):
            tests = score_places(candidates, probing, rule)
            suspects = suspects_of(tests, rule, probing)
        # the search only proposes places: where the maps' or remembered places already
        # confirm one, its copies cannot change whether this evaluation warns
        if alarm.search and (alarm.search_always or not suspects):
            fresh += searched_places(probing.search(), probing.groups, probing.grid, alarm.max_box)
            candidates = list(dict.fromkeys(fresh + recalled))
            tests = score_places(candidates, probing, rule)
            suspects = suspects_of(tests, rule, probing)
        self.memory.remember(candidates)
        worst = max((float(torch.tensor(t.drops).mean()) for t in tests), default=0.0)
        return Findings(suspects, tests, {"shortcut_place_drop": worst})

    def state_dict(self) -> dict[str, Any]:
        return self.memory.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.memory.load_state_dict(state)
