"""The ``possible shortcut`` alarm (beyond the paper): saliency proposes, occlusion confirms.

A model that learned a shortcut (a watermark, a border, a corner logo) reads one fixed place of
the image whatever the object does. Two facts, measured on the demo's training runs (see
``benchmarks/shortcut_signal.py``), make that testable at the cost of a few forwards:

* **where**: the ViT-ReciproCAM maps of the probes, averaged over all probes and over the probes
  of each predicted class, peak on the shortcut's token, even when the peak is weak (the block
  that reads the cue changes with seed and epoch, so the height of the peak is unreliable,
  its place is not);
* **whether**: occluding that token in the input images (filled with the probes' mean colour)
  collapses the predicted-class probability on most probes of the group, while for a model
  that reads the object the same occlusion changes almost nothing.

:class:`ShortcutAlarm` takes as candidates the peaks of the global and the per-class mean maps,
the places a hierarchical occlusion search finds most often (each probe's grid halved along
both axes, the quarter whose occlusion hurts the probe most kept, down to one token: this finds
the place whichever block reads it, where the explained block's maps are weak or flat, as they
were on a held-out average-pooled ViT that read its cue in the first block), and the candidates
of the previous evaluation (a cue the model keeps using is re-tested even when this
evaluation's maps peak elsewhere). It occludes each candidate in the probes of its group in one
batched forward and reports a :class:`Suspect` when the relative drop ``(p - p_occluded) / p``
reaches ``min_drop`` on at least ``min_share`` of the group's probes and on at least
``min_hits`` of them. The ViT-ReciproCAM
pictures are unchanged; this test is the library's own.

Example:
    >>> import torch
    >>> mean_map = torch.zeros(4, 4); mean_map[0, 0] = 1.0
    >>> print(shortcut_message({"hotspot_ratio": 16.0}, mean_map, epoch=2, step=90,
    ...                        hotspot_threshold=4.0))  # doctest: +NORMALIZE_WHITESPACE
    ViTReciproCAMCallback: possible shortcut at epoch 2 (step 90): hotspot ratio 16.00 > 4.0;
    the mean saliency peaks at token row 0, column 0 (on the top-left corner)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_vitrcam.metrics import hotspot_location, mean_saliency_map

__all__ = [
    "PossibleShortcutWarning",
    "ShortcutAlarm",
    "Suspect",
    "occlude",
    "occlude_boxes",
    "shortcut_message",
]


class PossibleShortcutWarning(UserWarning):
    """The model's prediction hangs on one fixed place of the image (or the saliency left the
    object masks)."""


def _place(row: int, col: int, h: int, w: int) -> str:
    grid = torch.zeros(h, w)
    grid[row, col] = 1.0
    where = hotspot_location(grid)[2]
    return f"token row {row}, column {col} ({'on the ' + where if where else 'inside the image'})"


@dataclass(frozen=True)
class Suspect:
    """A token whose occlusion collapses the prediction on most probes of a group.

    ``group`` is the class index of the probes tested (None: all probes); ``hits`` of
    ``probes`` lost at least ``min_drop`` of their predicted-class probability;
    ``mean_drop`` is the group's mean relative drop.
    """

    row: int
    col: int
    grid: tuple[int, int]
    group: int | None
    probes: int
    hits: int
    mean_drop: float
    min_drop: float = 0.5

    @property
    def _at_least(self) -> str:
        return "half" if self.min_drop == 0.5 else f"{self.min_drop:.0%}"

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        return (
            f"occluding {_place(self.row, self.col, *self.grid)} drops the predicted-class"
            f" probability by {self.mean_drop:.2f} on average and by at least {self._at_least} on"
            f" {self.hits} of {self.probes} {self._who(class_names)}"
        )

    def _who(self, class_names: Sequence[str] | None) -> str:
        if self.group is None:
            return "probes"
        name = class_names[self.group] if class_names else str(self.group)
        return f"probes predicted as {name!r}"


def _describe_place(suspects: Sequence[Suspect], class_names: Sequence[str] | None) -> str:
    """One reason per place: the groups confirmed at the same token share one sentence."""
    if len(suspects) == 1:
        return suspects[0].describe(class_names)
    first = suspects[0]
    groups = ", ".join(
        f"{s.hits} of {s.probes} {s._who(class_names)} (by {s.mean_drop:.2f} on average)"
        for s in suspects
    )
    return (
        f"occluding {_place(first.row, first.col, *first.grid)} drops the predicted-class"
        f" probability by at least {first._at_least} on {groups}"
    )


def occlude_boxes(
    images: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Copies ``images[rows]``, each with the token box ``boxes[i] = (r0, r1, c0, c1)`` (rows
    ``r0 <= r < r1``, columns ``c0 <= c < c1`` of the ``h x w`` grid) filled with the images'
    per-channel mean, all in one tensor operation.

    Example:
        >>> x = torch.zeros(1, 1, 4, 4); x[0, 0, 0, 0] = 16.0
        >>> occlude_boxes(x, torch.tensor([0]), torch.tensor([[1, 2, 0, 2]]), (2, 2))[0, 0]
        tensor([[16.,  0.,  0.,  0.],
                [ 0.,  0.,  0.,  0.],
                [ 1.,  1.,  1.,  1.],
                [ 1.,  1.,  1.,  1.]])
    """
    h, w = grid
    H, W = images.shape[-2:]
    fill = images.mean(dim=(0, 2, 3), keepdim=True)
    # pixel -> token cell; exact for patch grids, nearest cell when H or W is not a multiple
    cell_r = ((torch.arange(H, device=images.device) * h) // H).view(1, H, 1)
    cell_c = ((torch.arange(W, device=images.device) * w) // W).view(1, 1, W)
    r0, r1, c0, c1 = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    inside = (cell_r >= r0) & (cell_r < r1) & (cell_c >= c0) & (cell_c < c1)
    return torch.where(inside[:, None], fill.to(images.dtype), images[rows])


def occlude(
    images: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """:func:`occlude_boxes` of single tokens (row-major indices ``tokens`` on the grid).

    Example:
        >>> x = torch.ones(2, 1, 4, 4); x[1] = 3.0
        >>> out = occlude(x, torch.tensor([0, 1]), torch.tensor([0, 3]), (2, 2))
        >>> out[0, 0, :2, :2].tolist(), out[1, 0, 2:, 2:].tolist(), float(out[1, 0, 0, 0])
        ([[2.0, 2.0], [2.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]], 3.0)
    """
    r, c = tokens // grid[1], tokens % grid[1]
    return occlude_boxes(images, rows, torch.stack([r, r + 1, c, c + 1], dim=1), grid)


def _mode(tokens: torch.Tensor) -> int:
    values, counts = tokens.unique(return_counts=True)
    return int(values[counts.argmax()])


class ShortcutAlarm:
    """Finds tokens the model's predictions hang on; see the module docstring.

    Args:
        min_drop: relative drop of the predicted-class probability that counts as a hit.
        min_share: share of a group's probes that must be hit. Half, not most: a model that
            is counted as using a shortcut (validation accuracy >= 0.9 while accuracy without
            the cue is <= 0.5) may already answer from the object on up to half of its probes
            while it moves off the cue; a 70% share missed 2 such evaluations of 30 on the
            stripes grid of ``benchmarks/shortcut_signal.py``.
        min_hits: fewest hit probes that confirm a place, whatever the group's size; 3, the
            smallest group tested, so that a place never rests on two probes (on clean
            training runs of the demo data the object made 2 of 4 probes of a class collapse
            at one token in 4 of 132 clean evaluations; 3 of 8 was the most with 3 hits).
        min_group: smallest group of probes a per-class candidate is tested on.
        max_batch: images per forward of the occlusion test.
        search: also propose the places found by a hierarchical occlusion search (each probe's
            grid halved along both axes, the quarter whose occlusion drops the probe's score
            most kept, down to one token: ``4 * ceil(log2(max(h, w)))`` occluded copies per
            probe, 12 on an 8x8 grid). It finds the place whichever block reads it, where the
            maps of the explained block are weak or flat.

    Example:
        >>> alarm = ShortcutAlarm()
        >>> alarm.state_dict()
        {'candidates': []}
    """

    def __init__(
        self,
        min_drop: float = 0.5,
        min_share: float = 0.5,
        min_hits: int = 3,
        min_group: int = 3,
        max_batch: int = 128,
        search: bool = True,
    ) -> None:
        if not 0.0 < min_drop <= 1.0 or not 0.0 < min_share <= 1.0:
            raise ValueError(
                f"min_drop and min_share must be in (0, 1], got {min_drop} and {min_share}"
            )
        if min_hits < 1:
            raise ValueError(f"min_hits must be at least 1, got {min_hits}")
        self.min_drop = min_drop
        self.min_share = min_share
        self.min_hits = min_hits
        self.min_group = min_group
        self.max_batch = max_batch
        self.search = search
        # (token, class or None) tested last time: a cue the model keeps using is re-tested
        self._remembered: list[tuple[int, int | None]] = []
        #: every candidate of the last :meth:`check`: ``{"token", "group", "drops"}`` with
        #: each tested probe's relative drop, so a rule can be studied offline
        self.last_tests: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"candidates": [list(c) for c in self._remembered]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._remembered = [(int(t), None if g is None else int(g)) for t, g in state["candidates"]]

    def confirms(self, drops: torch.Tensor) -> tuple[int, bool]:
        """``(hits, confirmed)`` for one candidate's per-probe relative drops in one group:
        a hit is a drop of at least ``min_drop``; the place is confirmed with at least
        ``min_share`` of the group and at least ``min_hits`` probes hit.

        Example:
            >>> alarm = ShortcutAlarm(min_share=0.5, min_hits=3)
            >>> alarm.confirms(torch.tensor([0.9, 0.8, 0.1, 0.0]))
            (2, False)
        """
        hits = int((drops >= self.min_drop).sum())
        return hits, hits >= max(self.min_share * drops.numel(), self.min_hits)

    def _groups(self, targets: torch.Tensor) -> list[tuple[int | None, torch.Tensor]]:
        groups: list[tuple[int | None, torch.Tensor]] = [(None, torch.ones_like(targets).bool())]
        classes, counts = targets.unique(return_counts=True)
        for c, k in zip(classes.tolist(), counts.tolist(), strict=True):
            if k >= self.min_group and k < targets.numel():
                groups.append((int(c), targets == c))
        return groups

    def candidates(
        self, maps: Sequence[torch.Tensor], targets: torch.Tensor, informative: torch.Tensor
    ) -> list[tuple[int, int | None]]:
        """``(token, class or None)`` pairs: the peak of the mean of the informative maps of
        every group, for each batch of maps given (e.g. one per explained block), then the
        remembered ones."""
        found: list[tuple[int, int | None]] = []
        for group, members in self._groups(targets):
            keep = (members & informative).float()
            if not bool(keep.any()):
                continue
            for batch in maps:
                mean_map = mean_saliency_map(batch * keep[:, None, None])
                found.append((int(mean_map.flatten().argmax()), group))
        present = {g for g, _ in self._groups(targets)}
        found += [c for c in self._remembered if c[1] in present]
        return list(dict.fromkeys(found))

    def _scores(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        batch: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """Each image's score of its target class, ``max_batch`` images per forward."""
        logits = torch.cat([forward(chunk) for chunk in batch.split(self.max_batch)])
        return score(logits.float()).gather(1, targets[:, None]).squeeze(1)

    def search_tokens(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        targets: torch.Tensor,
        p0: torch.Tensor,
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """``[N]``: each probe's most sensitive token, found by halving its grid box along
        both axes and keeping the quarter whose occlusion drops its score the most."""
        n, device = images.shape[0], images.device
        h, w = grid
        box = torch.tensor([0, h, 0, w], device=device).repeat(n, 1)  # r0, r1, c0, c1
        probes = torch.arange(n, device=device)
        while bool(((box[:, 1] - box[:, 0] > 1) | (box[:, 3] - box[:, 2] > 1)).any()):
            r0, r1, c0, c1 = box.unbind(1)
            rm = torch.where(r1 - r0 > 1, (r0 + r1 + 1) // 2, r1)
            cm = torch.where(c1 - c0 > 1, (c0 + c1 + 1) // 2, c1)
            quarters = torch.stack(
                [
                    torch.stack([r0, rm, c0, cm], 1),
                    torch.stack([r0, rm, cm, c1], 1),
                    torch.stack([rm, r1, c0, cm], 1),
                    torch.stack([rm, r1, cm, c1], 1),
                ],
                dim=1,
            )  # [n, 4, 4]
            flat = quarters.reshape(-1, 4)
            rows = probes.repeat_interleave(4)
            p = self._scores(forward, score, occlude_boxes(images, rows, flat, grid), targets[rows])
            drop = (p0[rows] - p).view(n, 4)
            empty = ((flat[:, 1] <= flat[:, 0]) | (flat[:, 3] <= flat[:, 2])).view(n, 4)
            best = drop.masked_fill(empty, float("-inf")).argmax(dim=1)
            box = quarters[probes, best]
        return box[:, 0] * w + box[:, 2]

    def check(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        maps: Sequence[torch.Tensor],
        targets: torch.Tensor,
        informative: torch.Tensor,
    ) -> tuple[list[Suspect], float]:
        """Test the candidates on ``images`` (the probes): ``forward`` gives logits,
        ``score`` per-class scores from them (the explainer's ``score_fn``); ``maps`` one or
        more ``[N, h, w]`` batches of the probes' maps, ``targets`` the explained classes.
        Returns the suspects (most probes hit first) and the largest group mean drop of any
        candidate (a continuous signal, 0 without candidates)."""
        grid = tuple(maps[0].shape[-2:])
        p0 = self._scores(forward, score, images, targets)
        pairs = self.candidates(maps, targets, informative)
        if self.search:
            found = self.search_tokens(forward, score, images, targets, p0, grid)  # type: ignore[arg-type]
            for group, members in self._groups(targets):
                pairs.append((_mode(found[members]), group))
            pairs = list(dict.fromkeys(pairs))
        self._remembered = pairs[:12]
        self.last_tests = []
        if not pairs:
            return [], 0.0
        groups = dict(self._groups(targets))
        rows = [groups[g].nonzero().flatten() for _, g in pairs]
        tokens = torch.cat([torch.full_like(r, t) for r, (t, _) in zip(rows, pairs, strict=True)])
        rows_all = torch.cat(rows)
        occluded = occlude(images, rows_all, tokens, grid)  # type: ignore[arg-type]
        p_occ = self._scores(forward, score, occluded, targets[rows_all])
        drop = ((p0[rows_all] - p_occ) / p0[rows_all].clamp_min(1e-12)).clamp(-1.0, 1.0)
        sizes = [len(r) for r in rows]
        drop = drop.cpu()  # a few dozen numbers, read one by one below: one transfer
        suspects, worst = [], 0.0
        for (token, group), part in zip(pairs, drop.split(sizes), strict=True):
            self.last_tests.append({"token": token, "group": group, "drops": part.tolist()})
            (hits, confirmed), mean = self.confirms(part), float(part.mean())
            worst = max(worst, mean)
            if confirmed:
                row, col = divmod(token, grid[1])
                suspects.append(
                    Suspect(row, col, grid, group, len(part), hits, mean, self.min_drop)  # type: ignore[arg-type]
                )
        # a place confirmed on all probes needs no repeat for each class
        everyone = {(s.row, s.col) for s in suspects if s.group is None}
        suspects = [s for s in suspects if s.group is None or (s.row, s.col) not in everyone]
        suspects.sort(key=lambda s: (s.group is not None, -s.hits / s.probes, -s.mean_drop))
        return suspects, worst


def shortcut_message(
    values: Mapping[str, float],
    mean_map: torch.Tensor,
    epoch: int,
    step: int,
    hotspot_threshold: float | None = None,
    energy_threshold: float | None = None,
    suspects: Sequence[Suspect] = (),
    class_names: Sequence[str] | None = None,
) -> str | None:
    """The warning for one evaluation, or None: the confirmed ``suspects`` (see
    :class:`ShortcutAlarm`), ``hotspot_ratio`` above ``hotspot_threshold`` and, with masks,
    ``energy_in_mask`` below ``energy_threshold``."""
    places: dict[tuple[int, int], list[Suspect]] = {}
    for s in suspects:
        places.setdefault((s.row, s.col), []).append(s)
    reasons = [_describe_place(group, class_names) for group in list(places.values())[:3]]
    ratio, energy = values.get("hotspot_ratio"), values.get("energy_in_mask")
    if hotspot_threshold is not None and ratio is not None and ratio > hotspot_threshold:
        reasons.append(f"hotspot ratio {ratio:.2f} > {hotspot_threshold}")
    if energy_threshold is not None and energy is not None and energy < energy_threshold:
        reasons.append(f"energy in the object masks {energy:.2f} < {energy_threshold}")
    if not reasons:
        return None
    text = f"ViTReciproCAMCallback: possible shortcut at epoch {epoch} (step {step}): " + "; ".join(
        reasons
    )
    if not suspects:
        row, col, border = hotspot_location(mean_map)
        place = f"on the {border}" if border else "inside the image"
        text += f"; the mean saliency peaks at token row {row}, column {col} ({place})"
    return text
