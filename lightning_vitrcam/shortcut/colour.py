"""Evidence that the prediction follows the image's colour (beyond the paper).

A scanner, a camera or a hospital that tints the whole image can name the class without any
small region carrying it. So each probe (the recipient) is given the per-channel mean and
standard deviation of a probe of another predicted class (the donor) and the prediction is
read again. Two *controls* change the recipient's colour as well: one moves its statistics by
as much in a random direction, one gives it the statistics of another probe of its own
predicted class (a natural change that carries no other class: a model that merely follows
brightness is moved by it as often). A group of donors (all, or one predicted class) is
confirmed when the swaps move at least ``min_margin`` more of their recipients to the donor's
class than either control moves to that class (like for like; of the pairs the two tell
apart, an exact sign test at ``max_p`` against each), on at least ``min_hits`` recipients.
Colour can be a legitimate feature of a task (ripe and unripe fruit): then leave this kind out
(``ShortcutAlarm(kinds=[...])``). The controls run only where the swaps alone moved enough
recipients to confirm. Scalars: ``shortcut_colour``, the margin of the strongest confirmed
group (0 without a finding), and ``shortcut_colour_pairs``, the swaps tested.

Example:
    >>> import torch
    >>> from lightning_vitrcam.shortcut import ShortcutAlarm
    >>> def tint(x):  # the class is the dominant channel of the whole image
    ...     return 20 * x.mean(dim=(2, 3))
    >>> g = torch.Generator().manual_seed(0)
    >>> images = torch.rand(12, 3, 16, 16, generator=g)
    >>> images[torch.arange(12), torch.arange(12) % 3] += 0.5
    >>> verdict = ShortcutAlarm(kinds=["colour"]).check(
    ...     tint, lambda z: z.softmax(-1), images, [torch.rand(12, 4, 4, generator=g)],
    ...     tint(images).argmax(1), torch.ones(12).bool())
    >>> [(f.kind, f.group) for f in verdict.suspects]
    [('colour', None)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_vitrcam.shortcut.evidence import (
    Evidence,
    Findings,
    PairTest,
    Probing,
    register_evidence,
)
from lightning_vitrcam.shortcut.interventions import colour_shift, colour_swap
from lightning_vitrcam.shortcut.report import Example, Finding, group_name
from lightning_vitrcam.shortcut.rule import Rule, margin, sign_test

__all__ = ["ColourFinding", "ImageColour", "donor_pairs", "own_class_partners"]


def donor_pairs(
    picked: torch.Tensor, targets: torch.Tensor, per: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(donors, recipients)``: for each probe as a recipient, ``per`` donors whose explained
    class the recipient is not predicted as, spread evenly over the candidates.

    Example:
        >>> picked = torch.eye(3).bool()[[0, 0, 1, 2]]
        >>> [t.tolist() for t in donor_pairs(picked, torch.tensor([0, 0, 1, 2]), 1)]
        [[2, 3, 3, 0], [0, 1, 2, 3]]
    """
    donors, recipients = [], []
    n = len(targets)
    for r in range(n):
        candidates = [d for d in range(n) if not bool(picked[r, targets[d]])]
        for m in range(min(per, len(candidates))):
            donors.append(candidates[(r * per + m) % len(candidates)])
            recipients.append(r)
    device = targets.device
    return (
        torch.tensor(donors, dtype=torch.long, device=device),
        torch.tensor(recipients, dtype=torch.long, device=device),
    )


def own_class_partners(picked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N]``: for each probe another probe predicted as its explained class (itself where
    there is none).

    Example:
        >>> picked = torch.eye(3).bool()[[0, 0, 1, 0]]
        >>> own_class_partners(picked, torch.tensor([0, 0, 1, 0])).tolist()
        [1, 3, 2, 1]
    """
    n = len(targets)
    out = []
    for r in range(n):
        same = [k for k in range(n) if k != r and bool(picked[k, targets[r]])]
        out.append(same[r % len(same)] if same else r)
    return torch.tensor(out, dtype=torch.long, device=targets.device)


@dataclass(frozen=True, kw_only=True)
class ColourFinding(Finding):
    """Given donors' colour statistics, ``flips`` of ``pairs`` recipients were predicted as
    the donor's class; the same-size random shifts changed ``control_flips`` predictions, the
    statistics of another probe of the recipient's own class ``own_flips`` of ``own_pairs``."""

    kind: str = "colour"
    pairs: int
    flips: int
    control_flips: int
    own_flips: int = 0
    own_pairs: int = 0

    @property
    def strength(self) -> float:
        return (self.flips - max(self.control_flips, self.own_flips)) / max(1, self.pairs)

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        donors = "other probes" if self.group is None else group_name(self.group, class_names)
        return (
            f"the prediction follows the image's colour: given the per-channel colour"
            f" statistics of {donors}, {self.flips} of {self.pairs} probes of other classes"
            f" are predicted as the donor's class (a random colour change of the same size"
            f" moves {self.control_flips} of them there, the colours of another probe of their"
            f" own class {self.own_flips} of {self.own_pairs})"
        )

    def summary(self, class_names: Sequence[str] | None = None) -> str:
        return "the prediction follows the image's colour"

    def remedy(self) -> str:
        return (
            "a tint, a scanner or a camera that differs by class is a shortcut: normalise"
            " colour per image or augment it; if colour is a legitimate feature of your"
            " classes, leave this test out with"
            " ShortcutAlarm(kinds=['region', 'mark', 'background'])"
        )


