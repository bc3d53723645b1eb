"""Evidence of a small region that carries a probe's class, wherever it sits (beyond the paper).

A tag, a sticker, a watermark or a scanner's marker is a small region that names the class:
each probe that depends on it loses its prediction when the region is occluded, and the region
carries its class into other images. An object's own part is often necessary too, but it
rarely carries the class into another image. So the test is per probe and by construction:

1. **necessary**: each probe's own decisive region (up to ``max_box`` tokens a side): the
   smallest place among its map's peak token and window, the region remembered from the last
   evaluation and, for the probes none of those explain, the places of its occlusion search,
   whose occlusion removes at least ``min_drop`` of its predicted-class probability;
2. **carried**: each such region (the donor's) is pasted, at its own place, into probes of
   other predicted classes whose own decisive region was occluded first (so that their own
   cue does not compete); two *controls* paste a region of the same size the same way: one
   from elsewhere in the donor (any paste), one the decisive region of a probe of another
   class than the donor's (any object part: a model that reads any bright part as one class
   is not carried by the donor's content). A group of probes (all, or one predicted class)
   is confirmed when at least ``min_share`` (and ``min_hits``) of its probes have a necessary
   region and the
   transplants move at least ``min_margin`` more of their recipients to the donor's class than
   either control does (of the pairs the two tell apart; an exact sign test on those pairs at
   ``max_p``), from at least ``min_hits`` donors;
3. **the same thing**: a tag is the same pixels in every probe that carries it, while the
   parts of objects a model reads vary in colour, shape and place. Each carrier's region
   (a donor whose transplant moved a recipient) is looked for near the regions of up to three
   other carriers of its class, and, as the control, near the same place in probes of other
   classes (its recipients) (:func:`~lightning_vitrcam.shortcut.likeness.region_distance`);
   of the comparisons that tell the two apart (an exact tie does not), at least
   ``min_margin`` more must find it closer to its class than to the control, at an exact sign
   test p <= ``max_p``.

Where the confirmed regions share a place the warning names it; where they move it says so.
Scalars: ``shortcut_drop`` (the largest group mean drop of the probes' own regions) and
``shortcut_transplant`` (the largest group margin of transplants over controls).

Example:
    >>> import torch
    >>> from lightning_vitrcam.shortcut import ShortcutAlarm
    >>> def tag(x):  # class = the colour of the brightest 8x8 cell
    ...     cells = torch.nn.functional.avg_pool2d(x, 8)  # [B, 3, 4, 4]
    ...     best = cells.amax(dim=1).flatten(1).argmax(1)
    ...     return 10 * cells.flatten(2)[torch.arange(len(x)), :, best]
    >>> g = torch.Generator().manual_seed(0)
    >>> images = torch.rand(12, 3, 32, 32, generator=g) * 0.2
    >>> for i in range(12):  # a class-coloured tag at a random cell
    ...     r, c = divmod(int(torch.randint(16, (1,), generator=g)), 4)
    ...     images[i, i % 3, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = 1.0
    >>> maps = torch.rand(12, 4, 4, generator=g)  # maps that point nowhere in particular
    >>> verdict = ShortcutAlarm(kinds=["region"]).check(
    ...     tag, lambda z: z.softmax(-1), images, [maps], tag(images).argmax(1),
    ...     torch.ones(12).bool())
    >>> [(f.kind, f.group, f.moves) for f in verdict.suspects]
    [('region', None, True)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lightning_vitrcam.shortcut.evidence import (
    Evidence,
    Findings,
    PairTest,
    Probing,
    RegionTest,
    register_evidence,
)
from lightning_vitrcam.shortcut.interventions import Copy, transplant
from lightning_vitrcam.shortcut.likeness import carrier_likeness
from lightning_vitrcam.shortcut.places import Box, place_name
from lightning_vitrcam.shortcut.report import Example, Finding, group_name, prediction_of
from lightning_vitrcam.shortcut.rule import Rule, margin, sign_test

__all__ = ["RegionFinding", "SmallRegion", "control_boxes", "peak_boxes"]

_NONE = (0, 0, 0, 0)  # an empty box: occludes nothing


def peak_boxes(maps: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, windows)``, each ``[N, 4]``: every map's peak token, and the ``side``-sided
    window (clipped to the grid) holding it with the most saliency.

    Example:
        >>> m = torch.zeros(1, 4, 4); m[0, 0, 3] = 1.0; m[0, 1, 2] = 0.5
        >>> [b.tolist() for b in peak_boxes(m, 2)]
        [[[0, 1, 3, 4]], [[0, 2, 2, 4]]]
    """
    n, h, w = maps.shape
    sh, sw = min(side, h), min(side, w)
    peak = maps.flatten(1).argmax(dim=1)
    row, col = peak // w, peak % w
    tokens = torch.stack([row, row + 1, col, col + 1], dim=1)
    sums = F.avg_pool2d(maps[:, None].float(), (sh, sw), stride=1)[:, 0]  # [N, h-sh+1, w-sw+1]
    dr = torch.arange(sh, device=maps.device)
    dc = torch.arange(sw, device=maps.device)
    tops = (row[:, None] - dr).clamp(0, h - sh)  # [N, sh]: windows that hold the peak
    lefts = (col[:, None] - dc).clamp(0, w - sw)
    values = sums[
        torch.arange(n, device=maps.device)[:, None, None], tops[:, :, None], lefts[:, None]
    ]
    best = values.flatten(1).argmax(dim=1)
    top = tops.gather(1, (best // sw)[:, None])[:, 0]
    left = lefts.gather(1, (best % sw)[:, None])[:, 0]
    windows = torch.stack([top, top + sh, left, left + sw], dim=1)
    return tokens, windows


def control_boxes(boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[N, 4]``: for each box a box of the same size elsewhere on the grid: its point
    reflection through the grid's centre or, where that overlaps it, the box moved by half
    the grid (wrapping around).

    Example:
        >>> control_boxes(torch.tensor([[0, 1, 0, 1], [3, 5, 3, 5]]), (8, 8)).tolist()
        [[7, 8, 7, 8], [0, 2, 0, 2]]
    """
    h, w = grid
    r0, r1, c0, c1 = boxes.unbind(1)
    height, width = r1 - r0, c1 - c0
    mirrored = torch.stack([h - r1, h - r0, w - c1, w - c0], dim=1)
    top = (r0 + h // 2) % (h - height + 1)
    left = (c0 + w // 2) % (w - width + 1)
    moved = torch.stack([top, top + height, left, left + width], dim=1)
    overlaps = (mirrored[:, 0] < r1) & (r0 < mirrored[:, 1]) & (mirrored[:, 2] < c1)
    overlaps &= c0 < mirrored[:, 3]
    return torch.where(overlaps[:, None], moved, mirrored)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])


@dataclass(frozen=True, kw_only=True)
class RegionFinding(Finding):
    """A group of probes whose predictions hang on small regions that carry their class.

    ``necessary`` of the group's ``probes`` have a decisive region (``boxes``, one per such
    probe) whose occlusion drops their predicted-class probability by at least ``min_drop``
    (``mean_drop`` on average over the group); pasted into ``pairs`` probes of other classes,
    the regions moved ``flips`` of them to the donor's class; the controls of the same size
    (a region from elsewhere in the donor; the decisive region of a probe of another class)
    ``control_flips`` and ``class_flips``. Compared with the regions of other carriers of
    their class, the carriers' regions were closer than at the same place in probes of other
    classes ``alike`` times, further ``unlike`` times.
    """

    kind: str = "region"
    grid: tuple[int, int]
    necessary: int
    mean_drop: float
    boxes: tuple[Box, ...]
    pairs: int
    flips: int
    control_flips: int
    class_flips: int = 0
    alike: int = 0
    unlike: int = 0
    min_drop: float = 0.5

    @property
    def place(self) -> Box:
        """The most frequent of the regions."""
        return max(set(self.boxes), key=lambda b: (self.boxes.count(b), -_box_area(b), b))

    @property
    def at_place(self) -> int:
        """How many of the regions lie at the most frequent one: they share at least half of
        the smaller of the two boxes (a token inside a 2x2 box does; two 2x2 boxes that share
        one token do not)."""
        r0, r1, c0, c1 = self.place

        def shared(b: Box) -> bool:
            rows = max(0, min(r1, b[1]) - max(r0, b[0]))
            cols = max(0, min(c1, b[3]) - max(c0, b[2]))
            return 2 * rows * cols >= min(_box_area(b), _box_area(self.place))

        return sum(shared(b) for b in self.boxes)

    @property
    def moves(self) -> bool:
        """Whether the regions move: fewer than half of them lie at the most frequent one."""
        return 2 * self.at_place < len(self.boxes)

    @property
    def strength(self) -> float:
        return (self.flips - max(self.control_flips, self.class_flips)) / max(1, self.pairs)

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        half = "half" if self.min_drop == 0.5 else f"{self.min_drop:.0%}"
        who = group_name(self.group, class_names)
        carried = (
            f"pasted into {self.pairs} probes of other classes (their own decisive place"
            f" occluded) it moves {self.flips} of them to its class (pastes of the same size:"
            f" from elsewhere in the same probe {self.control_flips}, another class's decisive"
            f" region {self.class_flips}); it looks like the same thing in the probes that"
            f" carry it ({self.alike} comparisons with other probes of its class closer than"
            f" the same place in probes of other classes, {self.unlike} further)"
        )
        if not self.moves:
            elsewhere = len(self.boxes) - self.at_place
            near = f", {elsewhere} of them at another place" if elsewhere else ""
            return (
                f"the prediction hangs on {place_name(self.place, self.grid)}: occluding it"
                f" drops the predicted-class probability by at least {half} on"
                f" {self.necessary} of {self.probes} {who}{near} ({self.mean_drop:.2f} on"
                f" average), and {carried}"
            )
        side = max(max(b[1] - b[0], b[3] - b[2]) for b in self.boxes)
        return (
            f"the prediction follows a small region that moves: on {self.necessary} of"
            f" {self.probes} {who} a region of at most {side}x{side} tokens carries it, at"
            f" {len(set(self.boxes))} different places (most often"
            f" {place_name(self.place, self.grid)}); occluded, it drops the predicted-class"
            f" probability by at least {half}, and {carried}"
        )

    def summary(self, class_names: Sequence[str] | None = None) -> str:
        who = prediction_of(self.group, class_names)
        if not self.moves:
            return f"{who} hangs on {place_name(self.place, self.grid)}"
        return f"{who} follows a small region that moves"

    def remedy(self) -> str:
        return (
            "look at those places in the probes (vitrcam/shortcut_evidence): a tag, a"
            " watermark, a sticker or a marker there that names the class is a shortcut;"
            " remove or mask it in the data, or make it appear in every class"
        )


def _box_area(box: Box) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


@register_evidence("region")
class SmallRegion(Evidence):
    """See the module docstring. Reads ``min_margin``, ``transplants`` (recipients per
    donor), ``max_box`` and ``search`` from the alarm."""

    def __init__(self, alarm: Any) -> None:
        super().__init__(alarm)
        #: the places of the last check's confirmed regions, most frequent first: tried on
        #: every probe of the next check (the alarm's probes change from check to check)
        self.remembered: list[Box] = []
        #: the last check's per-probe regions, drops and transplants (for pictures and study)
        self.last: dict[str, Any] = {}
        self._checks = 0

    def check(self, probing: Probing, rule: Rule) -> Findings:
        self.last = {}
        self._pairs: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}
        alarm, n = self.alarm, len(probing.targets)
        rows, boxes = self._proposals(probing)
        if alarm.search and alarm.search_always:
            rows, boxes = self._searched(probing, rows, boxes, torch.arange(n))
        findings, regions = self._verdict(probing, rule, rows, boxes)
        missing = (regions[:, 0] < 0).nonzero().flatten()
        # the search only proposes places: where the maps' and remembered places already
        # confirm a finding, its copies cannot change whether this evaluation warns
        if alarm.search and not alarm.search_always and not findings.suspects and len(missing):
            # at most search_probes probes a check, in turn: the search costs 16 copies a
            # probe on 8x8 tokens, and a cue the model keeps using is on most probes
            start = (self._checks * alarm.search_probes) % len(missing)
            turn = missing.roll(-start)[: alarm.search_probes]
            rows, boxes = self._searched(probing, rows, boxes, turn)
            findings, regions = self._verdict(probing, rule, rows, boxes)
        self._checks += 1
        places: dict[Box, int] = {}
        for finding in findings.suspects:
            for box in getattr(finding, "boxes", ()):
                places[box] = places.get(box, 0) + 1
        self.remembered = sorted(places, key=lambda b: -places[b])[:3]
        return findings

    def _verdict(
        self, probing: Probing, rule: Rule, rows: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[Findings, torch.Tensor]:
        """The findings from the places ``(rows, boxes)`` proposed, and each probe's region."""
        n = len(probing.targets)
        regions, own, drops = self._smallest(rows, boxes, probing, rule, n)
        found = regions[:, 0] >= 0
        groups = [
            (g, members)
            for g, members in probing.groups
            if rule.enough(int((found & members).sum()), int(members.sum()))
        ]
        self.last.update({"regions": regions, "own": own, "drops": drops})
        tests: list[RegionTest | PairTest] = [
            RegionTest(probe=i, target=t, box=tuple(b), drop=d, necessary=f)  # type: ignore[arg-type]
            for i, (t, b, d, f) in enumerate(
                zip(probing.targets.tolist(), own.tolist(), drops.tolist(), found.tolist(),
                    strict=True)
            )
        ]  # fmt: skip
        scalars = {
            "shortcut_drop": self._worst(drops, probing),
            "shortcut_transplant": 0.0,
            "shortcut_transplant_pairs": 0.0,
        }
        donors = torch.zeros(n, dtype=torch.bool, device=found.device)
        for _, members in groups:
            donors |= found & members
        if not bool(donors.any()):
            return Findings(tests=tests, scalars=scalars), regions
        pairs = self._transplants(probing, regions, own, donors)
        self.last.update(pairs)
        scalars["shortcut_transplant_pairs"] = float(len(pairs["donors"]))
        tests += [
            PairTest("transplant", d, r, t, m, c, tuple(b), o)  # type: ignore[arg-type]
            for d, r, t, m, c, b, o in zip(
                pairs["donors"].tolist(), pairs["recipients"].tolist(),
                probing.targets[pairs["donors"]].tolist(), pairs["flips"].tolist(),
                pairs["control_flips"].tolist(), regions[pairs["donors"]].tolist(),
                pairs["class_flips"].tolist(), strict=True,
            )
        ]  # fmt: skip
        findings = []
        for group, members in groups:
            finding, _ = self._judge(probing, rule, group, members, found, drops, regions, pairs)
            if finding is not None:
                # the scalar says what the verdict says: a margin only for a confirmed finding
                scalars["shortcut_transplant"] = max(
                    scalars["shortcut_transplant"], finding.strength
                )
                findings.append(finding)
        class_groups = sum(g is not None for g, _ in probing.groups)
        return Findings(_pruned(findings, class_groups), tests, scalars), regions

    # ------------------------------------------------------------------ necessary
    def _proposals(self, probing: Probing) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, boxes)``: each informative probe's map peak token and window, and each
        probe's region remembered from the last check."""
        device, grid, n = probing.p0.device, probing.grid, len(probing.targets)
        rows, boxes = [], []
        informative = probing.informative.nonzero().flatten()
        for batch in probing.maps:
            tokens, windows = peak_boxes(batch[informative], self.alarm.max_box)
            rows += [informative, informative]
            boxes += [tokens, windows]
        remembered = [b for b in self.remembered if _fits(b, grid)]
        if remembered:
            every = torch.arange(n, device=device)
            rows.append(every.repeat(len(remembered)))
            boxes.append(torch.tensor(remembered, device=device).repeat_interleave(n, 0))
        if not rows:
            return torch.empty(0, dtype=torch.long, device=device), torch.empty(
                0, 4, dtype=torch.long, device=device
            )
        return torch.cat(rows), torch.cat(boxes)

    def _searched(
        self, probing: Probing, rows: torch.Tensor, boxes: torch.Tensor, which: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The proposals with the small boxes of the occlusion search of the probes
        ``which`` added (their copies are scored by the search itself)."""
        which = which.to(probing.p0.device)
        path = probing.search(which)  # [m, levels, 4]
        sides = torch.maximum(path[..., 1] - path[..., 0], path[..., 3] - path[..., 2])
        small = (sides <= self.alarm.max_box).all(0)
        level_rows = which.repeat_interleave(int(small.sum()))
        found = path[:, small].reshape(-1, 4)
        # the searched probes' most frequent places, tried on every probe: a cue at one place
        # is found on all of them by searching a few
        n = len(probing.targets)
        levels = small.nonzero().flatten().tolist()
        # the finest level's most frequent places (a cue per class: one each), and each
        # coarser small level's most frequent one
        common = torch.cat(
            [_frequent(path[:, levels[-1]], _COMMON)]
            + [_frequent(path[:, k], 1) for k in levels[:-1]]
        ).unique(dim=0)
        every = torch.arange(n, device=path.device).repeat(len(common))
        return (
            torch.cat([rows, level_rows, every]),
            torch.cat([boxes, found, common.repeat_interleave(n, 0)]),
        )

    def _smallest(
        self, rows: torch.Tensor, boxes: torch.Tensor, probing: Probing, rule: Rule, n: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = probing.p0.device
        regions = torch.full((n, 4), -1, dtype=torch.long, device=device)
        own = torch.tensor(_NONE, device=device).repeat(n, 1)
        drops = torch.zeros(n, device=device)
        self.last["after"] = probing.p0.clone()
        if not len(rows):
            return regions, own, drops
        p0 = probing.p0
        q = probing.cache.copies(rows, boxes, Copy.OCCLUDED)
        drop = ((p0[rows] - q) / p0[rows].clamp_min(1e-12)).clamp(-1.0, 1.0)
        necessary = drop >= rule.min_drop
        # per probe: the smallest necessary place (ties: the larger drop), else the most
        # damaging place; ties between equal keys go to the first candidate
        key = torch.where(necessary, 1000.0 - 4.0 * _area(boxes).float() + drop, drop - 10.0)
        top = torch.full((n,), -torch.inf, device=device).scatter_reduce(0, rows, key, "amax")
        index = torch.arange(len(rows), device=device)
        is_top = key == top[rows]
        pick = torch.full((n,), len(rows), device=device).scatter_reduce(
            0, rows[is_top], index[is_top], "amin"
        )
        has = pick < len(rows)
        chosen = pick[has]
        own[has] = boxes[chosen]
        drops[has] = drop[chosen]
        self.last["after"][has] = q[chosen].to(self.last["after"].dtype)
        ok = torch.zeros_like(has)
        ok[has] = necessary[chosen]
        regions[ok] = boxes[pick[ok]]
        return regions, own, drops

    def _worst(self, drops: torch.Tensor, probing: Probing) -> float:
        return max(float(drops[members].mean()) for _, members in probing.groups)

    # ------------------------------------------------------------------ carried
    def _transplants(
        self, probing: Probing, regions: torch.Tensor, own: torch.Tensor, donors: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Each donor's region pasted into ``transplants`` recipients of other predicted
        classes, and two controls of the same size pasted the same way: a region from
        elsewhere in the donor, and the decisive region of a probe of another class than the
        donor's; one forward for every pair not tested yet in this check."""
        targets, device, grid = probing.targets, probing.targets.device, probing.grid
        picked = probing.cache.predicts(probing.scores)
        triples = []
        per = self.alarm.transplants
        for k, d in enumerate(donors.nonzero().flatten().tolist()):
            others = (~picked[:, targets[d]]).nonzero().flatten().tolist()
            for m in range(min(per, len(others))):
                r = others[(k * per + m) % len(others)]
                # a third probe not of the donor's class, of a third class where there is one:
                # its own decisive region (none: -1)
                thirds = [e for e in others if e != r and targets[e] != targets[r]]
                thirds = thirds or [e for e in others if e != r]
                triples.append((d, r, thirds[(k + m) % len(thirds)] if thirds else -1))
        keys = [
            (d, *regions[d].tolist(), r, *own[r].tolist(), e, *(own[e].tolist() if e >= 0 else ()))
            for d, r, e in triples
        ]
        todo = [i for i, key in enumerate(keys) if key not in self._pairs]
        if todo:
            d, r, e = (torch.tensor([triples[i][j] for i in todo], device=device) for j in range(3))
            boxes, controls = regions[d], control_boxes(regions[d], grid)
            images = probing.images
            pasted = transplant(images, r, own[r], d, boxes, grid)
            control = transplant(images, r, own[r], d, controls, grid)
            # without a third probe the class control pastes nothing: the recipient, its own
            # place occluded (never the probe itself, which the check already scored)
            third = e.clamp_min(0)
            none = torch.zeros_like(own[r])
            other = transplant(
                images, r, own[r], third, torch.where((e >= 0)[:, None], own[third], none), grid
            )
            predicted, scores = probing.predicted(torch.cat([pasted, control, other]))
            cls = targets[d].repeat(3)[:, None]
            moved, p_donor = predicted.gather(1, cls)[:, 0], scores.gather(1, cls)[:, 0]
            top = scores.argmax(dim=1)
            t = len(todo)
            for q, i in enumerate(todo):
                result = {"controls": controls[q]}
                for prefix, at in (("", q), ("control_", t + q), ("class_", 2 * t + q)):
                    result[f"{prefix}flips" if prefix else "flips"] = moved[at]
                    result[f"{prefix}p" if prefix else "moved_p"] = p_donor[at]
                    result[f"{prefix}to" if prefix else "moved_to"] = top[at]
                self._pairs[keys[i]] = result
        out: dict[str, torch.Tensor] = {
            "donors": torch.tensor([d for d, _, _ in triples], dtype=torch.long, device=device),
            "recipients": torch.tensor([r for _, r, _ in triples], dtype=torch.long, device=device),
            "others": torch.tensor([e for _, _, e in triples], dtype=torch.long, device=device),
        }
        out["other_boxes"] = own[out["others"].clamp_min(0)]
        fields = ("flips", "control_flips", "class_flips", "controls", "moved_p", "control_p",
                  "class_p", "moved_to", "control_to", "class_to")  # fmt: skip
        for name in fields:
            values = [self._pairs[key][name] for key in keys]
            empty = torch.zeros((0, 4) if name == "controls" else 0, device=device)
            out[name] = (
                torch.stack(values) if values else empty.bool() if "flips" in name else empty
            )
        return out

    def _judge(
        self,
        probing: Probing,
        rule: Rule,
        group: int | None,
        members: torch.Tensor,
        found: torch.Tensor,
        drops: torch.Tensor,
        regions: torch.Tensor,
        pairs: dict[str, torch.Tensor],
    ) -> tuple[RegionFinding | None, float]:
        mine = members[pairs["donors"]] if len(pairs["donors"]) else pairs["flips"]
        if not bool(mine.any()):
            return None, 0.0
        flips, control = pairs["flips"][mine], pairs["control_flips"][mine]
        other = pairs["class_flips"][mine]
        # the transplant has to beat both controls: more than any paste of the same size,
        # and more than another class's decisive region
        moved_more = min(margin(flips, control), margin(flips, other))
        significant = max(sign_test(flips, control), sign_test(flips, other)) <= self.alarm.max_p
        carrying = pairs["donors"][mine][flips].unique()
        carriers = int(carrying.numel())
        necessary = found & members
        confirmed = (
            moved_more >= self.alarm.min_margin and significant and carriers >= rule.min_hits
        )
        alike = unlike = 0
        if confirmed:  # only then: it costs a comparison of pixels per pair of carriers
            alike, unlike = carrier_likeness(
                probing.images, probing.targets, carrying, regions,
                pairs["donors"], pairs["recipients"], probing.grid,
            )  # fmt: skip
            told = torch.ones(alike + unlike, dtype=torch.bool)
            closer = torch.arange(alike + unlike) < alike
            confirmed = (
                margin(closer, ~closer & told) >= self.alarm.min_margin
                and sign_test(closer, ~closer) <= self.alarm.max_p
            )
        finding = RegionFinding(
            group=group,
            probes=int(members.sum()),
            grid=probing.grid,
            necessary=int(necessary.sum()),
            mean_drop=float(drops[members].mean()),
            boxes=tuple(tuple(b) for b in regions[necessary].tolist()),  # type: ignore[misc]
            pairs=int(mine.sum()),
            flips=int(flips.sum()),
            control_flips=int(control.sum()),
            class_flips=int(other.sum()),
            alike=alike,
            unlike=unlike,
            min_drop=rule.min_drop,
            examples=_examples(probing, self.last, mine, pairs, regions),
        )
        return (finding if confirmed else None), moved_more

    def state_dict(self) -> dict[str, Any]:
        return {"places": [list(b) for b in self.remembered], "checks": self._checks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.remembered = [tuple(int(v) for v in box) for box in state.get("places", [])]  # type: ignore[misc]
        self._checks = int(state.get("checks", 0))


_COMMON = 4  # the searched places (of the finest level) tried on every probe


def _frequent(boxes: torch.Tensor, most: int) -> torch.Tensor:
    """The ``most`` most frequent rows of ``[k, 4]`` boxes (ties: the first in sort order)."""
    values, counts = boxes.unique(dim=0, return_counts=True)
    return values[counts.argsort(descending=True, stable=True)[:most]]


def _fits(box: Sequence[int], grid: tuple[int, int]) -> bool:
    return 0 <= box[0] < box[1] <= grid[0] and 0 <= box[2] < box[3] <= grid[1]


def _pruned(findings: list[RegionFinding], class_groups: int) -> list[RegionFinding]:
    """One finding says it best: a place fixed for every class group, each at its own place,
    is said per class; otherwise the all-probes finding, else the classes' strongest first."""
    everyone = [f for f in findings if f.group is None]
    fixed = [f for f in findings if f.group is not None and not f.moves]
    if class_groups and len(fixed) == class_groups and (not everyone or everyone[0].moves):
        return sorted(fixed, key=lambda f: -f.strength)
    if everyone:
        return everyone
    return sorted(findings, key=lambda f: -f.strength)


def _examples(
    probing: Probing,
    last: dict[str, Any],
    mine: torch.Tensor,
    pairs: dict[str, torch.Tensor],
    regions: torch.Tensor,
    most: int = 4,
) -> tuple[Example, ...]:
    """Up to ``most`` donors of the group, each with one transplant that moved its
    recipient (else its first), and the numbers the test computed (``last``: the check's
    own regions and probabilities after occlusion)."""
    own, after = last["own"], last["after"]
    chosen: dict[int, int] = {}
    for k in mine.nonzero().flatten().tolist():
        d = int(pairs["donors"][k])
        if d not in chosen or (bool(pairs["flips"][k]) and not bool(pairs["flips"][chosen[d]])):
            chosen[d] = k
    out = []
    for d, k in list(chosen.items())[:most]:
        r = int(pairs["recipients"][k])
        out.append(
            Example(
                probe=d,
                target=int(probing.targets[d]),
                before=float(probing.p0[d]),
                box=tuple(regions[d].tolist()),  # type: ignore[arg-type]
                after=float(after[d]),
                partner=r,
                partner_box=tuple(own[r].tolist()),  # type: ignore[arg-type]
                moved_to=int(pairs["moved_to"][k]),
                moved_p=float(pairs["moved_p"][k]),
                control_box=tuple(pairs["controls"][k].tolist()),  # type: ignore[arg-type]
                control_partner=r,
                control_to=int(pairs["control_to"][k]),
                control_p=float(pairs["control_p"][k]),
                other=int(pairs["others"][k]),
                other_box=tuple(pairs["other_boxes"][k].tolist()),  # type: ignore[arg-type]
                other_to=int(pairs["class_to"][k]),
                other_p=float(pairs["class_p"][k]),
            )
        )
    return tuple(out)
