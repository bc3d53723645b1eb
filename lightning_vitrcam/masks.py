"""Spatial masks of ViT-ReciproCAM: one window of weights per spatial token.

Copy ``k`` of an image keeps only the tokens in a window centred on spatial position ``k``
(row-major over an ``h x w`` grid), each scaled by the kernel weight; every other spatial token
becomes the zero vector. Windows are clipped at the borders and never renormalised.

Example:
    >>> from lightning_vitrcam.masks import window_weights
    >>> w = window_weights(3, 3, "gaussian")
    >>> w.shape, float(w[4, 4]), float(w[0, 0])
    (torch.Size([9, 9]), 0.25, 0.25)
"""

from __future__ import annotations

import torch

__all__ = ["KERNELS", "WINDOW_SLOTS", "kernel_weights", "window_slots", "window_weights"]

KERNELS: tuple[str, ...] = ("gaussian", "point")
# every copy's window is stored as the 3x3 = 9 slots around its centre, for both kernels
WINDOW_SLOTS = 9


def kernel_weights(kernel: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 3x3 window kernel: the paper's Gaussian ``[[1,2,1],[2,4,2],[1,2,1]] / 16`` or a point."""
    if kernel == "gaussian":
        g = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
        return (torch.outer(g, g) / 16.0).to(dtype)
    if kernel == "point":
        k = torch.zeros(3, 3, dtype=dtype)
        k[1, 1] = 1.0
        return k
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def window_slots(
    h: int,
    w: int,
    kernel: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The window of every copy as a fixed number of slots (9 for both kernels).

    Returns ``(index, weight, valid)``, each ``[h*w, WINDOW_SLOTS]``: the spatial token index of
    each slot (0 where invalid), its kernel weight (0 where invalid) and whether the slot lies
    inside the grid and carries a non-zero weight. Zero-weight slots (the point kernel's
    off-centre ones) are marked invalid so that they fold into the shared zero token.
    """
    kern = kernel_weights(kernel, dtype).to(device)
    ii = torch.arange(h, device=device).view(h, 1, 1, 1)
    jj = torch.arange(w, device=device).view(1, w, 1, 1)
    du = torch.arange(-1, 2, device=device).view(1, 1, 3, 1)
    dv = torch.arange(-1, 2, device=device).view(1, 1, 1, 3)
    u, v = ii + du, jj + dv
    inside = (u >= 0) & (u < h) & (v >= 0) & (v < w)
    weight = kern.view(1, 1, 3, 3).expand(h, w, 3, 3)
    valid = inside & (weight != 0)
    index = torch.where(valid, u * w + v, torch.zeros_like(u * w + v))
    weight = torch.where(valid, weight, torch.zeros_like(weight))
    n = h * w
    return (
        index.reshape(n, WINDOW_SLOTS),
        weight.reshape(n, WINDOW_SLOTS),
        valid.reshape(n, WINDOW_SLOTS),
    )


def window_weights(
    h: int,
    w: int,
    kernel: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dense ``[h*w, h*w]`` matrix: row ``k`` holds each spatial token's weight in copy ``k``."""
    index, weight, _ = window_slots(h, w, kernel, device, dtype)
    dense = torch.zeros(h * w, h * w, device=device, dtype=dtype)
    # invalid slots point at token 0 with weight 0, so scatter_add leaves them harmless
    return dense.scatter_add_(1, index, weight)
