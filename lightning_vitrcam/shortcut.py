"""The ``possible shortcut`` alarm: when the probes' saliency says the model reads one spot.

:func:`shortcut_message` turns the signals of one evaluation into the warning text (or None);
the callback emits it as a :class:`PossibleShortcutWarning` on rank zero.

Example:
    >>> import torch
    >>> mean_map = torch.zeros(4, 4); mean_map[0, 0] = 1.0
    >>> print(shortcut_message({"hotspot_ratio": 16.0}, mean_map, epoch=2, step=90,
    ...                        hotspot_threshold=4.0))  # doctest: +NORMALIZE_WHITESPACE
    ViTReciproCAMCallback: possible shortcut at epoch 2 (step 90): hotspot ratio 16.00 > 4.0;
    the mean saliency peaks at token row 0, column 0 (on the top-left corner)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lightning_vitrcam.metrics import hotspot_location

__all__ = ["PossibleShortcutWarning", "shortcut_message"]


class PossibleShortcutWarning(UserWarning):
    """The mean saliency collapsed onto one spot or left the object masks."""


def shortcut_message(
    values: Mapping[str, float],
    mean_map: torch.Tensor,
    epoch: int,
    step: int,
    hotspot_threshold: float | None = None,
    energy_threshold: float | None = None,
) -> str | None:
    """The warning for one evaluation's ``values`` (``hotspot_ratio`` and, with masks,
    ``energy_in_mask``), or None when no threshold is crossed."""
    reasons = []
    ratio, energy = values.get("hotspot_ratio"), values.get("energy_in_mask")
    if hotspot_threshold is not None and ratio is not None and ratio > hotspot_threshold:
        reasons.append(f"hotspot ratio {ratio:.2f} > {hotspot_threshold}")
    if energy_threshold is not None and energy is not None and energy < energy_threshold:
        reasons.append(f"energy in the object masks {energy:.2f} < {energy_threshold}")
    if not reasons:
        return None
    row, col, border = hotspot_location(mean_map)
    place = f"on the {border}" if border else "inside the image"
    return (
        f"ViTReciproCAMCallback: possible shortcut at epoch {epoch} (step {step}): "
        + " and ".join(reasons)
        + f"; the mean saliency peaks at token row {row}, column {col} ({place})"
    )
