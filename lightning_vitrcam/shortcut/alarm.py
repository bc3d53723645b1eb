"""The ``possible shortcut`` alarm (beyond the paper): propose, score, judge, remember.

:class:`ShortcutAlarm` owns the settings and runs each registered kind of evidence
(:mod:`~lightning_vitrcam.shortcut.evidence`) on the probes of one evaluation; how each kind
works and how it was measured: ``docs/shortcut_alarm.md``. The ViT-ReciproCAM pictures are
unchanged by it; these tests are the library's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# each kind of evidence registers itself when imported
from lightning_vitrcam.shortcut import background as _background  # noqa: F401
from lightning_vitrcam.shortcut import colour as _colour  # noqa: F401
from lightning_vitrcam.shortcut import fixed_place as _fixed_place  # noqa: F401
from lightning_vitrcam.shortcut import mark as _mark  # noqa: F401
from lightning_vitrcam.shortcut import region as _region  # noqa: F401
from lightning_vitrcam.shortcut.evidence import EVIDENCE, Evidence, PairTest, Probing, RegionTest
from lightning_vitrcam.shortcut.interventions import CopyCache, argmax_predicts
from lightning_vitrcam.shortcut.proposals import probe_groups
from lightning_vitrcam.shortcut.report import Finding
from lightning_vitrcam.shortcut.rule import PlaceTest, Rule, learned

#: the kinds of evidence run by default ("place", the fixed-place test with its border and
#: sufficiency conditions, is opt-in: "region" tests fixed places too, by transplant)
DEFAULT_KINDS: tuple[str, ...] = ("region", "mark", "colour", "background")

__all__ = ["DEFAULT_KINDS", "ShortcutAlarm", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """One check's result: the findings of every kind confirmed at this check (``suspects``,
    strongest first), the findings the alarm warns of (``raised``: this check's, once
    ``confirmations`` of the last ``window`` tested checks confirmed a finding; or, where this
    check confirmed nothing but the alarm still stands, the last confirming check's:
    ``held``), each kind's scalars (e.g. ``shortcut_mark``), logged under ``vitrcam/``, and the
    probes the raised findings' examples index (``images``, ``masks``: the alarm's own probes
    of the check that confirmed them, which the evidence picture is drawn on)."""

    suspects: list[Finding] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    images: torch.Tensor | None = field(default=None, repr=False)
    masks: torch.Tensor | None = field(default=None, repr=False)
    raised: list[Finding] = field(default_factory=list)
    held: bool = False

    @property
    def warns(self) -> bool:
        return bool(self.raised)


class ShortcutAlarm:
    """Finds what the model's predictions hang on instead of the object.

    Args:
        min_drop: relative drop of the predicted-class probability that makes a place
            necessary to a probe (a probe is *hit*).
        min_share: share of a group's probes that must be hit (half: a model that uses a
            shortcut may already answer from the object on up to half of its probes).
        min_hits: fewest probes (and donors, and recipients) any evidence rests on, whatever
            the group's size (3: never two).
        min_group: smallest group of probes a per-class test is run on.
        min_margin: how many more recipients (as a share) an intervention must move to the
            donor's class than its same-size control moves: a region pasted into probes of
            other classes, a colour swap, a background swap (``"region"``, ``"colour"``,
            ``"background"``).
        max_p: the largest p-value of an exact sign test on the pairs the intervention and its
            control tell apart (only one of them moved the recipient) at which that margin
            counts: an effect of a few pairs is not evidence.
        transplants: recipients per donor of a region (colour and background test one pair
            per probe; a mark gets as many as its confirmation needs).
        search: run the hierarchical occlusion search for the probes whose decisive place
            the maps and the memory do not find (it finds a cue whichever block reads it,
            where the explained block's maps are flat).
        search_always: search at every check, also where the maps' and the remembered
            places already confirm a finding (the default searches only when they do not).
        search_probes: at most this many probes are searched per check, in turn (16
            occluded copies a probe on 8x8 tokens).
        max_box: side, in tokens, of the largest place tested (a cue larger than a patch
            survives the occlusion of any one of its tokens); 1: tokens only.
        kinds: the kinds of evidence to run, by name, in this order (default
            ``DEFAULT_KINDS``: ``"region"``, ``"mark"``, ``"colour"``, ``"background"``;
            ``"place"`` is the fixed-place test).
        probes: the alarm's own probes per check, drawn from the validation data by the
            callback, stratified by label and rotated over the checks
            (:class:`~lightning_vitrcam.alarm_probes.AlarmProbes`); 0: the pictures' probes.
        per_class: fewest probes of each class a check tests (``probes // per_class``
            classes per check).
        thorough: run every kind at every check; by default the kinds after the first that
            confirms a finding are skipped (their forwards saved, their scalars not logged
            at that evaluation).
        confirmations: the checks in a row that must confirm a finding before the alarm
            warns, and that must confirm nothing before it stops (2: a shortcut holds again
            on the next check's fresh probes and pairs; a partial cue a check's probes miss
            once does not silence it). A check whose model has not learned tests nothing and
            counts neither way. 1 warns at each confirmation only (a one-off check such as
            ``audit`` does).
        window: the tested checks, up to this one, among which ``confirmations`` must have
            confirmed a finding for a confirming check to raise the alarm (``window ==
            confirmations``: in a row; 3 with 2: a partial cue that one check's probes miss
            between two that find it is warned about too). Stopping still takes
            ``confirmations`` checks in a row that confirm nothing.

    Why these defaults, and what the alarm cannot see: ``docs/shortcut_alarm.md``.

    Example:
        >>> alarm = ShortcutAlarm(min_drop=0.6, kinds=["region", "colour"])
        >>> alarm.rule.min_drop, alarm.state_dict()["region"]
        (0.6, {'places': [], 'checks': 0})
        >>> {k: v for k, v in alarm.state_dict().items() if k not in alarm.kinds}
        {'streak': 0, 'misses': 0, 'standing': False, 'recent': []}
    """

    def __init__(
        self,
        min_drop: float = 0.5,
        min_share: float = 0.5,
        min_hits: int = 3,
        min_group: int = 3,
        min_margin: float = 0.5,
        max_p: float = 0.01,
        transplants: int = 2,
        search: bool = True,
        search_always: bool = False,
        search_probes: int = 6,
        max_box: int = 2,
        kinds: Sequence[str] | None = None,
        probes: int = 32,
        per_class: int = 4,
        thorough: bool = False,
        confirmations: int = 2,
        window: int = 2,
    ) -> None:
        self.rule = Rule(min_drop, min_share, min_hits)
        if max_box < 1:
            raise ValueError(f"max_box must be at least 1 (single tokens), got {max_box}")
        if min_group < 1:
            raise ValueError(f"min_group must be at least 1, got {min_group}")
        if not 0.0 < min_margin <= 1.0:
            raise ValueError(f"min_margin must be in (0, 1], got {min_margin}")
        if not 0.0 < max_p <= 1.0:
            raise ValueError(f"max_p must be in (0, 1], got {max_p}")
        if transplants < 1:
            raise ValueError(f"transplants must be at least 1, got {transplants}")
        if probes < 0 or per_class < 1:
            raise ValueError(
                f"probes must be >= 0 (0: the pictures' probes) and per_class >= 1, got"
                f" {probes} and {per_class}"
            )
        if confirmations < 1:
            raise ValueError(
                f"confirmations must be at least 1 (1: warn at the first confirmation), got"
                f" {confirmations}"
            )
        if window < confirmations:
            raise ValueError(
                f"window must be at least confirmations ({confirmations}): the confirmations"
                f" are counted among the last `window` tested checks, got {window}"
            )
        names = list(DEFAULT_KINDS) if kinds is None else list(kinds)
        unknown = [k for k in names if k not in EVIDENCE]
        if unknown or not names:
            raise ValueError(
                f"kinds must name at least one of the registered kinds of evidence"
                f" {sorted(EVIDENCE)}, got {names}"
            )
        self.min_group = min_group
        self.min_margin = min_margin
        self.max_p = max_p
        self.transplants = transplants
        self.search = search
        self.search_always = search_always
        if search_probes < 1:
            raise ValueError(f"search_probes must be at least 1, got {search_probes}")
        self.search_probes = search_probes
        self.max_box = max_box
        self.probes, self.per_class = probes, per_class
        self.thorough = thorough
        self.confirmations = confirmations
        self.window = window
        #: whether each of the last ``window`` tested checks confirmed a finding, oldest first
        self.recent: list[bool] = []
        #: the checks in a row, up to the last one, that confirmed a finding
        self.streak = 0
        #: the checks in a row, up to the last one, that confirmed nothing
        self.misses = 0
        #: whether the alarm warns: raised by ``confirmations`` confirmations among the last
        #: ``window`` tested checks, dropped by as many checks in a row that confirm nothing
        self.standing = False
        # the last verdict that raised findings, kept only while the alarm stands: what it
        # repeats at a check that confirms nothing (its findings index its own probes)
        self._raised: Verdict | None = None
        self.kinds: dict[str, Evidence] = {name: EVIDENCE[name](self) for name in names}
        #: whether the last :meth:`check` ran the occlusion search
        self.searched = False
        #: whether the last check's model had learned enough for the alarm to test it (see
        #: ``right`` in :meth:`check`): an untrained model follows whatever varies most
        self.learned = True
        #: the records of every test the last :meth:`check` ran, of every kind (a fixed
        #: place's :class:`PlaceTest`, a probe's :class:`RegionTest`, an intervention's
        #: :class:`PairTest`), for study and replay
        self.last_tests: list[PlaceTest | RegionTest | PairTest] = []
        #: the last check's verdict (every confirmed finding, strongest of each kind first)
        self.last_verdict = Verdict()

    @torch.no_grad()
    def check(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        maps: Sequence[torch.Tensor],
        targets: torch.Tensor,
        informative: torch.Tensor,
        logits: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        predicts: Callable[[torch.Tensor], torch.Tensor] = argmax_predicts,
        right: tuple[torch.Tensor, float] | None = None,
    ) -> Verdict:
        """Run every kind of evidence on ``images`` (the probes).

        ``forward`` gives logits for a batch of images (and bounds its own batch size),
        ``score`` per-class scores from logits (the explainer's ``score_fn``); ``maps`` is one
        or more ``[N, h, w]`` batches of the probes' maps, ``targets`` the explained classes,
        ``informative`` ``[N]`` the maps that are not flat. ``logits``, when given, are
        ``forward(images)`` already computed by the same route (e.g. the explanation's
        unmasked logits when ``forward`` is
        :meth:`~lightning_vitrcam.ViTReciproCAM.predict`), saving the probes' own forward.
        ``masks`` ``[N, H, W]``: the probes' object masks, when known; ``predicts`` maps scores
        ``[B, C]`` to the predicted classes ``[B, C]`` bool (default: the arg-max).
        ``right``, where the probes have labels: ``([N] bool, chance)``, whether each probe's
        prediction agrees with its label and the share the best constant guess gets right; a
        model that is not at least ``min_margin`` of the way from that guess to all right
        has learned nothing a shortcut could be: nothing is tested (``learned`` is False and
        the scalar ``shortcut_learned`` 0).
        """
        self.learned = right is None or learned(
            int(right[0].sum()), right[0].numel(), right[1], self.min_margin
        )
        if not self.learned:
            # nothing tested: no evidence either way, so the row neither grows nor breaks
            self.searched, self.last_tests = False, []
            scalars = {"shortcut_learned": 0.0, "shortcut_streak": float(self.streak)}
            self.last_verdict = Verdict([], scalars, images, masks)
            return self.last_verdict
        grid: tuple[int, int] = tuple(maps[0].shape[-2:])  # type: ignore[assignment]
        cache = CopyCache(forward, score, images, targets, grid, predicts)
        scores = score((forward(images) if logits is None else logits).float())
        p0 = scores.gather(1, targets[:, None]).squeeze(1)
        probing = Probing(
            images=images,
            targets=targets,
            scores=scores,
            p0=p0,
            maps=maps,
            informative=informative,
            grid=grid,
            groups=probe_groups(targets, self.min_group),
            cache=cache,
            masks=masks,
        )
        findings = []
        for kind in self.kinds.values():
            # one confirmed finding makes the warning: the later kinds' forwards are saved
            # unless every kind's evidence is asked for
            if not self.thorough and any(f.suspects for f in findings):
                break
            findings.append(kind.check(probing, self.rule))
        self.searched = probing.searched
        self.last_tests = [t for f in findings for t in f.tests]
        scalars = {"shortcut_learned": 1.0}
        scalars.update({k: v for f in findings for k, v in f.scalars.items()})
        # the kinds in the order they run (the most local first: a small region, a mark of
        # any shape, the colour, the background), each kind's strongest first
        order = {name: i for i, name in enumerate(self.kinds)}
        suspects = sorted(
            (s for f in findings for s in f.suspects),
            key=lambda s: (order.get(s.kind, len(order)), -s.strength),
        )
        self.last_verdict = self._judge(suspects, scalars, images, masks)
        return self.last_verdict

    def _judge(
        self, suspects: list[Finding], scalars: dict[str, float], images: torch.Tensor,
        masks: torch.Tensor | None,
    ) -> Verdict:  # fmt: skip
        """Raised at a check that confirms a finding once ``confirmations`` of the last
        ``window`` tested checks have (in a row by default), dropped once ``confirmations``
        checks in a row confirm nothing: each check's probes and pairs are fresh, so a chance
        confirmation (or an object part a few probes show) rarely repeats, while a shortcut
        the model keeps using does; and a cue on part of a class that one check's probes
        happen to miss is not taken for a model that stopped using it."""
        self.recent = [*self.recent, bool(suspects)][-self.window :]
        if suspects:
            self.streak, self.misses = self.streak + 1, 0
            self.standing = self.standing or sum(self.recent) >= self.confirmations
        else:
            self.streak, self.misses = 0, self.misses + 1
            self.standing = self.standing and self.misses < self.confirmations
        scalars["shortcut_streak"] = float(self.streak)
        if not self.standing:
            self._raised = None
            return Verdict(suspects, scalars, images, masks)
        if suspects:
            self._raised = Verdict(suspects, scalars, images, masks, suspects)
            return self._raised
        if self._raised is None:  # resumed while standing: the findings were not saved
            return Verdict([], scalars, images, masks)
        held = self._raised
        return Verdict([], scalars, held.images, held.masks, held.raised, held=True)

    @property
    def focus(self) -> list[int]:
        """The classes the last check confirmed a finding on, or that the alarm stands on
        (also across a check that tested nothing): tested again first at the next check."""
        standing = self._raised.raised if self._raised is not None else []
        found = [*self.last_verdict.suspects, *standing]
        return list(dict.fromkeys(s.group for s in found if s.group is not None))

    def state_dict(self) -> dict[str, Any]:
        """Each kind's state (e.g. the places remembered for the next evaluation), the checks
        in a row that confirmed a finding (``"streak"``) and that confirmed nothing
        (``"misses"``), and whether the alarm stands (``"standing"``; its findings are not
        saved: a standing alarm resumed repeats nothing until a check confirms again)."""
        state: dict[str, Any] = {name: kind.state_dict() for name, kind in self.kinds.items()}
        return {**state, "streak": self.streak, "misses": self.misses, "standing": self.standing,
                "recent": list(self.recent)}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, kind in self.kinds.items():
            if name in state:
                kind.load_state_dict(state[name])
        self.streak = int(state.get("streak", 0))
        self.misses = int(state.get("misses", 0))
        self.standing = bool(state.get("standing", False))
        # saved before the window: the row of confirmations is what the streak counted
        row = [True] * min(self.streak, self.window)
        self.recent = [bool(r) for r in state.get("recent", row)][-self.window :]
        self._raised = None
