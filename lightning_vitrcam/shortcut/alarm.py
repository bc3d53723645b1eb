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
from lightning_vitrcam.shortcut import fixed_place as _fixed_place  # noqa: F401
from lightning_vitrcam.shortcut.evidence import EVIDENCE, Evidence, Probing
from lightning_vitrcam.shortcut.interventions import CopyCache
from lightning_vitrcam.shortcut.proposals import probe_groups
from lightning_vitrcam.shortcut.report import Suspect
from lightning_vitrcam.shortcut.rule import PlaceTest, Rule

__all__ = ["ShortcutAlarm", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """One check's result: the confirmed suspects (most convincing first) and each kind's
    continuous scalars (e.g. ``shortcut_drop``), logged under ``vitrcam/``."""

    suspects: list[Suspect] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)

    @property
    def warns(self) -> bool:
        return bool(self.suspects)


class ShortcutAlarm:
    """Finds what the model's predictions hang on instead of the object.

    Args:
        min_drop: relative drop of the predicted-class probability that counts as a hit.
        min_share: share of a group's probes that must be hit (half: a model that uses a
            shortcut may already answer from the object on up to half of its probes).
        min_hits: fewest hit probes that confirm a place, whatever the group's size (3: a
            place never rests on two probes).
        min_group: smallest group of probes a per-class candidate is tested on.
        search: also propose the places a hierarchical occlusion search finds, at checks
            where nothing the maps or the memory propose is confirmed (it finds a cue
            whichever block reads it, where the explained block's maps are flat).
        search_always: search at every check (the warning may then list more places).
        max_box: side, in tokens, of the boxes tested besides single tokens (a cue larger
            than a patch survives the occlusion of any one of its tokens); 1: tokens only.
        kinds: the kinds of evidence to run, by name (default: every registered kind).

    Why these defaults, and what the alarm cannot see: ``docs/shortcut_alarm.md``.

    Example:
        >>> alarm = ShortcutAlarm(min_drop=0.6)
        >>> alarm.rule.min_drop, alarm.state_dict()
        (0.6, {'place': {'candidates': []}})
    """

    def __init__(
        self,
        min_drop: float = 0.5,
        min_share: float = 0.5,
        min_hits: int = 3,
        min_group: int = 3,
        search: bool = True,
        search_always: bool = False,
        max_box: int = 2,
        kinds: Sequence[str] | None = None,
    ) -> None:
        self.rule = Rule(min_drop, min_share, min_hits)
        if max_box < 1:
            raise ValueError(f"max_box must be at least 1 (single tokens), got {max_box}")
        if min_group < 1:
            raise ValueError(f"min_group must be at least 1, got {min_group}")
        names = list(EVIDENCE) if kinds is None else list(kinds)
        unknown = [k for k in names if k not in EVIDENCE]
        if unknown or not names:
            raise ValueError(
                f"kinds must name at least one of the registered kinds of evidence"
                f" {sorted(EVIDENCE)}, got {names}"
            )
        self.min_group = min_group
        self.search = search
        self.search_always = search_always
        self.max_box = max_box
        self.kinds: dict[str, Evidence] = {name: EVIDENCE[name](self) for name in names}
        #: whether the last :meth:`check` ran the occlusion search
        self.searched = False
        #: every place the last :meth:`check` tested, with each tested probe's drop (and,
        #: where the place had to be sufficient too, what it kept alone)
        self.last_tests: list[PlaceTest] = []

    def check(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        maps: Sequence[torch.Tensor],
        targets: torch.Tensor,
        informative: torch.Tensor,
        logits: torch.Tensor | None = None,
    ) -> Verdict:
        """Run every kind of evidence on ``images`` (the probes).

        ``forward`` gives logits for a batch of images (and bounds its own batch size),
        ``score`` per-class scores from logits (the explainer's ``score_fn``); ``maps`` is one
        or more ``[N, h, w]`` batches of the probes' maps, ``targets`` the explained classes,
        ``informative`` ``[N]`` the maps that are not flat. ``logits``, when given, are
        ``forward(images)`` already computed by the same route (e.g. the explanation's
        unmasked logits when ``forward`` is
        :meth:`~lightning_vitrcam.ViTReciproCAM.predict`), saving the probes' own forward.
        """
        grid: tuple[int, int] = tuple(maps[0].shape[-2:])  # type: ignore[assignment]
        cache = CopyCache(forward, score, images, targets, grid)
        p0 = cache.scores(images, targets) if logits is None else cache.of_logits(logits, targets)
        probing = Probing(
            images=images,
            targets=targets,
            p0=p0,
            maps=maps,
            informative=informative,
            grid=grid,
            groups=probe_groups(targets, self.min_group),
            cache=cache,
        )
        findings = [kind.check(probing, self.rule) for kind in self.kinds.values()]
        self.searched = probing.searched
        self.last_tests = [t for f in findings for t in f.tests]
        scalars = {k: v for f in findings for k, v in f.scalars.items()}
        return Verdict([s for f in findings for s in f.suspects], scalars)

    def state_dict(self) -> dict[str, Any]:
        """Each kind's state (e.g. the places remembered for the next evaluation)."""
        return {name: kind.state_dict() for name, kind in self.kinds.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, kind in self.kinds.items():
            if name in state:
                kind.load_state_dict(state[name])
