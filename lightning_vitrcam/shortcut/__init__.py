"""The ``possible shortcut`` alarm (beyond the paper).

* :mod:`~lightning_vitrcam.shortcut.alarm`: :class:`ShortcutAlarm` (settings; propose, score,
  judge, remember) and its :class:`Verdict`;
* :mod:`~lightning_vitrcam.shortcut.evidence`: what every kind of evidence reads, and the
  registry a new kind joins;
* one module per kind of evidence: :mod:`~lightning_vitrcam.shortcut.region` (a small
  region that carries its class, fixed or moving), :mod:`~lightning_vitrcam.shortcut.colour`
  (the image's colour), :mod:`~lightning_vitrcam.shortcut.background` (the background, where
  object masks are known), :mod:`~lightning_vitrcam.shortcut.fixed_place` (a cue at one
  fixed place, with its border and sufficiency conditions; opt-in);
* :mod:`~lightning_vitrcam.shortcut.proposals`: map peaks, the occlusion search, the memory;
* :mod:`~lightning_vitrcam.shortcut.interventions`: occluding and keeping places, each copy
  scored once;
* :mod:`~lightning_vitrcam.shortcut.rule`: the confirmation rule, a pure function of the
  recorded drops;
* :mod:`~lightning_vitrcam.shortcut.report`: :class:`Suspect` and the warning's text;
* :mod:`~lightning_vitrcam.shortcut.places`: boxes on the token grid and their names.

How it works, why, its benchmark and its blind spots: ``docs/shortcut_alarm.md``.
"""

from lightning_vitrcam.shortcut.alarm import ShortcutAlarm, Verdict
from lightning_vitrcam.shortcut.evidence import (
    Evidence,
    Findings,
    PairTest,
    Probing,
    RegionTest,
    register_evidence,
)
from lightning_vitrcam.shortcut.interventions import keep_boxes, occlude_boxes
from lightning_vitrcam.shortcut.report import (
    Finding,
    PossibleShortcutWarning,
    Suspect,
    shortcut_message,
)
from lightning_vitrcam.shortcut.rule import PlaceTest, Rule

__all__ = [
    "Evidence",
    "Finding",
    "Findings",
    "PairTest",
    "PlaceTest",
    "PossibleShortcutWarning",
    "Probing",
    "RegionTest",
    "Rule",
    "ShortcutAlarm",
    "Suspect",
    "Verdict",
    "keep_boxes",
    "occlude_boxes",
    "register_evidence",
    "shortcut_message",
]
