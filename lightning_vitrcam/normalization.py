"""The input normalisation to undo when images are shown: checked once, passed on explicitly.

Rendering takes ``mean``/``std`` as plain numbers and never looks inside a model; the callback
and the command line resolve them once with :func:`resolve_mean_std`.

Example:
    >>> resolve_mean_std(mean=(0.5, 0.5, 0.5))[0], resolve_mean_std()[1][0]
    ((0.5, 0.5, 0.5), 0.229)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "check_mean_std", "resolve_mean_std"]

IMAGENET_MEAN: tuple[float, ...] = tuple(map(float, IMAGENET_DEFAULT_MEAN))
IMAGENET_STD: tuple[float, ...] = tuple(map(float, IMAGENET_DEFAULT_STD))


def check_mean_std(
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` as float tuples, ImageNet's where None; raises on a length mismatch or
    a zero std."""
    mean_t = IMAGENET_MEAN if mean is None else tuple(float(m) for m in mean)
    std_t = IMAGENET_STD if std is None else tuple(float(s) for s in std)
    if len(mean_t) != len(std_t):
        raise ValueError(f"mean has {len(mean_t)} values but std has {len(std_t)}")
    if any(s == 0 for s in std_t):
        raise ValueError(f"std must be non-zero, got {std_t}")
    return mean_t, std_t


def _pretrained_cfg(model: Any) -> Mapping[str, Any] | None:
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping):
        return cfg
    # a LightningModule (or any wrapper) holding a timm model: use the first cfg found
    modules = getattr(model, "modules", None)
    if callable(modules):
        for sub in modules():
            cfg = getattr(sub, "pretrained_cfg", None)
            if isinstance(cfg, Mapping):
                return cfg
    return None


def resolve_mean_std(
    model: Any = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation to undo: explicit ``mean``/``std`` win, then a timm model's
    ``pretrained_cfg["mean"/"std"]`` (searched in submodules too), then ImageNet's."""
    cfg = _pretrained_cfg(model) if model is not None else None
    if mean is None and cfg is not None:
        mean = cfg.get("mean")
    if std is None and cfg is not None:
        std = cfg.get("std")
    return check_mean_std(mean, std)
