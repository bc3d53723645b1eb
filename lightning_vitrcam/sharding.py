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

__all__ = [
    "PeerFailed",
    "Shard",
    "agree",
    "agree_flag",
    "check_strategy",
    "chunked",
    "gather_result",
    "probe_shard",
    "sharded_forward",
    "take",
]


class PeerFailed(RuntimeError):
    """Another process failed in a step that every process takes together."""


@dataclass(frozen=True)
class Shard:
    """The probe rows one rank explains; the first ``valid`` are its own, the rest padding."""

    rows: torch.Tensor
    valid: int


_SHARDED = ("FSDP", "DeepSpeed", "ModelParallel")


def check_strategy(trainer: Any) -> None:
    """Sharded strategies are refused early: the explainer calls the unwrapped ViT directly,
    which needs every parameter in full on every rank."""
    kind = type(trainer.strategy).__name__
    if any(word in kind for word in _SHARDED):
        raise ValueError(
            f"ViTReciproCAMCallback does not support the sharded strategy {kind}: the explainer"
            " runs the unwrapped ViT, whose parameters must be whole (unsharded) on every"
            " rank, and this has not been tested on a GPU. Use strategy='ddp' (tested), or"
            " explain checkpoints afterwards with `lightning-vitrcam explain`."
        )


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


def agree(strategy: Any, error: BaseException | None) -> None:
    """Every rank learns whether any rank failed: re-raises ``error`` where it happened and
    raises :class:`PeerFailed` on the others, so that no rank enters a collective another
    one left (a single process just re-raises).

    Example:
        >>> agree(None, None)  # nothing failed
    """
    ok = agree_flag(strategy, error is None)
    if error is not None:
        raise error
    if not ok:
        raise PeerFailed("another process failed in the same step; see its warning")


def agree_flag(strategy: Any, flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (a single process: ``flag``)."""
    if getattr(strategy, "world_size", 1) == 1:
        return flag
    return bool(strategy.reduce_boolean_decision(flag, all=True))


def chunked(
    forward: Callable[[torch.Tensor], torch.Tensor], bound: Callable[[], int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` run on at most ``bound()`` images at a time (read at each call, so that a
    bound lowered after an out-of-memory error takes effect at once).

    Example:
        >>> sizes = []
        >>> run = chunked(lambda x: sizes.append(len(x)) or x, lambda: 2)
        >>> run(torch.ones(5, 1)).shape[0], sizes
        (5, [2, 2, 1])
    """

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([forward(chunk) for chunk in batch.split(bound())])

    return run


def sharded_forward(
    strategy: Any, forward: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` (a batch to its logits) with the batch's rows split over the ranks as in
    :func:`probe_shard` and the outputs gathered in row order on every rank: the shortcut
    alarm's occlusion forwards cost each rank its share instead of the whole batch. Every rank
    must call it with the same batch shape (the alarm's inputs are the gathered probes, the
    same on every rank); a failure on one rank is raised on every rank before the gather
    (:func:`agree`). A single process gets ``forward`` itself.

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
        out, error = None, None
        try:
            out = forward(batch[shard.rows])
        except Exception as err:  # noqa: BLE001 - re-raised by agree, on every rank
            error = err
        # a rank that failed (e.g. out of memory) must not leave the others in the gather
        agree(strategy, error)
        return _gather_rows(strategy, out, n)

    return run