def _examples(
    probing: Probing,
    chosen: torch.Tensor,
    donors: torch.Tensor,
    recipients: torch.Tensor,
    scores: torch.Tensor,
    tested: torch.Tensor,
    most: int = 4,
) -> tuple[Example, ...]:
    """Up to ``most`` pairs whose swap moved the recipient: the recipient (``probe``), the
    donor of the colours (``partner``), what the swap and its control predicted."""
    p = len(donors)
    out = []
    for k in chosen.nonzero().flatten().tolist()[:most]:
        r, d = int(recipients[k]), int(donors[k])
        out.append(
            Example(
                probe=r,
                target=int(probing.targets[d]),
                before=float(probing.scores[r, probing.targets[d]]),
                partner=d,
                moved_to=int(scores[k].argmax()),
                moved_p=float(tested[k]),
                control_partner=r,
                control_to=int(scores[p + k].argmax()),
                control_p=float(tested[p + k]),
            )
        )
    return tuple(out)


@register_evidence("colour")
class ImageColour(Evidence):
    """See the module docstring (one pair per probe). Reads ``min_margin`` and ``max_p`` from
    the alarm."""

    def __init__(self, alarm: Any) -> None:
        super().__init__(alarm)
        #: the last check's pairs and outcomes (for pictures and study)
        self.last: dict[str, Any] = {}

    def check(self, probing: Probing, rule: Rule) -> Findings:
        picked = probing.cache.predicts(probing.scores)
        donors, recipients = donor_pairs(picked, probing.targets, 1)
        if not len(donors):
            return Findings(scalars={"shortcut_colour": 0.0, "shortcut_colour_pairs": 0.0})
        images = probing.images
        p = len(donors)
        to_donor = probing.targets[donors][:, None]
        predicted, scores = probing.predicted(colour_swap(images, recipients, donors))
        flips = predicted.gather(1, to_donor)[:, 0]
        # the controls run only where the swaps alone could confirm: a margin over a control
        # is at most the share of recipients the swaps moved
        if int(flips.sum()) < max(rule.min_hits, self.alarm.min_margin * p):
            self.last = {"donors": donors, "recipients": recipients, "flips": flips}
            return Findings(scalars={"shortcut_colour": 0.0, "shortcut_colour_pairs": float(p)})
        partners = own_class_partners(picked, probing.targets)[recipients]
        valid = partners != recipients  # the second control needs another probe of its class
        shifted = colour_shift(images, recipients, donors)
        own = colour_swap(images, recipients[valid], partners[valid])
        more, more_scores = probing.predicted(torch.cat([shifted, own]))
        predicted = torch.cat([predicted, more])
        scores = torch.cat([scores, more_scores])
        tested = scores[: 2 * p].gather(1, probing.targets[donors].repeat(2)[:, None])[:, 0]
        # like for like: every test counts a move to the donor's class (a model that reads
        # a ten-way colour code changes class under any colour change, but lands on the
        # donor's class by chance only)
        changed = predicted[p : 2 * p].gather(1, to_donor)[:, 0]
        own_changed = torch.zeros_like(valid)
        own_changed[valid] = predicted[2 * p :].gather(1, to_donor[valid])[:, 0]
        self.last = {"donors": donors, "recipients": recipients, "flips": flips,
                     "control_flips": changed, "own_flips": own_changed,
                     "own_valid": valid}  # fmt: skip
        findings, best = [], 0.0
        for group, members in probing.groups:
            mine = members[donors]
            if not bool((mine & valid).any()):
                continue
            f, c = flips[mine], changed[mine]
            fo, o = flips[mine & valid], own_changed[mine & valid]
            moved_more = min(margin(f, c), margin(fo, o))
            significant = max(sign_test(f, c), sign_test(fo, o)) <= self.alarm.max_p
            if (
                moved_more >= self.alarm.min_margin
                and significant
                and int(f.sum()) >= rule.min_hits
            ):
                best = max(best, moved_more)
                findings.append(
                    ColourFinding(
                        group=group,
                        probes=int(members.sum()),
                        pairs=int(mine.sum()),
                        flips=int(f.sum()),
                        control_flips=int(c.sum()),
                        own_flips=int(o.sum()),
                        own_pairs=int((mine & valid).sum()),
                        examples=_examples(
                            probing, mine & flips, donors, recipients, scores, tested
                        ),  # fmt: skip
                    )
                )
        everyone = [f for f in findings if f.group is None]
        tests = [
            PairTest("colour", d, r, t, m, c, None, o if v else None)
            for d, r, t, m, c, o, v in zip(donors.tolist(), recipients.tolist(),
                                           probing.targets[donors].tolist(), flips.tolist(),
                                           changed.tolist(), own_changed.tolist(),
                                           valid.tolist(), strict=True)
        ]  # fmt: skip
        scalars = {"shortcut_colour": best, "shortcut_colour_pairs": float(p)}
        return Findings(everyone or findings, tests, scalars)
