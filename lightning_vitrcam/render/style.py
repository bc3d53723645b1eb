"""How pictures look: one :class:`Style` travels to every rendering function.

Example:
    >>> Style(mean=[0.5] * 3, std=[0.25] * 3).std, Style().cmap
    ((0.25, 0.25, 0.25), 'inferno')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Style"]


@dataclass(frozen=True)
class Style:
    """The display options of every picture.

    Args:
        mean: the images' normalisation mean, one value or one per channel (None: ImageNet's,
            fitted to the channel count); undone before an image is shown.
        std: the normalisation std (same form).
        cmap: a matplotlib colormap name (or ``Colormap``) for the maps.
        alpha: weight of the coloured map over the image in an overlay, in [0, 1].
        channels: image channels shown: one index (grey) or three (red, green, blue); None:
            grey for one- and two-channel images, else the first three.
    """

    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    cmap: Any = "inferno"
    alpha: float = 0.5
    channels: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    def but(self, **changes: Any) -> Style:
        """A copy with ``changes`` (e.g. ``style.but(alpha=1.0)``)."""
        return replace(self, **changes)
