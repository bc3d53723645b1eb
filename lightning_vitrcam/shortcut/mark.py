"""Evidence of a mark of any shape that carries its class into other images (beyond the paper).

Scanner text tags, rulers, bands along an edge, thin full-height stripes and stickers are not
small necessary regions: occluding any small part leaves the rest to carry the class, and
where the object says the same (a lesion with the ruler beside it) the mark is not necessary
at all. What such a mark does is *carry its class when added*: paste it into an image of
another class, and the prediction moves to the mark's class. So the test is sufficiency
without necessity, each paste against controls of the same shape:

1. **candidates** (regions of any shape on the token grid, :mod:`.shapes`): along the edges
   of the image the same fixed shapes for every probe of a class (a band an eighth of the grid
   deep, a box in each corner; :func:`~lightning_vitrcam.shortcut.shapes.edge_shapes`), and
   each probe's own connected high-saliency parts of its map (any shape up to a third of the
   grid; a thin part that runs over half the grid also as the whole rows or columns it lies
   on), and each probe's token rows and columns that no probe of another class has anything
   like along their whole length (each twice as far from every one of them as they are from
   each other), together: stripes at another place in every image, which a saturated model's
   flat maps do not light (:func:`~lightning_vitrcam.shortcut.likeness.contrast_along`); and,
   the same way, each probe's runs of three or more tokens along one edge, together
   (:func:`~lightning_vitrcam.shortcut.shapes.edge_segments`): a ruler at another place along
   another edge in each image, which no fixed shape holds in enough donors;
2. **carriers**: each candidate is pasted, at its own place, into one probe of another
   predicted class per donor (the screening, at most ``_SCREEN`` donors; the recipients
   taken from the other classes in turn, and a donor whose paste moved nothing pasted once
   more into the class the others moved most often: a mark may carry its class into a class
   whose own evidence is weak and not into one whose evidence outweighs it); the donors
   whose paste moved its recipient to their class carry it. Carried by half of them or
   fewer, it is a mark on part of the class or what some of a class's own objects have (the
   bar of a 7, pasted onto a 1, makes a 7): it must then look the same in its carriers (step
   3);
3. **confirmed on fresh pairs**: the carriers' candidates are pasted into other recipients
   (at least ``_PAIRS`` pastes, of every other class in turn), each against controls of the
   same shape, all counted alike (a move to the donor's class): the donor's pixels of the
   same shape *elsewhere* (the shape reflected through the centre), *another class's* pixels
   in the same shape (a third probe's), the shape *left blank* (the probes' mean colour: a
   paste that only removes the recipient's own mark from its place carries nothing), the
   donor's *own pixels from elsewhere brought* to the shape (where any of the donor's
   content carries its class there, as a texture's does, the place is read and not a mark on
   it) and, for a candidate inside the image (not on an edge, not spanning it), *another
   probe of the donor's class*'s pixels there; for the lines no other class has, another
   probe of the donor's class without such a line of its own in the shape (a stripe sits at
   a new place in each image, so that probe's pixels there carry nothing; an object's part
   that names its class at that place, a lesion's column, carries it from there too); for
   the runs along an edge the same, and where a donor has no such probe (every probe of the
   class has a run there: the class's own content, the dark edge of a scan) they are not
   tested.
   Confirmed when the pastes move at least
   ``min_margin`` more recipients than each control (of the pairs the two tell apart), at an
   exact sign test p <= ``max_p`` divided by the number of candidates confirmed-tested in
   the check, from at least ``min_hits`` donors (the controls are run only where the pastes
   alone move enough recipients to pass: no control can raise the margin or lower the p);
   a candidate inside the image, or carried by few of its screened donors, and the runs
   along an edge, must also be the *same thing* in the donors that carry it: the region,
   each pixel weighed by how much it differs from the probes' typical (per-pixel median)
   image, found in another carrier, anywhere, twice as close as in the recipient at most of
   the pastes that moved, and more often than the other way round
   (:func:`~lightning_vitrcam.shortcut.likeness.region_distance`), read in colour (each
   image relative to its typical colour) and in detail (each image less its local mean: a
   tag's one-pixel strokes on backgrounds of other shades), a comparison counting where
   one reading finds it twice as close and the other does not find the reverse; the runs
   along an edge in
   every orientation of the other image, the recipient's as the carrier's (a ruler lies
   along another edge in each image: the same pixels in the edge's frame,
   :func:`~lightning_vitrcam.shortcut.likeness.orientations`). The typical image is set
   by every probe alike and the rule is the same both ways, so the two counts are
   exchangeable where the region is no more like the carriers than the recipients.

On a grid under ``_MIN_SIDE`` (6) tokens a side the kind tests nothing: a band or a corner is
then a large part of the image, where an object fits. Scalars: ``shortcut_mark`` (the
strongest confirmed finding's margin over its strongest control, 0 without a finding) and
``shortcut_mark_pairs`` (pastes run, screening included).

Example:
    >>> import torch
    >>> from lightning_vitrcam.shortcut import ShortcutAlarm
    >>> def model(x):  # class 1 when a dark band runs along the bottom edge
    ...     dark = (x[:, :, -4:] < -0.5).float().mean(dim=(1, 2, 3))
    ...     return torch.stack([torch.zeros_like(dark), 20 * (dark - 0.5)], 1)
    >>> g = torch.Generator().manual_seed(0)
    >>> images = torch.rand(16, 3, 32, 32, generator=g) * 0.5
    >>> images[8:, :, -4:] = -1.0  # the positives carry the band
    >>> maps = torch.zeros(16, 8, 8)  # maps that light nothing: the fixed shapes find it
    >>> verdict = ShortcutAlarm(kinds=["mark"]).check(
    ...     model, lambda z: z.softmax(-1), images, [maps], model(images).argmax(1),
    ...     torch.ones(16).bool())
    >>> [(f.kind, f.group, f.shape) for f in verdict.suspects]
    [('mark', 1, 'a band along the bottom edge')]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_vitrcam.shortcut.evidence import (
    Evidence,
    Findings,
    PairTest,
    Probing,
    register_evidence,
)
from lightning_vitrcam.shortcut.interventions import brought_here, fill_colour, paste_regions
from lightning_vitrcam.shortcut.likeness import (
    contrast_along,
    orientations,
    pair_contrast,
    region_distance,
)
from lightning_vitrcam.shortcut.report import Example, Finding, group_name, prediction_of
from lightning_vitrcam.shortcut.rule import Rule, margin, sign_test
from lightning_vitrcam.shortcut.shapes import (
    components,
    describe,
    edge_segments,
    edge_shapes,
    elsewhere,
    salient_parts,
    token_lines,
)

__all__ = ["Candidate", "Mark", "MarkFinding", "anchored"]

_SCREEN = 8  # candidates (donors' regions) a candidate is screened on, one paste each
_THRESHOLD = 0.5  # the map level of a salient token
# on a smaller grid a band or a corner is a large part of the image, where objects sit
_MIN_SIDE = 6
_APART = 2.0  # how much further a line must be from the other classes than they are apart
# a comparison of looks counts only where the region is this many times closer in one image
# than in the other: a mark is found near-exactly where it is and far from where it is not,
# while strokes that every digit has are found at much the same distance in both
_CLOSER = 2.0
_PAIRS = 24  # fewest pastes a confirmation rests on (recipients per carrier grow to reach it)
# the most pixels a token side is compared at where a region lies on an edge or spans the
# image: what is printed there (a tag's one-pixel strokes, a ruler's ticks) blurs into its
# background averaged down to the 4 used inside the image, where objects are and averaging
# keeps two objects' own fine texture from looking alike
_EDGE_PIXELS = 6


def anchored(masks: torch.Tensor) -> torch.Tensor:
    """``[B]``: whether each region (``[B, h, w]``) lies on the image's edge (at least half of
    its tokens on the outermost ring) or spans the image from one edge to the opposite one;
    the rest lie inside the image, where objects are.

    Example:
        >>> m = torch.zeros(2, 4, 4, dtype=torch.bool); m[0, 3, 1:3] = True; m[1, 1:3, 1] = True
        >>> anchored(m).tolist()
        [True, False]
    """
    h, w = masks.shape[-2:]
    ring = torch.zeros(h, w, dtype=torch.bool, device=masks.device)
    ring[0] = ring[-1] = True
    ring[:, 0] = ring[:, -1] = True
    on_ring = (masks & ring).flatten(1).sum(1) * 2 >= masks.flatten(1).sum(1)
    spans = (masks[:, 0].any(1) & masks[:, -1].any(1)) | (
        masks[:, :, 0].any(1) & masks[:, :, -1].any(1)
    )
    return on_ring | spans


def _spanning(parts: torch.Tensor) -> torch.Tensor:
    """A thin part that runs over half the grid, grown to the whole columns (or rows) it lies
    on: a stripe or a ruler read anywhere along its length. Other parts unchanged."""
    h, w = parts.shape[-2:]
    cols, rows = parts.any(-2), parts.any(-1)  # [B, w], [B, h]
    tall = (rows.sum(-1) >= h / 2) & (cols.sum(-1) <= max(1, w // 4))
    wide = (cols.sum(-1) >= w / 2) & (rows.sum(-1) <= max(1, h // 4))
    out = torch.where(tall[:, None, None], cols[:, None, :].expand_as(parts), parts)
    return torch.where(wide[:, None, None], rows[:, :, None].expand_as(parts), out)


@dataclass(frozen=True)
class Candidate:
    """Regions of one class's probes to paste: ``masks[i]`` of donor ``donors[i]`` (all the
    same for a fixed shape), named ``name``; ``anchored``: on the edge or spanning (no
    own-class control); ``few``: carried by half of the donors screened or fewer (it must
    look the same in its carriers, as a candidate inside the image must); ``lined``
    (``[N, h, w]``, every probe's tokens on its own lines unlike the other class): where
    given, the own-class control is a probe of the class with none of them in the shape;
    ``wording``: what a finding names where the regions differ from donor to donor (else the
    shape of the most frequent one); ``needs_own``: not tested where some donor has no such
    probe of its class to control with; ``turned``: the regions lie along another edge in
    each donor, so their looks are compared in every orientation (and always compared)."""

    group: int
    name: str
    donors: torch.Tensor
    masks: torch.Tensor
    anchored: bool
    few: bool = False
    lined: torch.Tensor | None = None
    wording: str | None = None
    needs_own: bool = False
    turned: bool = False

    @property
    def key(self) -> tuple[int, str]:
        return (self.group, self.name)


@dataclass(frozen=True, kw_only=True)
class MarkFinding(Finding):
    """Probes of one class whose marks carry their class: pasted into ``pairs`` probes of
    other classes, their ``shape`` (``region``: the most frequent region, flat token indices
    on the ``grid``) moved ``flips`` to the class; the same shape from elsewhere in the donor
    ``control_flips``, another class's pixels there ``class_flips``, the shape left blank
    (the probes' mean colour) ``blank_flips``, the donor's own pixels from that other place
    brought to the shape ``brought_flips`` and, for a mark inside the image or a line,
    another probe of the class's pixels there ``own_flips``; ``carriers``
    distinct donors moved a recipient."""

    kind: str = "mark"
    grid: tuple[int, int]
    #: which candidate it was: a fixed shape's name ("bottom band") or "map parts ..."
    candidate: str
    shape: str
    region: tuple[int, ...]
    pairs: int
    flips: int
    control_flips: int
    class_flips: int
    blank_flips: int = 0
    brought_flips: int = 0
    own_flips: int | None = None
    carriers: int = 0
    alike: int = 0
    unlike: int = 0

    @property
    def strength(self) -> float:
        worst = max(self.control_flips, self.class_flips, self.blank_flips, self.brought_flips,
                    self.own_flips or 0)  # fmt: skip
        return (self.flips - worst) / max(1, self.pairs)

    def summary(self, class_names: Sequence[str] | None = None) -> str:
        return f"{prediction_of(self.group, class_names)} follows {self.shape}"

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        own = (
            ""
            if self.own_flips is None
            else f", another {_class(self.group, class_names)} probe's pixels there"
            f" {self.own_flips}"
        )
        return (
            f"{self.shape} carries the class of the {group_name(self.group, class_names)}:"
            f" pasted into {self.pairs} probes of other classes it moves {self.flips} of them"
            f" to that class, from {self.carriers}"
            f" probes (the same shape from elsewhere in the probe {self.control_flips},"
            f" another class's pixels there {self.class_flips}, the shape left blank"
            f" {self.blank_flips}, the probe's own pixels from elsewhere brought there"
            f" {self.brought_flips}{own})"
        )

    def remedy(self) -> str:
        return (
            f"look at {self.shape} in the probes (vitrcam/shortcut_evidence): a text tag, a"
            " ruler, a band, stripes or a sticker there that names the class is a shortcut;"
            " remove, mask or crop it, or make it appear in every class"
        )


def _class(group: int | None, class_names: Sequence[str] | None) -> str:
    if group is None:
        return "the prediction"
    name = class_names[group] if class_names and group < len(class_names) else str(group)
    return repr(name)


@register_evidence("mark")
class Mark(Evidence):
    """See the module docstring. Reads ``min_margin``, ``max_p`` and ``transplants``
    (recipients per donor) from the alarm."""

    def __init__(self, alarm: Any) -> None:
        super().__init__(alarm)
        #: the candidates confirmed at the last check, by (class, name): tested first, on
        #: fresh pairs, at the next one
        self.remembered: list[tuple[int, str]] = []
        #: what the last check did with each candidate, in plain numbers (for study; the
        #: benchmark's replays record it): its screening (``screened`` donors, ``carriers``)
        #: and, where it went on to its confirmation, ``pairs``, ``moved`` (the pastes that
        #: moved their recipient), ``controls`` (each control's, where they ran), ``alike``
        #: and ``unlike`` (the comparison of looks, where it ran) and ``confirmed``
        self.trace: list[dict[str, Any]] = []
        self._traced: dict[tuple[int, str], dict[str, Any]] = {}

    def _note(self, cand: Candidate, **values: Any) -> None:
        entry = self._traced.get(cand.key)
        if entry is None:
            entry = self._traced[cand.key] = {"group": cand.group, "candidate": cand.name}
            self.trace.append(entry)
        entry.update(values)

    # ------------------------------------------------------------------ candidates
    def _candidates(self, probing: Probing) -> list[Candidate]:
        maps, informative = probing.maps[0], probing.informative
        h, w = probing.grid
        if min(h, w) < _MIN_SIDE:
            return []
        parts, found = salient_parts(maps, _THRESHOLD)
        parts = _spanning(parts.flatten(0, 1)).view_as(parts)
        found &= informative[:, None]
        fixed = edge_shapes(h, w)
        lines = token_lines(h, w).to(maps.device)
        segments, edges = (t.to(maps.device) for t in edge_segments(h, w))
        out: list[Candidate] = []
        for group, members in probing.groups:
            if group is None:
                continue  # a mark names one class
            mine = found & members[:, None]
            donors = mine.nonzero()  # [k, 2]: (probe, part)
            if len(donors):
                masks = parts[donors[:, 0], donors[:, 1]]
                edge = anchored(masks)
                for on_edge, name in ((True, "map parts on the edge"), (False, "map parts inside")):
                    keep = edge == on_edge
                    if bool(keep.any()):
                        out.append(Candidate(group, name, donors[keep, 0], masks[keep], on_edge))
            rows = members.nonzero().flatten()
            # the donors whose maps light the shape most are screened first
            for name, mask in fixed.items():
                mask = mask.to(maps.device)
                mass = (maps[rows] * mask).flatten(1).sum(1)
                order = rows[mass.argsort(descending=True)]
                out.append(Candidate(group, name, order, mask.expand(len(order), h, w), True))
            for found_here in (
                self._line(probing, group, rows, lines),
                self._segment(probing, group, rows, segments, edges),
            ):
                if found_here is not None:
                    out.append(found_here)
        remembered = {key: i for i, key in enumerate(self.remembered)}
        return sorted(out, key=lambda c: remembered.get(c.key, len(remembered)))

    def _line(
        self, probing: Probing, group: int, rows: torch.Tensor, lines: torch.Tensor
    ) -> Candidate | None:
        """Each donor's token rows and columns unlike any probe of another class along their
        whole length, where each is further from all of them than any of them is from the
        rest (:func:`~lightning_vitrcam.shortcut.likeness.contrast_along`), together; the most
        unlike donors first: stripes at different places in every image, which the maps may
        not light (a saturated prediction gives flat maps) and no fixed shape holds. Together,
        because a pair of stripes carries its class where one of them alone may not; only the
        lines that run the same way as the donor's most unlike one, as stripes do."""
        others = (~probing.cache.predicts(probing.scores)[:, group]).nonzero().flatten()
        if not len(others) or not len(rows):
            return None
        everyone = torch.arange(len(probing.images), device=rows.device)
        contrast, spread = contrast_along(probing.images, everyone, others, lines, probing.grid)
        # a donor's line twice as far from every other probe as they are from each other:
        # where they differ by pixel noise alone, one of 17 probes is the most isolated
        # by chance on one of 16 lines in most checks; a stripe is thousands of times further
        excess_all = contrast / spread.clamp_min(1e-12)
        # the own-class control of a line: a probe of the class without such a line in the
        # shape (a stripe sits at a new place in each image, so another probe's pixels there
        # carry nothing; an object's part that names its class at that place, a lesion's
        # column, carries its class from any probe of the class, and moves it too)
        lined = _on_lines(excess_all > _APART, lines)
        excess = excess_all[rows]
        best, which = excess.max(1)
        # stripes run the same way: the lines parallel to the donor's most unlike one
        h, w = probing.grid
        rows_way = torch.arange(lines.shape[0], device=excess.device) < h
        unlike = (excess > _APART) & (rows_way[None] == (which < h)[:, None])  # [donors, lines]
        # lines over more than half of the image point at no mark, as a map high nearly
        # everywhere points at no part: the donor is unlike the other class everywhere (where
        # that class's probes are near-copies of each other, nothing spreads and every line
        # passes), and pasting most of an image carries its class whatever it shows
        across = torch.where(which < h, h, w)
        keep = unlike.any(1) & (2 * unlike.sum(1) <= across)
        if not bool(keep.any()):
            return None
        order = best[keep].argsort(descending=True)
        masks = _on_lines(unlike[keep], lines)[order]
        return Candidate(
            group, "lines no other class has", rows[keep][order], masks, True, lined=lined
        )

    def _segment(
        self, probing: Probing, group: int, rows: torch.Tensor, segments: torch.Tensor,
        edges: torch.Tensor,
    ) -> Candidate | None:  # fmt: skip
        """Each donor's runs of tokens along one edge (:func:`~lightning_vitrcam.shortcut.
        shapes.edge_segments`) unlike any probe of another class along their whole length,
        as for the lines (twice as far from every one of them as they are from each other),
        together, on the edge of the donor's most unlike run; the most unlike donors first: a
        ruler at another place along another edge in every image, which no fixed shape holds
        in enough donors and no whole line holds at all."""
        others = (~probing.cache.predicts(probing.scores)[:, group]).nonzero().flatten()
        if not len(others) or not len(rows) or not len(segments):
            return None
        everyone = torch.arange(len(probing.images), device=rows.device)
        contrast, spread = contrast_along(probing.images, everyone, others, segments,
                                          probing.grid)  # fmt: skip
        unlike_all = contrast / spread.clamp_min(1e-12) > _APART
        # a strip at another place in each image is also unlike most probes of its own class
        # there; what the class has along its edges anyway (a photograph's content, against
        # the dark edge of a scan) is not
        own = pair_contrast(probing.images, rows, rows, segments, probing.grid)
        apart = (own > _APART * spread.clamp_min(1e-12)).sum(1)  # never from itself
        unusual = 2 * apart > len(rows) - 1
        excess = torch.where(unusual, contrast[rows] / spread.clamp_min(1e-12), 0.0)
        best, which = excess.max(1)
        keep = best > _APART
        if not bool(keep.any()):
            return None
        # the own-class control, as for the lines: a probe of the class with no such run of
        # its own in the shape
        lined = _on_lines(unlike_all, segments)
        on_edge = unlike_all[rows] & unusual & (edges[None] == edges[which][:, None])
        order = best[keep].argsort(descending=True)
        masks = _on_lines(on_edge[keep], segments)[order]
        return Candidate(
            group,
            "runs along an edge no other class has",
            rows[keep][order],
            masks,
            True,
            lined=lined,
            wording="a strip along an edge, at another place in each image",
            needs_own=True,
            turned=True,
        )

    # ------------------------------------------------------------------ pairs
    def _pairs(
        self, probing: Probing, cand: Candidate, per: int, offset: int, into: Sequence[int] = ()
    ) -> dict[str, torch.Tensor]:
        """Donor, recipient, third probe, own-class probe and the pasted region of each pair:
        ``per`` recipients per donor from the ``offset``-th on (other classes, in turn; of the
        classes ``into`` only where it names some); the third probe of any other class."""
        picked = probing.cache.predicts(probing.scores)
        targets = probing.targets.tolist()
        others = interleaved((~picked[:, cand.group]).nonzero().flatten().tolist(), targets)
        recipients = [r for r in others if targets[r] in into] or others
        same_t = picked[:, cand.group].nonzero().flatten()
        same = same_t.tolist()
        rows: list[tuple[int, int, int, int, int]] = []
        donors = cand.donors.tolist()
        # [donors, same]: a probe of the class with a line of its own in the donor's shape
        busy = (
            (cand.lined[same_t][None] & cand.masks[:, None]).flatten(2).any(2).tolist()
            if cand.lined is not None
            else [[False] * len(same)] * len(donors)
        )
        for i, d in enumerate(donors):
            mates = [q for q, b in zip(same, busy[i], strict=True) if q != d and not b]
            for k in range(per):
                if not recipients:
                    break
                r = recipients[(i * per + k + offset) % len(recipients)]
                thirds = [e for e in others if e != r and targets[e] != targets[r]] or [
                    e for e in others if e != r
                ]
                e = thirds[(i + k + offset) % len(thirds)] if thirds else -1
                q = mates[(i + k + offset) % len(mates)] if mates else -1
                rows.append((i, d, r, e, q))
        device = probing.targets.device
        if not rows:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            h, w = probing.grid
            return {"index": empty, "donors": empty, "recipients": empty, "thirds": empty,
                    "mates": empty, "masks": torch.zeros(0, h, w, dtype=torch.bool,
                                                         device=device)}  # fmt: skip
        idx, d, r, e, q = (torch.tensor(v, device=device) for v in zip(*rows, strict=True))
        masks = cand.masks[idx]
        keep = e >= 0
        return {"index": idx[keep], "donors": d[keep], "recipients": r[keep], "thirds": e[keep],
                "mates": q[keep], "masks": masks[keep]}  # fmt: skip

    def _moved(
        self, probing: Probing, images: torch.Tensor, group: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[len(images) // k, k]`` each: whether each copy is predicted as ``group``, its
        score of ``group`` and its top class."""
        predicted, scores = probing.predicted(images)
        return (predicted[:, group].view(-1, k), scores[:, group].view(-1, k),
                scores.argmax(1).view(-1, k))  # fmt: skip

    # ------------------------------------------------------------------ check
    def check(self, probing: Probing, rule: Rule) -> Findings:
        alarm = self.alarm
        tested = 0
        carrying: list[Candidate] = []
        self.trace, self._traced = [], {}
        for cand in self._candidates(probing):
            carriers, n, screened = self._screen(probing, cand)
            tested += n
            count = int(carriers.donors.unique().numel())
            self._note(cand, screened=screened, carriers=count)
            if count >= rule.min_hits:
                # on half of the screened donors or fewer, it may be what some of a class's
                # objects have (the bar of a 7, read as "7" when it completes a 1) or a mark
                # on part of the class: a mark looks the same in every carrier, object parts
                # do not (the comparison of looks decides, as for a mark inside the image)
                few = 2 * count <= screened
                carrying.append(dataclasses.replace(carriers, few=few))
                self._note(cand, few=few)
        findings: list[MarkFinding] = []
        tests: list[PairTest] = []
        done: set[int] = set()
        # each confirmation runs on recipients the screening did not use, so its test holds
        # on its own; the level is shared among the candidates that reach it
        alpha = alarm.max_p / max(1, len(carrying))
        for cand in carrying:
            if cand.group in done or (findings and not alarm.thorough):
                # one finding makes the warning; the alarm's thorough mode tests every class
                continue
            finding, pair_tests, n = self._confirm(probing, rule, cand, alpha)
            tested += n
            tests += pair_tests
            if finding is not None:
                findings.append(finding)
                done.add(cand.group)
        self.remembered = [(int(f.group), f.candidate) for f in findings]  # type: ignore[arg-type]
        best = max((f.strength for f in findings), default=0.0)
        scalars = {"shortcut_mark": best, "shortcut_mark_pairs": float(tested)}
        return Findings(sorted(findings, key=lambda f: -f.strength), tests, scalars)  # type: ignore[arg-type]

    def _screen(self, probing: Probing, cand: Candidate) -> tuple[Candidate, int, int]:
        """The candidate restricted to its *carriers*: the donors whose paste, alone, moved
        one recipient to their class (a mark that only some probes of a class carry is then
        tested on those); a fixed shape is tried on the ``_SCREEN`` donors whose maps light
        it most, the map parts of every donor. The recipients are taken from the other classes
        in turn; a mark may carry its class into some classes and not into others (whose own
        evidence outweighs it), so the donors whose first paste went to another class and
        moved nothing are pasted once more, into the class (or classes) the first pastes
        moved most often. Returns ``(carriers, pastes run, donors screened)``."""
        first = self._paste_once(probing, cand, torch.arange(min(_SCREEN, len(cand.donors))))
        if first is None:
            empty = dataclasses.replace(cand, donors=cand.donors[:0], masks=cand.masks[:0])
            return empty, 0, 0
        index, classes, moved = first
        into = most_moved(classes, moved)
        carried, pastes = index[moved], len(moved)
        again = index[~moved & ~torch.isin(classes, torch.tensor(into, device=classes.device))]
        if into and len(again):
            second = self._paste_once(probing, cand, again, into)
            if second is not None:
                carried = torch.cat([carried, second[0][second[2]]])
                pastes += len(second[2])
        keep = carried.sort().values
        carriers = dataclasses.replace(cand, donors=cand.donors[keep], masks=cand.masks[keep])
        return carriers, pastes, int(cand.donors[index].unique().numel())

    def _paste_once(
        self, probing: Probing, cand: Candidate, rows: torch.Tensor, into: Sequence[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Each of the candidate's donors ``rows`` (indices into ``cand.donors``) pasted into
        one recipient (of the classes ``into``, where it names some): ``(rows pasted, the
        recipients' classes, whether each moved)``."""
        rows = rows.to(cand.donors.device)
        sub = dataclasses.replace(cand, donors=cand.donors[rows], masks=cand.masks[rows])
        pairs = self._pairs(probing, sub, 1, 0, into)
        if not len(pairs["donors"]):
            return None
        d, r, m = pairs["donors"], pairs["recipients"], pairs["masks"]
        moved = self._moved(probing, paste_regions(probing.images, r, d, m), cand.group, 1)[0][:, 0]
        return rows[pairs["index"]], probing.targets[r], moved

    def _confirm(
        self, probing: Probing, rule: Rule, cand: Candidate, alpha: float
    ) -> tuple[MarkFinding | None, list[PairTest], int]:
        alarm, images = self.alarm, probing.images
        # fresh recipients (the screening used each donor's first), enough of them that a
        # mark that carries its class is far from the sign test's edge with few carriers
        per = max(alarm.transplants, math.ceil(_PAIRS / max(1, len(cand.donors))))
        pairs = self._pairs(probing, cand, per, 1)
        n = len(pairs["donors"])
        self._note(cand, pairs=n, confirmed=False)
        if n < rule.min_hits:
            return None, [], 0
        d, r, e, q, m = (pairs[k] for k in ("donors", "recipients", "thirds", "mates", "masks"))
        own = (not cand.anchored or cand.lined is not None) and bool((q >= 0).all())
        if cand.needs_own and not own:
            # every probe of the class has such a run at that place: the class's own content
            # there (the dark edge of a scan), which no probe of the class can control for
            return None, [], 0
        # the pastes first, their controls only where the pastes alone could pass: no control
        # raises the margin above the share of pastes that moved, nor lowers the sign test's
        # p below 2**-moved (a control that moved nothing), so skipping them changes nothing
        moved, score, top = self._moved(probing, paste_regions(images, r, d, m), cand.group, 1)
        flips = moved[:, 0]
        hits = int(flips.sum())  # the pastes that moved, read once
        carriers = d[flips].unique()
        could = (
            float(flips.float().mean()) >= alarm.min_margin
            and 0.5**hits <= alpha
            and len(carriers) >= rule.min_hits
        )
        moved_mask = elsewhere(m)
        if could:
            # the blank paste: the region filled with the probes' mean colour, so that a paste
            # that only removes what the recipient had there (its own mark) does not count
            batch = [
                paste_regions(images, r, d, moved_mask),
                paste_regions(images, r, e, m),
                paste_regions(fill_colour(images).expand_as(images), r, d, m, base=images),
            ]
            # the donor's own pixels from elsewhere brought to the mark's place: where any of
            # the donor's content carries its class there, the place is read, not a mark on it
            here = brought_here(images, d, m)
            arange = torch.arange(len(d), device=d.device)
            batch.append(paste_regions(here, r, arange, m, base=images))
            if own:
                batch.append(paste_regions(images, r, q, m))
            rest = self._moved(probing, torch.stack(batch, 1).flatten(0, 1), cand.group, len(batch))
            moved, score, top = (
                torch.cat([a, b], 1) for a, b in zip((moved, score, top), rest, strict=True)
            )
        run = n * moved.shape[1]
        controls = list(moved[:, 1:].unbind(1))
        counts = [int(c.sum()) for c in controls]  # each control's moves, read once
        self._note(cand, moved=hits, controls=counts)
        shown = [c.tolist() for c in controls[:2]] if could else [[None] * n] * 2
        tests = [
            PairTest("mark", di, ri, cand.group, fi, ci, None, oi)
            for di, ri, fi, ci, oi in zip(d.tolist(), r.tolist(), flips.tolist(), *shown,
                                          strict=True)
        ]  # fmt: skip
        if not could:
            return None, tests, run
        moved_more = min(margin(flips, c) for c in controls)
        p = max(sign_test(flips, c) for c in controls)
        confirmed = moved_more >= alarm.min_margin and p <= alpha
        alike = unlike = 0
        if confirmed and (not cand.anchored or cand.few or cand.turned):
            alike, unlike = self._likeness(probing, cand, carriers, r[flips], d[flips], m[flips])
            self._note(cand, alike=alike, unlike=unlike)
            told = alike + unlike
            closer = torch.arange(told) < alike
            # a mark is found near-exactly where it is: twice as close in a carrier at most of
            # the pastes that moved, not only more often than the other way round; what a
            # class's objects share (a lesion's blotches) is found at much the same distance
            # in both at most of them, and only the few told apart lean to the carriers
            confirmed = (
                2 * alike > hits
                and margin(closer, ~closer) >= alarm.min_margin
                and sign_test(closer, ~closer) <= alarm.max_p
            )
        if not confirmed:
            return None, tests, run
        self._note(cand, confirmed=True)
        region = _typical(cand.masks[pairs["index"][flips]])
        finding = MarkFinding(
            group=cand.group,
            probes=int((probing.targets == cand.group).sum()),
            grid=probing.grid,
            candidate=cand.name,
            shape=cand.wording or describe(region),
            region=tuple(region.flatten().nonzero().flatten().tolist()),
            pairs=n,
            flips=hits,
            control_flips=counts[0],
            class_flips=counts[1],
            blank_flips=counts[2],
            brought_flips=counts[3],
            own_flips=counts[4] if own else None,
            carriers=len(carriers),
            alike=alike,
            unlike=unlike,
            examples=_examples(probing, pairs, moved, score, top, moved_mask),
        )
        return finding, tests, run

    def _likeness(
        self, probing: Probing, cand: Candidate, carriers: torch.Tensor,
        recipients: torch.Tensor, donors: torch.Tensor, masks: torch.Tensor,
    ) -> tuple[int, int]:  # fmt: skip
        """For each paste that moved its recipient: the donor's region looked for anywhere in
        another carrier and, as the control, anywhere in that recipient (a probe of another
        class), in every orientation of both where the candidate is ``turned``, at up to
        ``_EDGE_PIXELS`` a token where it is ``anchored``: ``(closer, further)``, the
        comparisons that find it ``_CLOSER`` times closer in the carrier, and in the recipient,
        in colour or in detail and not the reverse in the other reading (the rest tell them
        apart too little, or the two readings disagree)."""
        mates = carriers.unique()
        if len(mates) < 2:
            return 0, 0
        device = probing.targets.device
        # a mark in pieces (two stripes) is compared by its first piece: the box of the whole
        # would hold whatever lies between the pieces, which differs from image to image
        labels = components(masks)
        first_label = torch.where(labels >= 0, labels, labels.new_tensor(masks[0].numel()))
        masks = labels == first_label.flatten(1).amin(1)[:, None, None]
        ys = masks.any(2)
        xs = masks.any(1)
        first = lambda t: t.float().argmax(1)
        last = lambda t: t.shape[1] - t.flip(1).float().argmax(1)
        boxes = torch.stack([first(ys), last(ys), first(xs), last(xs)], 1).long()
        # the other carriers in turn (never the donor itself); both sides in one call per
        # reading, so the probes are resized and normalised once for each
        at = torch.searchsorted(mates, donors)
        step = torch.arange(len(donors), device=device) % (len(mates) - 1)
        partners = mates[(at + 1 + step) % len(mates)]
        h, w = probing.grid
        whole = torch.tensor([[0, h, 0, w]], device=device).expand(2 * len(donors), 4)
        # both read what the donor's region has that the probes' typical image lacks: a ruler
        # in a corner box is a few of its pixels, and the box's background, alike in every
        # image, would decide its plain median. The typical image is every probe's per-pixel
        # median, which neither compared image sets more than the other: the two distances
        # are exchangeable where the region is no more like the carriers than the recipients
        typical = probing.images.median(dim=0).values
        images, n = probing.images, len(probing.images)
        if cand.turned:
            # both sides looked for in every orientation of the compared image: the control
            # gets the same chances, so the two distances stay exchangeable
            images = orientations(images)
        k = len(images) // n
        shift = (torch.arange(k, device=device) * n).repeat_interleave(2 * len(donors))
        # a mark is the same pixels in its carriers: its colours (a sticker, a band), read
        # relative to each image's typical colour, or its fine structure (a tag's one-pixel
        # strokes, which that centring shifts by the shade of each image's background); found
        # twice as close in one reading, and not the other way round in the other, counts;
        # the rule is the same both ways, so the two counts stay exchangeable
        closer = further = torch.zeros(len(donors), dtype=torch.bool, device=device)
        for reading in ({"centre": True}, {"detail": True}):
            own, other = region_distance(
                images, donors.repeat(2 * k), boxes.repeat(2 * k, 1),
                torch.cat([partners, recipients]).repeat(k) + shift, whole.repeat(k, 1),
                probing.grid, reference=typical, **reading,
                **({"token_pixels": _EDGE_PIXELS} if cand.anchored else {}),
            ).view(k, 2, -1).amin(0)  # fmt: skip
            closer = closer | (_CLOSER * own < other)
            further = further | (_CLOSER * other < own)
        return int((closer & ~further).sum()), int((further & ~closer).sum())

    def state_dict(self) -> dict[str, Any]:
        return {"remembered": [[g, n] for g, n in self.remembered]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.remembered = [(int(g), str(n)) for g, n in state.get("remembered", [])]


def most_moved(classes: torch.Tensor, moved: torch.Tensor) -> tuple[int, ...]:
    """The classes (of ``classes``, each paste's recipient's) whose pastes ``moved`` the most
    often, as a share of the pastes into each; none where none moved.

    Example:
        >>> most_moved(torch.tensor([0, 2, 0, 2]), torch.tensor([1, 1, 0, 0]).bool())
        (0, 2)
        >>> most_moved(torch.tensor([0, 2, 0, 2, 0]), torch.tensor([1, 1, 1, 0, 0]).bool())
        (0,)
    """
    if not bool(moved.any()):
        return ()
    kinds, which = classes.unique(return_inverse=True)
    zeros = torch.zeros(len(kinds), device=classes.device)
    pastes = zeros.index_add(0, which, torch.ones_like(moved, dtype=torch.float))
    share = zeros.index_add(0, which, moved.float()) / pastes
    return tuple(kinds[share == share.max()].tolist())


def interleaved(rows: list[int], classes: Sequence[int]) -> list[int]:
    """``rows`` in turn by class (``classes[r]``): the first of each class, then the second of
    each, ...; classes in the order they first appear. Recipients taken in this order span
    every other class from the first pastes on (probes come grouped by class).

    Example:
        >>> interleaved([3, 4, 5, 6, 7], [0, 0, 0, 1, 1, 1, 2, 2])
        [3, 6, 4, 7, 5]
    """
    rank: dict[int, int] = {}
    order = {c: i for i, c in enumerate(dict.fromkeys(classes[r] for r in rows))}
    keyed = []
    for r in rows:
        c = classes[r]
        keyed.append((rank.get(c, 0), order[c], r))
        rank[c] = rank.get(c, 0) + 1
    return [r for *_, r in sorted(keyed)]


def _on_lines(chosen: torch.Tensor, lines: torch.Tensor) -> torch.Tensor:
    """``[B, h, w]``: the tokens of each row's chosen lines (``chosen`` ``[B, L]`` of the
    token lines ``lines`` ``[L, h, w]``), together."""
    return (chosen[:, :, None, None] & lines[None]).any(1)


def _typical(masks: torch.Tensor) -> torch.Tensor:
    """The most frequent of the regions ``[k, h, w]``."""
    values, counts = masks.flatten(1).unique(dim=0, return_counts=True)
    return values[counts.argmax()].view(masks.shape[1:])


def _examples(
    probing: Probing, pairs: dict[str, torch.Tensor], moved: torch.Tensor, score: torch.Tensor,
    top: torch.Tensor, moved_mask: torch.Tensor, most: int = 4,
) -> tuple[Example, ...]:  # fmt: skip
    """Up to ``most`` pastes that moved their recipient (one per donor), with what the paste
    and its two controls made the model say."""
    flat = lambda m: tuple(m.flatten().nonzero().flatten().tolist())
    out, seen = [], set()
    for i in moved[:, 0].nonzero().flatten().tolist():
        d = int(pairs["donors"][i])
        if d in seen:
            continue
        seen.add(d)
        out.append(
            Example(
                probe=d,
                target=int(probing.targets[d]),
                before=float(probing.p0[d]),
                partner=int(pairs["recipients"][i]),
                region=flat(pairs["masks"][i]),
                moved_to=int(top[i, 0]),
                moved_p=float(score[i, 0]),
                control_region=flat(moved_mask[i]),
                control_partner=int(pairs["recipients"][i]),
                control_to=int(top[i, 1]),
                control_p=float(score[i, 1]),
                other=int(pairs["thirds"][i]),
                other_to=int(top[i, 2]),
                other_p=float(score[i, 2]),
            )
        )
        if len(out) == most:
            break
    return tuple(out)
