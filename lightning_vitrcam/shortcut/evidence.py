"""What every kind of evidence reads, and how a kind plugs into the alarm.

:class:`ShortcutAlarm <lightning_vitrcam.shortcut.ShortcutAlarm>` builds one
:class:`Probing` per check (the probes, their explained classes and scores, their maps, the
groups, the copy cache and, when some kind asks for it, the occlusion search) and hands it to
each kind of :class:`Evidence` it runs. A kind is one class registered under a name with
:func:`register_evidence`; it returns :class:`Findings` (suspects, records and its continuous
scalars) and may keep state across evaluations (``state_dict``).

Example:
    >>> sorted(EVIDENCE) >= ["place"]
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lightning_vitrcam.shortcut.interventions import CopyCache
from lightning_vitrcam.shortcut.proposals import Group, search_path
from lightning_vitrcam.shortcut.report import Suspect
from lightning_vitrcam.shortcut.rule import PlaceTest, Rule

__all__ = ["EVIDENCE", "Evidence", "Findings", "Probing", "register_evidence"]


@dataclass
class Probing:
    """One check's probes: ``images``, the explained class ``targets`` and their scores
    ``p0``, the ViT-ReciproCAM ``maps`` (one or more batches) and which are ``informative``,
    the token ``grid``, the probe ``groups`` (all, and each class with enough probes) and the
    ``cache`` that scores every distinct copy once."""

    images: torch.Tensor
    targets: torch.Tensor
    p0: torch.Tensor
    maps: Sequence[torch.Tensor]
    informative: torch.Tensor
    grid: tuple[int, int]
    groups: list[Group]
    cache: CopyCache
    _path: torch.Tensor | None = field(default=None, repr=False)

    @property
    def searched(self) -> bool:
        """Whether the occlusion search ran in this check."""
        return self._path is not None

    def search(self) -> torch.Tensor:
        """Each probe's occlusion-search path (``[N, levels, 4]``), run once per check on
        first use (see :func:`~lightning_vitrcam.shortcut.proposals.search_path`)."""
        if self._path is None:
            self._path = search_path(self.p0, self.cache)
        return self._path

    def rows(self, group: int | None) -> torch.Tensor:
        """The probe rows of ``group``."""
        return dict(self.groups)[group].nonzero().flatten()


@dataclass
class Findings:
    """What one kind of evidence found in one check."""

    suspects: list[Suspect] = field(default_factory=list)
    tests: list[PlaceTest] = field(default_factory=list)
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
