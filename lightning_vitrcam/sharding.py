"""Probe work split across data-parallel ranks: each rank explains its share, all gather.

With ``W`` ranks and ``N`` probes, rank ``r`` explains the padded rows ``r*k .. (r+1)*k - 1``
(``k = ceil(N / W)``; rows past the end repeat the last probe so that every rank runs the same
shapes); Lightning's ``strategy.all_gather`` then gives every rank the full result in probe
order, exactly what one process explaining all probes returns.

Example:
    >>> shard = probe_shard(5, rank=1, world=2)
    >>> shard.rows.tolist(), shard.valid
    ([3, 4, 4], 2)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_vitrcam.explainer import ReciproCAMResult

__all__ = ["Shard", "gather_result", "probe_shard", "sharded_forward", "take"]


@dataclass(frozen=True)
class Shard:
    """The probe rows one rank explains; the first ``valid`` are its own, the rest padding."""

    rows: torch.Tensor
    valid: int


def probe_shard(n: int, rank: int, world: int, device: torch.device | str | None = None) -> Shard:
    """Rank ``rank``'s share of ``n`` probes split over ``world`` ranks (see the module)."""
    k = math.ceil(n / world)
    start = rank * k
    rows = torch.arange(start, start + k, device=device).clamp_max(n - 1)
    return Shard(rows, max(0, min(k, n - start)))


def take(result: ReciproCAMResult, rows: Any) -> ReciproCAMResult:
    """The result restricted to ``rows`` (a slice or an index tensor) of its images."""
    fields = {
        f.name: getattr(result, f.name)[rows]
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor)
    }
    return dataclasses.replace(result, **fields)


def _gather_rows(strategy: Any, t: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's ``[k, ...]`` share stacked in rank order, padding past ``n`` rows dropped."""
    stacked = strategy.all_gather(t.contiguous())  # [world, k, ...]
    return stacked.reshape(-1, *t.shape[1:])[:n]


def gather_result(strategy: Any, result: ReciproCAMResult, n: int) -> ReciproCAMResult:
    """Every rank's share of an explanation gathered into the full ``n``-probe result, on
    every rank (Lightning's ``strategy.all_gather``; a single process returns it as it is)."""
    world = getattr(strategy, "world_size", 1)
    if world == 1:
        return result

    fields = {
        f.name: _gather_rows(strategy, getattr(result, f.name), n)
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor)
    }
    return dataclasses.replace(result, **fields)


def sharded_forward(
    strategy: Any, forward: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` (a batch to its logits) with the batch's rows split over the ranks as in
    :func:`probe_shard` and the outputs gathered in row order on every rank: the shortcut
    alarm's occlusion forwards cost each rank its share instead of the whole batch. Every rank
    must call it with the same batch shape (the alarm's inputs are the gathered probes, the
    same on every rank). A single process gets ``forward`` itself.

    Example:
        >>> double = sharded_forward(None, lambda x: 2 * x)
        >>> double(torch.ones(3, 1)).flatten().tolist()
        [2.0, 2.0, 2.0]
    """
    world = getattr(strategy, "world_size", 1)
    if world == 1:
        return forward

    def run(batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        shard = probe_shard(n, strategy.global_rank, world, device=batch.device)
        return _gather_rows(strategy, forward(batch[shard.rows]), n)

    return run
