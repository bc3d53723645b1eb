"""Evidence that the prediction follows the background, where object masks are known (beyond
the paper).

A model that learned the background of a class (water behind boats, a hospital's bed behind
its patients) predicts the background's class for any object placed on it. Where the batches
carry object masks, each probe's object (the recipient's) is moved onto the background of a
probe of another predicted class (the donor's; its own object filled with its background's
mean colour) and the prediction is read again; a *control* moves the object onto the
background of another probe of its own predicted class, the same compositing with no change of
class. A group of donors (all, or one predicted class) is confirmed when the moves to other
backgrounds bring at least ``min_margin`` more of the objects to the donor's class than the
controls change predictions at all (of the pairs the two tell apart, an exact sign test at
``max_p``), on at least ``min_hits`` objects. Without masks this kind
does nothing. Scalars: ``shortcut_background``, the margin of the strongest confirmed group (0
without a finding), and ``shortcut_background_pairs``, the pairs tested.

Example:
    >>> import torch
    >>> from lightning_vitrcam.shortcut import ShortcutAlarm
    >>> masks = torch.zeros(12, 16, 16, dtype=torch.bool); masks[:, 4:12, 4:12] = True
    >>> def scenery(x):  # reads the colour around the centre, where the objects are not
    ...     return 20 * (x * ~masks[:1, None]).mean(dim=(2, 3))
    >>> g = torch.Generator().manual_seed(0)
    >>> images = torch.rand(12, 3, 16, 16, generator=g) * 0.2
    >>> images[torch.arange(12), torch.arange(12) % 3] += 0.6  # the background names the class
    >>> images[:, :, 4:12, 4:12] = torch.rand(12, 3, 1, 1, generator=g)  # objects: any colour
    >>> verdict = ShortcutAlarm(kinds=["background"]).check(
    ...     scenery, lambda z: z.softmax(-1), images, [torch.rand(12, 4, 4, generator=g)],
    ...     scenery(images).argmax(1), torch.ones(12).bool(), masks=masks)
    >>> [(f.kind, f.group) for f in verdict.suspects]
    [('background', None)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lightning_vitrcam.shortcut.colour import donor_pairs, own_class_partners
from lightning_vitrcam.shortcut.evidence import (
    Evidence,
    Findings,
    PairTest,
    Probing,
    register_evidence,
)
from lightning_vitrcam.shortcut.interventions import move_object
from lightning_vitrcam.shortcut.report import Example, Finding, group_name
from lightning_vitrcam.shortcut.rule import Rule, margin, sign_test

__all__ = ["Background", "BackgroundFinding"]


@dataclass(frozen=True, kw_only=True)
class BackgroundFinding(Finding):
    """Moved onto the donors' backgrounds, ``flips`` of ``pairs`` objects were predicted as
    the donor's class; moved onto backgrounds of their own class, ``control_flips`` changed."""

    kind: str = "background"
    pairs: int
    flips: int
    control_flips: int

    @property
    def strength(self) -> float:
        return (self.flips - self.control_flips) / max(1, self.pairs)

    def summary(self, class_names: Sequence[str] | None = None) -> str:
        return "the prediction follows the background"

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        donors = "other probes" if self.group is None else group_name(self.group, class_names)
        return (
            f"the prediction follows the background: moved onto the backgrounds of {donors},"
            f" {self.flips} of {self.pairs} objects of other classes are predicted as the"
            f" background's class (moved onto a background of their own class:"
            f" {self.control_flips} moved there)"
        )

    def remedy(self) -> str:
        return (
            "a background that differs by class is a shortcut: collect or synthesise images"
            " of each class on the others' backgrounds"
        )


@register_evidence("background")
class Background(Evidence):
    """See the module docstring (one pair per probe). Reads ``min_margin`` and ``max_p`` from
    the alarm."""

    def __init__(self, alarm: Any) -> None:
        super().__init__(alarm)
        #: the last check's pairs and outcomes (for pictures and study)
        self.last: dict[str, Any] = {}

    def check(self, probing: Probing, rule: Rule) -> Findings:
        if probing.masks is None:
            self.last = {}
            return Findings()
        images, targets = probing.images, probing.targets
        masks = probing.masks.to(images.device).float()
        if tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
            masks = F.interpolate(masks[:, None], size=images.shape[-2:], mode="nearest")[:, 0]
        masks = masks > 0.5
        picked = probing.cache.predicts(probing.scores)
        donors, objects = donor_pairs(picked, targets, 1)
        partners = own_class_partners(picked, targets)[objects]
        valid = partners != objects  # a control needs another probe of the object's class
        if not len(donors):
            return Findings(scalars={"shortcut_background": 0.0, "shortcut_background_pairs": 0.0})
        moved = move_object(images, masks, objects, donors)
        # a control only where the object's class has another probe (else it is the probe)
        control = move_object(images, masks, objects[valid], partners[valid])
        predicted, scores = probing.predicted(torch.cat([moved, control]))
        p = len(donors)
        flips = predicted[:p].gather(1, targets[donors][:, None])[:, 0]
        control_scores = torch.zeros_like(scores[:p])
        control_scores[valid] = scores[p:]
        scores = torch.cat([scores[:p], control_scores])
        tested = scores.gather(1, targets[donors].repeat(2)[:, None])[:, 0]
        # like for like: the control counts a move to the donor's class too
        changed = torch.zeros_like(valid)
        changed[valid] = predicted[p:].gather(1, targets[donors[valid]][:, None])[:, 0]
        self.last = {"donors": donors, "objects": objects, "partners": partners, "flips": flips,
                     "control_flips": changed}  # fmt: skip
        findings, best = [], 0.0
        for group, members in probing.groups:
            mine = members[donors]
            if not bool((mine & valid).any()):
                continue
            f, c = flips[mine & valid], changed[mine & valid]
            moved_more = margin(f, c)
            significant = sign_test(f, c) <= self.alarm.max_p
            if (
                moved_more >= self.alarm.min_margin
                and significant
                and int(f.sum()) >= rule.min_hits
            ):
                best = max(best, moved_more)
                findings.append(
                    BackgroundFinding(
                        group=group,
                        probes=int(members.sum()),
                        pairs=int((mine & valid).sum()),
                        flips=int(f.sum()),
                        control_flips=int(c.sum()),
                        examples=tuple(
                            Example(
                                probe=int(objects[k]),
                                target=int(targets[donors[k]]),
                                before=float(probing.scores[objects[k], targets[donors[k]]]),
                                partner=int(donors[k]),
                                moved_to=int(scores[k].argmax()),
                                moved_p=float(tested[k]),
                                control_partner=int(partners[k]),
                                control_to=int(scores[p + k].argmax()),
                                control_p=float(tested[p + k]),
                            )
                            for k in (mine & valid & flips).nonzero().flatten().tolist()[:4]
                        ),
                    )
                )
        everyone = [f for f in findings if f.group is None]
        tests = [
            PairTest("background", d, r, t, m, c)
            for d, r, t, m, c in zip(donors.tolist(), objects.tolist(),
                                     probing.targets[donors].tolist(), flips.tolist(),
                                     changed.tolist(), strict=True)
        ]  # fmt: skip
        scalars = {"shortcut_background": best, "shortcut_background_pairs": float(p)}
        return Findings(everyone or findings, tests, scalars)
