"""The confirmation rule: pure functions of the drops an intervention recorded.

A probe is *hit* when occluding a place removes at least ``min_drop`` of its predicted-class
probability; a place is confirmed in a group of probes when at least ``min_share`` of them,
and at least ``min_hits``, are hit. A box, and a single token inside the image, count only on
the probes they are also sufficient for (kept alone they keep at least ``min_drop`` of the
probability), and a box only where it touches the image border. Why these conditions and
numbers: ``docs/shortcut_alarm.md``.

Example:
    >>> rule = Rule()
    >>> rule.judge(PlaceTest(box=(0, 2, 0, 2), grid=(8, 8), group=None, drops=[0.9] * 4))
    False
    >>> rule.judge(PlaceTest((0, 2, 0, 2), (8, 8), None, [0.9] * 4, kept=[0.8, 0.7, 0.9, 0.1]))
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_vitrcam.shortcut.places import Box, is_token, on_border

__all__ = ["PlaceTest", "Rule", "learned", "margin", "needs_sufficiency", "sign_test"]


@dataclass(frozen=True)
class PlaceTest:
    """One place tested in one group of probes: each tested probe's relative drop of its
    predicted-class probability when the place is occluded and, for a place that must also be
    sufficient and whose occlusion was confirmed, the share of it the place alone keeps."""

    box: Box
    grid: tuple[int, int]
    group: int | None
    drops: list[float]
    kept: list[float] | None = None

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> PlaceTest:
        """A record read back from JSON (``dataclasses.asdict`` of a :class:`PlaceTest`)."""
        group = record["group"]
        kept = record.get("kept")
        return cls(
            box=tuple(int(v) for v in record["box"]),  # type: ignore[arg-type]
            grid=tuple(int(v) for v in record["grid"]),  # type: ignore[arg-type]
            group=None if group is None else int(group),
            drops=[float(d) for d in record["drops"]],
            kept=None if kept is None else [float(k) for k in kept],
        )


def margin(moved: torch.Tensor, control: torch.Tensor) -> float:
    """How much more an intervention moves its recipients than its control does, over the
    pairs the two tell apart: ``(b - c) / (pairs - both)``, ``b`` the pairs only the
    intervention moved, ``c`` those only the control moved. Pairs that both moved say nothing
    about the intervention's content (the recipient lands there by itself), so they are left
    out of the denominator; 0 without pairs.

    Example:
        >>> moved = torch.tensor([True, True, True, False])
        >>> margin(moved, torch.tensor([True, False, False, False]))
        0.6666666666666666
    """
    moved, control = moved.bool(), control.bool()
    both = int((moved & control).sum())
    only = int((moved & ~control).sum()) - int((control & ~moved).sum())
    return only / max(1, moved.numel() - both)


def sign_test(moved: torch.Tensor, control: torch.Tensor) -> float:
    """The one-sided p-value that the intervention moves its recipients more often than its
    control by chance: under "the content carries nothing more than a same-size change", the
    pairs only one of them moved are equally likely either way (an exact binomial test on
    those discordant pairs); 1 without any.

    Example:
        >>> sign_test(torch.ones(5, dtype=torch.bool), torch.zeros(5, dtype=torch.bool))
        0.03125
    """
    moved, control = moved.bool(), control.bool()
    b = int((moved & ~control).sum())
    n = b + int((control & ~moved).sum())
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n


def learned(right: int, total: int, chance: float, min_margin: float) -> bool:
    """Whether predictions that are ``right`` on ``total`` labelled probes show a model that
    learned something from its data: at least ``min_margin`` of the way from ``chance`` (the
    share the best constant guess gets right) to all right. An untrained model's predictions
    follow whatever varies most between images (colour first), so every intervention moves
    them; but what it follows names no class of the data, so it is not a shortcut.

    Example:
        >>> learned(4, 16, 0.25, 0.5), learned(12, 16, 0.25, 0.5)
        (False, True)
    """
    if total <= 0:
        return True
    return right / total - chance >= min_margin * (1.0 - chance)


def needs_sufficiency(box: Sequence[int], grid: Sequence[int]) -> bool:
    """Whether a place must also keep the prediction alone to count: a box always, a single
    token inside the image (where a centred object's own decisive part sits); a token on the
    border counts on occlusion alone."""
    return not is_token(box) or not on_border(box, *grid)


@dataclass(frozen=True)
class Rule:
    """When the recorded drops confirm a place (see the module docstring).

    Example:
        >>> Rule(min_share=0.5, min_hits=3).confirms(torch.tensor([0.9, 0.8, 0.1, 0.0]))
        (2, False)
    """

    min_drop: float = 0.5
    min_share: float = 0.5
    min_hits: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.min_drop <= 1.0 or not 0.0 < self.min_share <= 1.0:
            raise ValueError(
                f"min_drop and min_share must be in (0, 1], got {self.min_drop} and"
                f" {self.min_share}"
            )
        if self.min_hits < 1:
            raise ValueError(f"min_hits must be at least 1, got {self.min_hits}")

    def enough(self, hits: int, probes: int) -> bool:
        """Whether ``hits`` of ``probes`` are enough to confirm."""
        return hits >= max(self.min_share * probes, self.min_hits)

    def confirms(self, drops: torch.Tensor) -> tuple[int, bool]:
        """``(hits, confirmed)`` of one place's per-probe relative drops in one group."""
        hits = int((drops >= self.min_drop).sum())
        return hits, self.enough(hits, drops.numel())

    def both(self, drops: torch.Tensor, kept: Sequence[float] | None) -> tuple[int, bool]:
        """``(n, confirmed)``: ``n`` probes both lost ``min_drop`` of their probability when
        the place was occluded and kept ``min_drop`` of it with the place alone."""
        if kept is None:
            return 0, False
        both = (drops >= self.min_drop) & (torch.tensor(kept) >= self.min_drop)
        n = int(both.sum())
        return n, self.enough(n, drops.numel())

    def judge(self, test: PlaceTest) -> bool:
        """Whether ``test`` confirms its place: a token on the border on its drops; a box,
        which must touch the border, and a token inside the image on the probes that both
        lost and kept the prediction.

        Example:
            >>> rule = Rule()
            >>> rule.judge(PlaceTest((3, 5, 3, 5), (8, 8), None, [0.9] * 4, [0.9] * 4))
            False
            >>> rule.judge(PlaceTest((3, 4, 3, 4), (8, 8), None, [0.9] * 4, [0.1] * 4))
            False
        """
        drops = torch.tensor(test.drops)
        if not needs_sufficiency(test.box, test.grid):
            return self.confirms(drops)[1]
        if not is_token(test.box) and not on_border(test.box, *test.grid):
            return False
        return self.both(drops, test.kept)[1]
