"""Small tensor helpers shared by the explainer, the metrics and the rendering."""

from __future__ import annotations

import torch

__all__ = ["as_maps", "minmax", "safe_div"]


def safe_div(num: torch.Tensor, den: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``num / den`` where ``den > eps``, else 0; never divides by zero (no NaN, no host sync).

    Example:
        >>> safe_div(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0])).tolist()
        [0.5, 0.0]
    """
    ok = den > eps
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def minmax(x: torch.Tensor, dim: int | tuple[int, ...] = -1) -> torch.Tensor:
    """Min-max scale ``x`` into [0, 1] over ``dim``; a constant slice gives zeros.

    Example:
        >>> minmax(torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])).tolist()
        [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    """
    lo = x.amin(dim=dim, keepdim=True)
    return safe_div(x - lo, x.amax(dim=dim, keepdim=True) - lo)


def as_maps(maps: torch.Tensor, name: str = "maps", allow_single: bool = False) -> torch.Tensor:
    """``[B, h, w]`` floating view of maps given as ``[B, h, w]`` or ``[B, 1, h, w]`` (and
    ``[h, w]`` when ``allow_single``); raises a clear error for anything else."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if allow_single and maps.dim() == 2:
        maps = maps[None]
    if maps.dim() != 3:
        raise ValueError(f"{name} must be [B, h, w] or [B, 1, h, w], got {tuple(maps.shape)}")
    return maps if maps.is_floating_point() else maps.float()
