"""The monitor's record of its evaluations: what drift, the timeline and the end-of-fit report
read, and what a checkpoint keeps.

Example:
    >>> import torch
    >>> history = History()
    >>> history.add(epoch=0, step=10, maps=torch.rand(2, 4, 4), values={"adcc": 0.5})
    >>> history.last.adcc, history.done(10), history.scalars()
    (0.5, True, [{'step': 10, 'adcc': 0.5}])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["History", "Record"]


@dataclass
class Record:
    """One evaluation: when it ran (a plain loop may give no epoch), its maps and scalars."""

    epoch: int | None
    step: int
    maps: torch.Tensor  # [N, h, w] float16 on CPU: compact, enough for drift and pictures
    adcc: float | None
    values: dict[str, float] = field(default_factory=dict)


class History:
    """The evaluations so far, oldest first."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> Record | None:
        return self.records[-1] if self.records else None

    def add(
        self, epoch: int | None, step: int, maps: torch.Tensor, values: dict[str, float]
    ) -> None:
        """Record an evaluation (its maps kept as float16 on the CPU)."""
        compact = maps.detach().to("cpu", torch.float16)
        self.records.append(Record(epoch, step, compact, values.get("adcc"), dict(values)))

    def done(self, step: int) -> bool:
        """Whether the last evaluation ran at ``step`` (a hook never explains a step twice)."""
        return self.last is not None and self.last.step == step

    def fits(self, maps_shape: Sequence[int]) -> bool:
        """Whether the recorded maps have this shape (a restored history may not)."""
        return self.last is None or tuple(self.last.maps.shape) == tuple(maps_shape)

    def clear(self) -> None:
        self.records = []

    def scalars(self) -> list[dict[str, Any]]:
        """Each evaluation's ``step`` and scalars, for plots over the steps."""
        return [{"step": r.step, **r.values} for r in self.records]

    def frames(self, per_step: bool) -> tuple[list[torch.Tensor], list[str]]:
        """Each evaluation's maps and its label (``step 40`` or ``ep 3``; ``step`` where the
        evaluation has no epoch)."""
        labels = [
            f"step {r.step}" if per_step or r.epoch is None else f"ep {r.epoch}"
            for r in self.records
        ]
        return [r.maps for r in self.records], labels

    def state_dict(self) -> list[dict[str, Any]]:
        """Plain types and CPU tensors."""
        return [dict(vars(r)) for r in self.records]

    def load_state_dict(self, state: Sequence[dict[str, Any]]) -> None:
        self.records = [Record(**r) for r in state]
