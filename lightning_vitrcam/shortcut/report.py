"""What the alarm tells the user: :class:`Suspect` and the warning's text.

Example:
    >>> import torch
    >>> mean_map = torch.zeros(4, 4); mean_map[0, 0] = 1.0
    >>> print(shortcut_message({"hotspot_ratio": 16.0}, mean_map, epoch=2, step=90,
    ...                        hotspot_threshold=4.0))  # doctest: +NORMALIZE_WHITESPACE
    ViTReciproCAMCallback: possible shortcut at epoch 2 (step 90): hotspot ratio 16.00 > 4.0;
    the mean saliency peaks at token row 0, column 0 (on the top-left corner)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from lightning_vitrcam.shortcut.places import Box, hotspot_location, is_token, place_name
from lightning_vitrcam.shortcut.rule import needs_sufficiency

__all__ = [
    "Example",
    "Finding",
    "PossibleShortcutWarning",
    "Suspect",
    "group_name",
    "prediction_of",
    "shortcut_message",
]


class PossibleShortcutWarning(UserWarning):
    """The model's prediction hangs on something other than the object (or the saliency left
    the object masks)."""


def prediction_of(group: int | None, class_names: Sequence[str] | None = None) -> str:
    """Whose prediction a finding is about: "the prediction", or "the prediction of 'cat'".

    Example:
        >>> prediction_of(None), prediction_of(1, ["dog", "cat"])
        ('the prediction', "the prediction of 'cat'")
    """
    if group is None:
        return "the prediction"
    name = class_names[group] if class_names and group < len(class_names) else str(group)
    return f"the prediction of {name!r}"


def group_name(group: int | None, class_names: Sequence[str] | None = None) -> str:
    """The probes of a group: "probes", or "probes predicted as 'cat'"."""
    if group is None:
        return "probes"
    name = class_names[group] if class_names and group < len(class_names) else str(group)
    return f"probes predicted as {name!r}"


@dataclass(frozen=True, kw_only=True)
class Example:
    """One probe a finding rests on and what the interventions did to it, with the numbers
    the alarm computed (the evidence picture draws them as they are).

    ``probe`` explained as ``target`` with probability ``before``; its ``box`` occluded gave
    ``after``, kept alone ``kept``. ``partner`` is the other probe of an intervention (the
    recipient of a transplant, the donor of colours or of a background) and ``partner_box``
    the place occluded in it first; the intervention made the changed image predict
    ``moved_to`` and gave ``moved_p`` to the class it tests (``target`` of the donor); its
    control (``control_box``, ``control_partner``) predicted ``control_to`` and gave
    ``control_p``; a second control, the region ``other_box`` of the probe ``other``,
    ``other_to`` and ``other_p``. A region of any shape is ``region`` (``control_region``
    for its control), flat token indices.
    """

    probe: int
    target: int
    before: float
    box: Box | None = None
    after: float | None = None
    kept: float | None = None
    partner: int | None = None
    partner_box: Box | None = None
    moved_to: int | None = None
    moved_p: float | None = None
    control_box: Box | None = None
    control_partner: int | None = None
    control_to: int | None = None
    control_p: float | None = None
    other: int | None = None
    other_box: Box | None = None
    other_to: int | None = None
    other_p: float | None = None
    #: a region of any shape (flat token indices on the grid), where ``box`` is not enough:
    #: the pasted mark, its control's region
    region: tuple[int, ...] | None = None
    control_region: tuple[int, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Finding:
    """What one kind of evidence confirmed in one group of probes (``group``: the predicted
    class, None for all probes; ``probes``: the group's size). Each kind subclasses it with
    its numbers, its sentence (:meth:`describe`) and what to do about it (:meth:`remedy`)."""

    kind: str = ""
    group: int | None
    probes: int
    #: a few probes the finding rests on, for the evidence picture (equality ignores them)
    examples: tuple[Example, ...] = field(default=(), compare=False, repr=False)

    @property
    def strength(self) -> float:
        """How strongly the finding holds, for ordering (higher first)."""
        return 0.0

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        """The finding with its numbers (the report, the logged finding)."""
        raise NotImplementedError

    def summary(self, class_names: Sequence[str] | None = None) -> str:
        """What the prediction hangs on, in a few words (the warning's one sentence)."""
        return self.describe(class_names)

    def remedy(self) -> str:
        return ""


@dataclass(frozen=True, kw_only=True)
class Suspect(Finding):
    """A place whose occlusion collapses the prediction on most probes of a group.

    ``box`` is the place on the ``grid``; ``group`` is the class index of the probes tested
    (None: all probes); ``hits`` of ``probes`` lost at least ``min_drop`` of their
    predicted-class probability; ``mean_drop`` is the group's mean relative drop. Where the
    place must also be sufficient (a box, a token inside the image), ``kept`` of the hit
    probes kept at least ``min_drop`` of it with the place alone.

    Example:
        >>> s = Suspect(box=(0, 1, 3, 4), grid=(4, 4), group=None, probes=5, hits=4,
        ...             mean_drop=0.73)
        >>> s.describe()  # doctest: +NORMALIZE_WHITESPACE
        'occluding token row 0, column 3 (on the top-right corner) drops the predicted-class
        probability by 0.73 on average and by at least half on 4 of 5 probes'
    """

    kind: str = "place"
    box: Box
    grid: tuple[int, int]
    hits: int
    mean_drop: float
    min_drop: float = 0.5
    kept: int = 0

    @property
    def row(self) -> int:
        return self.box[0]

    @property
    def col(self) -> int:
        return self.box[2]

    @property
    def at_least(self) -> str:
        """How the warning says ``min_drop``: "half", or a percentage."""
        return "half" if self.min_drop == 0.5 else f"{self.min_drop:.0%}"

    @property
    def strength(self) -> float:
        return self.hits / max(1, self.probes)

    def who(self, class_names: Sequence[str] | None = None) -> str:
        """The probes tested: "probes", or "probes predicted as 'cat'"."""
        return group_name(self.group, class_names)

    def remedy(self) -> str:
        return (
            "look at that place in the probes: a watermark, a border or a logo there that"
            " names the class is a shortcut; remove or mask it in the data"
        )

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        return (
            f"occluding {place_name(self.box, self.grid)} drops the predicted-class"
            f" probability by {self.mean_drop:.2f} on average and by at least {self.at_least}"
            f" on {self.hits} of {self.probes} {self.who(class_names)}{self._kept()}"
        )

    def summary(self, class_names: Sequence[str] | None = None) -> str:
        return (
            f"{prediction_of(self.group, class_names)} hangs on {place_name(self.box, self.grid)}"
        )

    def _kept(self) -> str:
        if not needs_sufficiency(self.box, self.grid):
            return ""
        alone = "token" if is_token(self.box) else "box"
        return (
            f", and {self.kept} of them kept at least {self.at_least} of it with the {alone} alone"
        )


def describe_place(suspects: Sequence[Suspect], class_names: Sequence[str] | None) -> str:
    """One reason per place: the groups confirmed at the same place share one sentence."""
    if len(suspects) == 1:
        return suspects[0].describe(class_names)
    first = suspects[0]
    groups = ", ".join(
        f"{s.hits} of {s.probes} {s.who(class_names)} (by {s.mean_drop:.2f} on average)"
        for s in suspects
    )
    return (
        f"occluding {place_name(first.box, first.grid)} drops the predicted-class"
        f" probability by at least {first.at_least} on {groups}"
    )


def shortcut_message(
    values: Mapping[str, float],
    mean_map: torch.Tensor,
    epoch: int,
    step: int,
    hotspot_threshold: float | None = None,
    energy_threshold: float | None = None,
    suspects: Sequence[Finding] = (),
    class_names: Sequence[str] | None = None,
    where: str | None = None,
    held: bool = False,
) -> str | None:
    """The warning for one evaluation, or None: what the first confirmed finding says the
    prediction hangs on and what to do about it, in one line (how many more findings there
    are; every finding's numbers go to the evidence picture, the report and the logged
    findings),
    ``hotspot_ratio`` above ``hotspot_threshold`` and, with masks, ``energy_in_mask`` below
    ``energy_threshold``. ``where`` replaces "at epoch E (step S)" (e.g. outside fit);
    ``held``: the findings are an earlier check's, which this one did not confirm."""
    reasons = []
    if suspects:
        first = suspects[0]
        more = len(suspects) - 1
        extra = f"; {more} more finding{'s' if more > 1 else ''}" if more else ""
        extra += "; held from an earlier check, not confirmed at this one" if held else ""
        reasons.append(f"{first.summary(class_names)} ({first.kind} evidence{extra})")
    ratio, energy = values.get("hotspot_ratio"), values.get("energy_in_mask")
    if hotspot_threshold is not None and ratio is not None and ratio > hotspot_threshold:
        reasons.append(f"hotspot ratio {ratio:.2f} > {hotspot_threshold}")
    if energy_threshold is not None and energy is not None and energy < energy_threshold:
        reasons.append(f"energy in the object masks {energy:.2f} < {energy_threshold}")
    if not reasons:
        return None
    where = where or f"at epoch {epoch} (step {step})"
    text = f"ViTReciproCAMCallback: possible shortcut {where}: " + "; ".join(reasons)
    if not suspects:
        row, col, border = hotspot_location(mean_map)
        place = f"on the {border}" if border else "inside the image"
        text += f"; the mean saliency peaks at token row {row}, column {col} ({place})"
    else:
        remedy = suspects[0].remedy()
        text += f". What to do: {remedy}" if remedy else ""
        text += " (the evidence: vitrcam/shortcut_evidence and the report)"
    return text
