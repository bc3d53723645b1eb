"""What every kind of evidence reads, and how a kind plugs into the alarm.

:class:`ShortcutAlarm <lightning_vitrcam.shortcut.ShortcutAlarm>` builds one
:class:`Probing` per check (the probes, their explained classes and scores, their maps, the
groups, the copy cache and, when some kind asks for it, the occlusion search) and hands it to
each kind of :class:`Evidence` it runs. A kind is one class registered under a name with
:func:`register_evidence`; it returns :class:`Findings` (suspects, records and its continuous
scalars) and may keep state across evaluations (``state_dict``).

Example:
    >>> {"place", "region", "colour", "background"} <= set(EVIDENCE)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lightning_vitrcam.shortcut.interventions import CopyCache
from lightning_vitrcam.shortcut.proposals import Group, search_path
from lightning_vitrcam.shortcut.report import Finding
from lightning_vitrcam.shortcut.rule import PlaceTest, Rule

__all__ = [
    "EVIDENCE",
    "Evidence",
    "Findings",
    "PairTest",
    "Probing",
    "RegionTest",
    "register_evidence",
]


@dataclass
class Probing:
    """One check's probes: ``images``, the explained class ``targets``, every class's
    ``scores`` ``[N, C]`` and the targets' ``p0``, the ViT-ReciproCAM ``maps`` (one or more
    batches) and which are ``informative``, the token ``grid``, the probe ``groups`` (all,
    and each class with enough probes) and the ``cache`` that scores every distinct copy
    once, and the object ``masks`` when the batches carry them."""

    images: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    p0: torch.Tensor
    maps: Sequence[torch.Tensor]
    informative: torch.Tensor
    grid: tuple[int, int]
    groups: list[Group]
    cache: CopyCache
    masks: torch.Tensor | None = None
    _paths: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def searched(self) -> bool:
        """Whether the occlusion search ran in this check (for any probe)."""
        return bool(self._paths)

    def search(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The occlusion-search paths (``[len(rows), levels, 4]``) of ``rows`` (default: every
        probe), each probe's run once per check on first use (see
        :func:`~lightning_vitrcam.shortcut.proposals.search_path`)."""
        if rows is None:
            rows = torch.arange(len(self.targets), device=self.targets.device)
        todo = [r for r in rows.tolist() if r not in self._paths]
        if todo:
            new = torch.tensor(todo, device=self.targets.device)
            for r, path in zip(todo, search_path(self.p0, self.cache, new), strict=True):
                self._paths[r] = path
        return torch.stack([self._paths[r] for r in rows.tolist()])

    def predicted(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predicted, scores)``, each ``[B, C]``: the classes each image is predicted as
        (bool) and every class's score (one forward)."""
        scores = self.cache.score(self.cache.forward(images).float())
        return self.cache.predicts(scores), scores

    def rows(self, group: int | None) -> torch.Tensor:
        """The probe rows of ``group``."""
        return dict(self.groups)[group].nonzero().flatten()


@dataclass(frozen=True)
class RegionTest:
    """One probe's decisive-region test: its explained class, the place occluded (``box``:
    its smallest necessary place, else the most damaging one tested), the relative drop,
    whether it is necessary."""

    probe: int
    target: int
    box: tuple[int, int, int, int]
    drop: float
    necessary: bool
    kind: str = "region"


@dataclass(frozen=True)
class PairTest:
    """One intervention between two probes and its control (``kind``: ``"transplant"``,
    ``"colour"`` or ``"background"``): the donor's explained class, whether the recipient
    was moved to it, and whether the control moved it (``None``: not run, where the
    interventions alone could not pass the test; the transplant's ``box``: the donor's
    region; ``class_control_moved``: whether another class's decisive region moved it)."""

    kind: str
    donor: int
    recipient: int
    donor_target: int
    moved: bool
    control_moved: bool | None
    box: tuple[int, int, int, int] | None = None
    class_control_moved: bool | None = None


@dataclass
class Findings:
    """What one kind of evidence found in one check: its confirmed findings, the records of
    every test it ran (for study and replay) and its continuous scalars."""

    suspects: list[Finding] = field(default_factory=list)
    tests: list[PlaceTest | RegionTest | PairTest] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)


class Evidence:
    """One kind of evidence the alarm runs (subclass, and register it by name).

    ``alarm`` is the :class:`~lightning_vitrcam.shortcut.ShortcutAlarm` that owns the
    settings; a kind reads the ones it needs from it.
    """

    name: ClassVar[str] = ""

    def __init__(self, alarm: Any) -> None:
        self.alarm = alarm

    def check(self, probing: Probing, rule: Rule) -> Findings:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


#: the kinds of evidence by name, in the order the alarm runs them
EVIDENCE: dict[str, type[Evidence]] = {}


def register_evidence(name: str) -> Callable[[type[Evidence]], type[Evidence]]:
    """Register a kind of evidence under ``name`` (``ShortcutAlarm(kinds=[...])`` picks by
    name)."""

    def add(cls: type[Evidence]) -> type[Evidence]:
        cls.name = name
        EVIDENCE[name] = cls
        return cls

    return add
