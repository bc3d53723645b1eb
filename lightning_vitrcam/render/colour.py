"""Colour: de-normalised images, coloured maps and their overlays, on the images' device.

Example:
    >>> import torch
    >>> images, maps = torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4)
    >>> overlay(images, maps).shape, overlay(images, maps).dtype
    (torch.Size([2, 3, 32, 32]), torch.uint8)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from lightning_vitrcam._ops import as_maps
from lightning_vitrcam.normalization import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_mean_std,
    fit_channels,
)
from lightning_vitrcam.render.style import Style

__all__ = ["colorize", "denormalize", "overlay", "to_uint8"]


def _shown_channels(c: int, channels: Sequence[int] | None) -> tuple[int, ...]:
    if channels is None:
        return (0, 1, 2) if c >= 3 else (0,)
    shown = tuple(int(i) for i in channels)
    if len(shown) not in (1, 3) or not all(0 <= i < c for i in shown):
        raise ValueError(
            f"channels must be 1 (grey) or 3 (red, green, blue) indices into the images'"
            f" {c} channels, got {tuple(channels)}"
        )
    return shown


def denormalize(images: torch.Tensor, style: Style = Style()) -> torch.Tensor:
    """Undo ``(x - mean) / std``: float ``[B, 3, H, W]`` in [0, 1] on the images' device.

    The style's ``mean``/``std`` have one value per image channel (or one for all); they
    default to ImageNet's, fitted to the channel count (one channel: the mean of the three
    values, see :func:`~lightning_vitrcam.normalization.fit_channels`). Its ``channels`` pick
    what is shown: one index (grey) or three (red, green, blue); by default one-channel (and
    two-channel) images show their first channel in grey and images with three or more
    channels their first three.

    Example:
        >>> x = torch.zeros(1, 3, 2, 2)
        >>> denormalize(x, Style((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))[0, :, 0, 0].tolist()
        [0.5, 0.5, 0.5]
        >>> grey = denormalize(torch.zeros(1, 1, 2, 2), Style((0.25,), (0.5,)))
        >>> tuple(grey.shape), grey[0, :, 0, 0].tolist()
        ((1, 3, 2, 2), [0.25, 0.25, 0.25])
        >>> shown = Style([0.0, 0.25, 0.5, 0.75], [1.0] * 4, channels=[3, 2, 1])
        >>> denormalize(torch.zeros(1, 4, 2, 2), shown)[0, :, 0, 0].tolist()
        [0.75, 0.5, 0.25]
    """
    mean, std, channels = style.mean, style.std, style.channels
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {getattr(images, 'shape', None)}")
    c = images.shape[1]
    shown = _shown_channels(c, channels)
    mean = fit_channels(IMAGENET_MEAN, c) if mean is None else mean
    std = fit_channels(IMAGENET_STD, c) if std is None else std
    mean_t, std_t = check_mean_std(mean, std)
    if len(mean_t) == 1:
        mean_t, std_t = mean_t * c, std_t * c
    if len(mean_t) != c:
        raise ValueError(f"images have {c} channels but mean/std have {len(mean_t)} values")
    idx = list(shown)
    x = images[:, idx].float()
    m = torch.tensor([mean_t[i] for i in idx], device=x.device).view(1, -1, 1, 1)
    s = torch.tensor([std_t[i] for i in idx], device=x.device).view(1, -1, 1, 1)
    x = (x * s + m).clamp(0.0, 1.0)
    return x.expand(-1, 3, -1, -1) if len(idx) == 1 else x


@lru_cache(maxsize=32)
def _lut_cpu(name: str) -> torch.Tensor:
    import matplotlib
    import numpy as np

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r}; any matplotlib colormap name works, e.g. 'inferno',"
            " 'viridis', 'jet', 'magma' (list them with: import matplotlib;"
            " print(sorted(matplotlib.colormaps)))"
        ) from None
    rgba = cmap(np.linspace(0.0, 1.0, 256))
    return torch.from_numpy(np.ascontiguousarray(rgba[:, :3])).float()


def _lut(cmap: Any, device: torch.device) -> torch.Tensor:
    """``[256, 3]`` float colour table in [0, 1] for a colormap name (or Colormap object)."""
    if isinstance(cmap, str):
        return _lut_cpu(cmap).to(device)
    if callable(cmap):  # a matplotlib Colormap instance
        import numpy as np

        rgba = cmap(np.linspace(0.0, 1.0, 256))
        return torch.as_tensor(np.asarray(rgba)[:, :3], dtype=torch.float32, device=device)
    raise ValueError(f"cmap must be a matplotlib colormap name, got {cmap!r}")


def colorize(
    maps: torch.Tensor,
    size: tuple[int, int] | None = None,
    cmap: Any = "inferno",
    mode: str = "bilinear",
) -> torch.Tensor:
    """Colour ``[B, h, w]`` maps in [0, 1] (clipped) with a colormap: float ``[B, 3, H, W]``.

    ``size`` upsamples first (``mode`` ``"bilinear"``, ``align_corners=False``, or
    ``"nearest"``). The 256-entry table is indexed on the maps' device.

    Example:
        >>> colorize(torch.tensor([[[0.0, 1.0]]]), cmap="gray")[0, :, 0].tolist()
        [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    """
    maps = as_maps(maps, allow_single=True).float()
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        maps = F.interpolate(maps[:, None], size=tuple(size), mode=mode, **kwargs)[:, 0]
    lut = _lut(cmap, maps.device)
    idx = (maps.nan_to_num(0.0).clamp(0.0, 1.0) * 255.0).round().long()
    return lut[idx].permute(0, 3, 1, 2)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pictures in [0, 1] to uint8 [0, 255] (rounded, clamped), on the same device."""
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def overlay(images: torch.Tensor, maps: torch.Tensor, style: Style = Style()) -> torch.Tensor:
    """Blend coloured maps onto the images: ``uint8 [B, 3, H, W]`` on the images' device.

    The images are de-normalised and shown as :func:`denormalize` says, each map is upsampled
    bilinearly to the image size and coloured with the style's ``cmap``, then
    ``(1 - alpha) * image + alpha * colour``.

    Example:
        >>> white = Style(cmap="gray", alpha=1.0)
        >>> out = overlay(torch.zeros(1, 3, 8, 8), torch.ones(1, 2, 2), white)
        >>> int(out.min()), int(out.max())
        (255, 255)
    """
    base = denormalize(images, style)
    maps = as_maps(maps, allow_single=True).to(base.device)
    if maps.shape[0] != base.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {base.shape[0]} images")
    heat = colorize(maps, tuple(base.shape[-2:]), style.cmap)
    return to_uint8((1.0 - style.alpha) * base + style.alpha * heat)
