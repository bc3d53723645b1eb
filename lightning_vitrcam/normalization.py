"""The input normalisation to undo when images are shown: checked once, passed on explicitly.

Rendering takes ``mean``/``std`` as plain numbers and never looks inside a model; the callback
and the command line resolve them once with :func:`resolve_mean_std`, one value per input
channel of the model (:func:`input_channels`).

Example:
    >>> resolve_mean_std(mean=(0.5, 0.5, 0.5))[0], resolve_mean_std()[1][0]
    ((0.5, 0.5, 0.5), 0.229)
    >>> resolve_mean_std(channels=1)  # ImageNet's statistics for one channel: their mean
    ((0.449,), (0.226,))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_mean_std",
    "fit_channels",
    "input_channels",
    "resolve_mean_std",
]

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


def _own_channels(module: Any) -> int | None:
    chans = getattr(module, "in_chans", None)  # timm
    if isinstance(chans, int):
        return chans
    chans = getattr(getattr(module, "config", None), "num_channels", None)  # HF transformers
    return chans if isinstance(chans, int) else None


def input_channels(model: Any) -> int | None:
    """The number of image channels ``model`` takes (searched in submodules too): timm's
    ``in_chans``, HF's ``config.num_channels``, else the ``in_channels`` of the first
    ``Conv2d`` (torchvision's ``conv_proj``, any patch embedding); None when nothing says.

    Example:
        >>> input_channels(nn.Sequential(nn.Conv2d(1, 8, 4), nn.Flatten()))
        1
    """
    if not isinstance(model, nn.Module):
        return _own_channels(model)
    for sub in model.modules():
        found = _own_channels(sub)
        if found is not None:
            return found
    for sub in model.modules():
        if isinstance(sub, nn.Conv2d):
            return int(sub.in_channels)
    return None


def fit_channels(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """Per-channel statistics of a model's config (or ImageNet's) fitted to ``channels``:
    as they are when the counts agree, one value repeated, the mean of the values for one
    channel (a grey image's statistics from colour ones: timm's ``pretrained_cfg`` keeps three
    values for ``in_chans=1`` models), the first ``channels`` values when there are fewer
    channels, and the values followed by their mean for extra channels (e.g. near-infrared
    after RGB).

    Example:
        >>> fit_channels((0.2, 0.4, 0.6), 1), fit_channels((0.2, 0.4, 0.6), 4)
        ((0.4,), (0.2, 0.4, 0.6, 0.4))
    """
    v = tuple(float(x) for x in values)
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if len(v) == channels:
        return v
    mean = round(sum(v) / len(v), 6)
    if len(v) == 1 or channels == 1:
        return (mean,) * channels
    if channels < len(v):
        return v[:channels]
    return v + (mean,) * (channels - len(v))


def _explicit(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    v = tuple(float(x) for x in values)
    if len(v) == 1:
        return v * channels
    if len(v) != channels:
        raise ValueError(f"{what} has {len(v)} values but the images have {channels} channels")
    return v


def resolve_mean_std(
    model: Any = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation to undo, one value per image channel.

    Explicit ``mean``/``std`` win (one value or one per channel), then a timm model's
    ``pretrained_cfg["mean"/"std"]`` (searched in submodules too), then ImageNet's; those two
    are fitted to the channel count with :func:`fit_channels` (one channel: the mean of the
    three values). ``channels`` defaults to what the model takes (:func:`input_channels`,
    e.g. ``images.shape[1]`` is what the callback passes); without either the statistics keep
    their own length.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", in_chans=1, img_size=32,
        ...                         patch_size=8, depth=1, embed_dim=32, num_heads=2)
        >>> resolve_mean_std(vit)
        ((0.5,), (0.5,))
    """
    if channels is None and model is not None:
        channels = input_channels(model)
    cfg = (_pretrained_cfg(model) if model is not None else None) or {}

    def one(given: Sequence[float] | None, key: str, default: tuple[float, ...]) -> Any:
        if given is not None:
            return given if channels is None else _explicit(given, channels, key)
        found = cfg.get(key) or default
        return found if channels is None else fit_channels(found, channels)

    return check_mean_std(one(mean, "mean", IMAGENET_MEAN), one(std, "std", IMAGENET_STD))
