"""What the fast path needs from one model family: a :class:`FamilySpec`.

A family's adapter carries its spec (``ModelAdapter.fast_path_spec``); the folded attention
itself (:mod:`lightning_vitrcam.fast_path`) is written once for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["FamilySpec", "Projections", "split_fused"]


@dataclass(frozen=True)
class Projections:
    """The last block's attention projections: ``wq`` ``[H*d, D]``, ``wkv`` ``[2*H*d, D]`` (keys
    then values), biases ``[H*d]`` or None, ``heads`` H, ``head_dim`` d and the logit scale."""

    wq: torch.Tensor
    wkv: torch.Tensor
    bq: torch.Tensor | None
    bk: torch.Tensor | None
    bv: torch.Tensor | None
    heads: int
    head_dim: int
    scale: float


class FamilySpec:
    """What the folded attention needs from one model family.

    The spec applies to the exact model classes its adapter is registered for (a subclass
    may change the maths); :meth:`blocker` checks the rest (block and attention classes,
    pooling). :meth:`projections` reads the last block's q/k/v projections;
    :meth:`prefix_tail` maps each copy's merged attention output of the prefix rows,
    ``[B, N, P, H*d]`` in the parameters' dtype, to ``[B, N, C]`` logits, exactly as the
    block's remainder and the model's head do. The masked norm is the adapter's
    ``first_norm``.
    """

    def blocker(self, model: nn.Module, block: nn.Module) -> str | None:
        return None

    def projections(self, block: nn.Module) -> Projections:
        raise NotImplementedError

    def context(self, block: nn.Module, feats_pre: torch.Tensor) -> Any:
        """Per-image state of the prefix rows that every copy shares (e.g. an output gate)."""
        return None

    def prefix_tail(
        self,
        model: nn.Module,
        block: nn.Module,
        x_pre: torch.Tensor,
        out: torch.Tensor,
        context: Any,
    ) -> torch.Tensor:
        raise NotImplementedError


def split_fused(
    weight: torch.Tensor, bias: torch.Tensor | None, width: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """``(wq, wkv, (bq, bk, bv))`` of a fused ``[3*width, D]`` q/k/v projection (views)."""
    biases = (None, None, None) if bias is None else tuple(bias.split(width))
    return weight[:width], weight[width:], biases
