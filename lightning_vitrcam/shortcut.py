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
the places a hierarchical occlusion search finds most often (four overlapping corner windows
of each probe's box occluded at each level, each a little over half the box, the one that
hurts the probe most kept, down to one token: this finds the place whichever block reads it,
where the explained block's maps are weak or flat, as they were on a held-out average-pooled
ViT that read its cue in the first block), and the candidates of the previous evaluation (a
cue the model keeps using is re-tested even when this evaluation's maps peak elsewhere). The
search, most of the alarm's cost, runs only when the maps' and the remembered places confirm
nothing (a search proposes places, so it cannot change whether such an evaluation warns). It
occludes each candidate in the probes of its group, in batched forwards that run every
distinct copy once (a copy the search or another group already scored is looked up; the
callback scores copies with :meth:`~lightning_vitrcam.ViTReciproCAM.predict` and passes the
explanation's logits for the unoccluded probes), and reports a :class:`Suspect` when the
relative drop ``(p - p_occluded) / p`` reaches ``min_drop`` on at least ``min_share`` of the
group's probes and on at least ``min_hits`` of them.

A cue larger than a patch (a logo over 2x2 tokens) survives the occlusion of any one of its
tokens, so boxes of up to ``max_box`` tokens a side are candidates too: the window around each
map peak with the most saliency and the search's small boxes. Occluding a box of the object
can also collapse a clean model's prediction (a filled disc with a hole reads as a ring), so a
box counts only on the probes that also pass a preservation test: the box alone, everything
else filled with the mean colour, keeps at least ``min_drop`` of their predicted-class
probability (a shortcut is sufficient as well as necessary). And boxes are tested only where
they touch the image border: inside the image the middle of an object can be both (a blob
reads as a circle). (Pasting the box into probes of other classes instead fails on
class-specific places: the recipient's own cue competes with the pasted one.) A single token
inside the image must pass the same preservation test: on centred objects the object's
decisive part sits at a fixed token too (a clean run on centred glyphs lost its 'cross'
probes when their central token was occluded); on the border a token counts on occlusion
alone.

The ViT-ReciproCAM pictures are unchanged; these tests are the library's own.

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

from lightning_vitrcam.metrics import border_name, hotspot_location, mean_saliency_map

__all__ = [
    "PossibleShortcutWarning",
    "ShortcutAlarm",
    "Suspect",
    "occlude",
    "occlude_boxes",
    "keep_boxes",
    "shortcut_message",
]


class PossibleShortcutWarning(UserWarning):
    """The model's prediction hangs on one fixed place of the image (or the saliency left the
    object masks)."""


#: a place on the token grid: rows ``r0 <= r < r1``, columns ``c0 <= c < c1``
Box = tuple[int, int, int, int]
# candidates remembered for the next evaluation
_MEMORY = 24


def _place(box: Box, h: int, w: int) -> str:
    r0, r1, c0, c1 = box
    if r1 - r0 == 1 and c1 - c0 == 1:
        what = f"token row {r0}, column {c0}"
    else:
        rows = f"row {r0}" if r1 - r0 == 1 else f"rows {r0}-{r1 - 1}"
        cols = f"column {c0}" if c1 - c0 == 1 else f"columns {c0}-{c1 - 1}"
        what = f"the tokens at {rows}, {cols}"
    where = border_name(r0, r1, c0, c1, h, w)
    return f"{what} ({'on the ' + where if where else 'inside the image'})"


def _is_token(box: Sequence[int]) -> bool:
    return box[1] - box[0] == 1 and box[3] - box[2] == 1


def _on_border(box: Sequence[int], h: int, w: int) -> bool:
    return box[0] == 0 or box[2] == 0 or box[1] == h or box[3] == w


def _needs_sufficiency(box: Sequence[int], grid: Sequence[int] | None) -> bool:
    """Whether a place must also keep the prediction alone to count: a box always, a single
    token inside the image (where a centred object's own decisive part sits); a token on the
    border counts on occlusion alone. Records without a grid predate the rule (tokens: no)."""
    if not _is_token(box):
        return True
    return grid is not None and not _on_border(box, *grid)


@dataclass(frozen=True)
class Suspect:
    """A place whose occlusion collapses the prediction on most probes of a group.

    The place is the token at ``row, col`` or, with ``height`` or ``width`` above 1, the box
    of tokens it spans from there. ``group`` is the class index of the probes tested (None:
    all probes); ``hits`` of ``probes`` lost at least ``min_drop`` of their predicted-class
    probability; ``mean_drop`` is the group's mean relative drop. For a box, ``kept`` of the
    hit probes also kept at least ``min_drop`` of it with the box alone (the rest filled); so
    did a token inside the image.
    """

    row: int
    col: int
    grid: tuple[int, int]
    group: int | None
    probes: int
    hits: int
    mean_drop: float
    min_drop: float = 0.5
    height: int = 1
    width: int = 1
    kept: int = 0

    @property
    def box(self) -> Box:
        return (self.row, self.row + self.height, self.col, self.col + self.width)

    @property
    def _at_least(self) -> str:
        return "half" if self.min_drop == 0.5 else f"{self.min_drop:.0%}"

    def _kept(self) -> str:
        if not _needs_sufficiency(self.box, self.grid):
            return ""
        alone = "token" if _is_token(self.box) else "box"
        return (
            f", and {self.kept} of them kept at least {self._at_least} of it with the {alone} alone"
        )

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        return (
            f"occluding {_place(self.box, *self.grid)} drops the predicted-class"
            f" probability by {self.mean_drop:.2f} on average and by at least {self._at_least} on"
            f" {self.hits} of {self.probes} {self._who(class_names)}{self._kept()}"
        )

    def _who(self, class_names: Sequence[str] | None) -> str:
        if self.group is None:
            return "probes"
        name = class_names[self.group] if class_names else str(self.group)
        return f"probes predicted as {name!r}"


def _describe_place(suspects: Sequence[Suspect], class_names: Sequence[str] | None) -> str:
    """One reason per place: the groups confirmed at the same place share one sentence."""
    if len(suspects) == 1:
        return suspects[0].describe(class_names)
    first = suspects[0]
    groups = ", ".join(
        f"{s.hits} of {s.probes} {s._who(class_names)} (by {s.mean_drop:.2f} on average)"
        for s in suspects
    )
    return (
        f"occluding {_place(first.box, *first.grid)} drops the predicted-class"
        f" probability by at least {first._at_least} on {groups}"
    )


def _inside(images: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W]``: the pixels of each image's token box."""
    h, w = grid
    H, W = images.shape[-2:]
    # pixel -> token cell; exact for patch grids, nearest cell when H or W is not a multiple
    cell_r = ((torch.arange(H, device=images.device) * h) // H).view(1, H, 1)
    cell_c = ((torch.arange(W, device=images.device) * w) // W).view(1, 1, W)
    r0, r1, c0, c1 = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    return (cell_r >= r0) & (cell_r < r1) & (cell_c >= c0) & (cell_c < c1)


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
    fill = images.mean(dim=(0, 2, 3), keepdim=True)
    return torch.where(_inside(images, boxes, grid)[:, None], fill.to(images.dtype), images[rows])


def keep_boxes(
    images: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """The complement of :func:`occlude_boxes`: copies of ``images[rows]`` that keep only the
    token box ``boxes[i]``, everything else filled with the images' per-channel mean (does
    that place alone carry the prediction?).

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> keep_boxes(x, torch.tensor([0]), torch.tensor([[0, 1, 1, 2]]), (2, 2))[0, 0]
        tensor([[7.5000, 7.5000, 2.0000, 3.0000],
                [7.5000, 7.5000, 6.0000, 7.0000],
                [7.5000, 7.5000, 7.5000, 7.5000],
                [7.5000, 7.5000, 7.5000, 7.5000]])
    """
    fill = images.mean(dim=(0, 2, 3), keepdim=True)
    return torch.where(_inside(images, boxes, grid)[:, None], images[rows], fill.to(images.dtype))


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


def _child(side: int) -> int:
    """Side of the search's windows in a box side: over half, so the two windows overlap."""
    return side // 2 + 1 if side > 2 else 1


def _stacked(
    tests: Sequence[tuple[Box, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, boxes)``: every test's probe rows, one after the other, each with its box."""
    rows = torch.cat([r for _, r in tests])
    boxes = torch.cat([torch.tensor(box, device=device).repeat(len(r), 1) for box, r in tests])
    return rows, boxes


def _mode_box(boxes: torch.Tensor) -> Box:
    values, counts = boxes.unique(dim=0, return_counts=True)
    r0, r1, c0, c1 = values[counts.argmax()].tolist()
    return (r0, r1, c0, c1)


# what a copy shows: the probe with the box filled, or the box alone (the rest filled)
_OCCLUDED, _KEPT = 0, 1


class _Scored:
    """The probes' copies of one :meth:`ShortcutAlarm.check`, each scored once, by (probe row,
    box, occluded or kept): the search occludes every probe's corner windows, so a candidate's
    copy of a probe is often one the search already scored, and the groups (all probes, each
    class) share their probes. Looking a copy up instead of running it again gives the same
    score up to the float rounding of another batch."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        targets: torch.Tensor,
        grid: tuple[int, int],
        max_batch: int,
    ) -> None:
        self.forward, self.score, self.max_batch = forward, score, max_batch
        self.images, self.targets, self.grid = images, targets, grid
        self.keys = torch.empty(0, dtype=torch.long, device=images.device)
        self.values = torch.empty(0, device=images.device)

    def scores(self, batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each image's score of its target class, ``max_batch`` images per forward."""
        logits = torch.cat([self.forward(chunk) for chunk in batch.split(self.max_batch)])
        return self.of_logits(logits, targets)

    def of_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each row's score of its target class, read from its logits."""
        return self.score(logits.float()).gather(1, targets[:, None]).squeeze(1)

    def copies(self, rows: torch.Tensor, boxes: torch.Tensor, kind: int) -> torch.Tensor:
        """Each ``images[rows[i]]`` with ``boxes[i]`` occluded (or kept alone), scored for its
        target: the copies not scored yet run once each, in batched forwards."""
        keys = self._key(rows, boxes, kind)
        unique, inverse = keys.unique(return_inverse=True)
        first = torch.full_like(unique, len(keys)).scatter_reduce(
            0, inverse, torch.arange(len(keys), device=keys.device), "amin"
        )
        found, values = self._lookup(unique)
        todo = first[~found]
        if todo.numel():
            make = occlude_boxes if kind == _OCCLUDED else keep_boxes
            fresh = self.scores(
                make(self.images, rows[todo], boxes[todo], self.grid), self.targets[rows[todo]]
            )
            values = values.to(fresh.dtype)
            values[~found] = fresh
            self.keys = torch.cat([self.keys, unique[~found]])
            self.values = torch.cat([self.values.to(fresh.dtype), fresh])
        return values[inverse]

    def _key(self, rows: torch.Tensor, boxes: torch.Tensor, kind: int) -> torch.Tensor:
        """One integer per copy: its probe row, box corners and kind, mixed radix."""
        h, w = self.grid
        code = boxes[:, 0]
        for k, base in ((1, h + 1), (2, w + 1), (3, w + 1)):
            code = code * base + boxes[:, k]
        return (rows * (h + 1) ** 2 * (w + 1) ** 2 + code) * 2 + kind

    def _lookup(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(found, values)``: which ``keys`` were scored, and their scores (0 where not)."""
        if not self.keys.numel():
            return torch.zeros_like(keys, dtype=torch.bool), torch.zeros(
                len(keys), device=keys.device
            )
        known, order = self.keys.sort()
        pos = torch.searchsorted(known, keys).clamp_max(len(known) - 1)
        found = known[pos] == keys
        return found, torch.where(found, self.values[order[pos]], 0.0)


class ShortcutAlarm:
    """Finds places the model's predictions hang on; see the module docstring.

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
        search: also propose the places a hierarchical occlusion search finds (at each level
            the four overlapping corner windows of each probe's box, each a little over half
            its size, are occluded and the one that drops the probe's score most is kept, down
            to one token: 4 occluded copies per probe and level, 16 on an 8x8 grid (8, 5, 3, 2,
            1 tokens a side), 20 on 14x14; the overlap keeps a cue of up to 2x2 tokens that
            straddles a midline inside one window). It finds the place whichever block reads
            it, where the maps of the explained block are weak or flat. It runs only when no
            place the maps propose or the alarm remembers is confirmed: it proposes places and
            nothing else, so it cannot change whether such an evaluation warns (only which
            places the warning lists, and the places remembered for the next evaluation).
        search_always: run the search even when a map's or remembered place is confirmed
            (every evaluation pays for it; the warning may then list more places, and
            ``last_tests`` always holds the search's places, e.g. to replay another rule).
        max_box: side, in tokens, of the boxes tested besides single tokens, for a cue larger
            than a patch (a logo over 2x2 tokens survives the occlusion of any one of them).
            A box is confirmed on the probes that both lose ``min_drop`` of their probability
            when it is occluded and keep ``min_drop`` of it with the box alone (the rest
            filled with the mean colour), as many as the occlusion test asks, and only where
            it touches the image border: inside the image a box can be the object itself (on
            clean demo runs a central 2x2 box was necessary and sufficient for half of one
            class's probes at 6 of 40 evaluations). 1: tokens only. A single token inside the
            image is confirmed like a box (lost and kept); one on the border on its drops.

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
        max_box: int = 2,
        search_always: bool = False,
    ) -> None:
        if not 0.0 < min_drop <= 1.0 or not 0.0 < min_share <= 1.0:
            raise ValueError(
                f"min_drop and min_share must be in (0, 1], got {min_drop} and {min_share}"
            )
        if min_hits < 1:
            raise ValueError(f"min_hits must be at least 1, got {min_hits}")
        if max_box < 1:
            raise ValueError(f"max_box must be at least 1 (single tokens), got {max_box}")
        self.min_drop = min_drop
        self.min_share = min_share
        self.min_hits = min_hits
        self.min_group = min_group
        self.max_batch = max_batch
        self.search = search
        self.max_box = max_box
        self.search_always = search_always
        #: whether the last :meth:`check` ran the search
        self.searched = False
        # (box, class or None) tested last time: a cue the model keeps using is re-tested;
        # a bare token index is what older checkpoints stored
        self._remembered: list[tuple[Box | int, int | None]] = []
        #: every candidate of the last :meth:`check`: ``{"box", "group", "drops"}`` with each
        #: tested probe's relative drop (and, for a box the occlusion confirmed, ``"kept"``: the
        #: share of each probe's probability the box alone keeps), so a rule can be studied
        #: offline
        self.last_tests: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "candidates": [[*(b if isinstance(b, tuple) else (b,)), g] for b, g in self._remembered]
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._remembered = []
        for *place, group in state["candidates"]:
            box = int(place[0]) if len(place) == 1 else tuple(int(v) for v in place)
            self._remembered.append((box, None if group is None else int(group)))  # type: ignore[arg-type]

    def confirms(self, drops: torch.Tensor) -> tuple[int, bool]:
        """``(hits, confirmed)`` for one candidate's per-probe relative drops in one group:
        a hit is a drop of at least ``min_drop``; the place is confirmed with at least
        ``min_share`` of the group and at least ``min_hits`` probes hit. A box is judged the
        same way on the shares its probes keep with the box alone (:meth:`judge`).

        Example:
            >>> alarm = ShortcutAlarm(min_share=0.5, min_hits=3)
            >>> alarm.confirms(torch.tensor([0.9, 0.8, 0.1, 0.0]))
            (2, False)
        """
        hits = int((drops >= self.min_drop).sum())
        return hits, hits >= max(self.min_share * drops.numel(), self.min_hits)

    def judge(self, test: Mapping[str, Any]) -> bool:
        """Whether one entry of :attr:`last_tests` confirms its place under this rule: a token
        on the border on its drops; a box, which must touch the border, and a token inside the
        image on the probes that both lost and kept the prediction (see ``max_box``).

        Example:
            >>> alarm = ShortcutAlarm()
            >>> alarm.judge({"box": [0, 2, 0, 2], "group": None, "drops": [0.9] * 4})
            False
            >>> alarm.judge({"box": [0, 2, 0, 2], "group": None, "drops": [0.9] * 4,
            ...              "kept": [0.8, 0.7, 0.9, 0.1]})
            True
            >>> alarm.judge({"box": [3, 5, 3, 5], "grid": [8, 8], "group": None,
            ...              "drops": [0.9] * 4, "kept": [0.9] * 4})  # inside the image
            False
            >>> alarm.judge({"box": [3, 4, 3, 4], "grid": [8, 8], "group": None,
            ...              "drops": [0.9] * 4, "kept": [0.1] * 4})  # a token, not sufficient
            False
        """
        drops = torch.tensor(test["drops"])
        if "token" in test:  # the oldest records: a token index, no grid
            return self.confirms(drops)[1]
        box, grid = test["box"], test.get("grid")
        if not _needs_sufficiency(box, grid):
            return self.confirms(drops)[1]
        if not _is_token(box) and grid is not None and not _on_border(box, *grid):
            return False
        return self._both(drops, test.get("kept"))[1]

    def _both(self, drops: torch.Tensor, kept: Sequence[float] | None) -> tuple[int, bool]:
        """``(n, confirmed)`` for a box: ``n`` probes both lost ``min_drop`` of their
        probability when it was occluded and kept ``min_drop`` of it with the box alone."""
        if kept is None:
            return 0, False
        both = (drops >= self.min_drop) & (torch.tensor(kept) >= self.min_drop)
        n = int(both.sum())
        return n, n >= max(self.min_share * drops.numel(), self.min_hits)

    def _groups(self, targets: torch.Tensor) -> list[tuple[int | None, torch.Tensor]]:
        groups: list[tuple[int | None, torch.Tensor]] = [(None, torch.ones_like(targets).bool())]
        classes, counts = targets.unique(return_counts=True)
        for c, k in zip(classes.tolist(), counts.tolist(), strict=True):
            if k >= self.min_group and k < targets.numel():
                groups.append((int(c), targets == c))
        return groups

    def _grown(self, mean_map: torch.Tensor, row: int, col: int) -> Box | None:
        """The ``max_box``-sided window holding ``(row, col)`` with the most saliency."""
        h, w = mean_map.shape
        sh, sw = min(self.max_box, h), min(self.max_box, w)
        if sh * sw == 1:
            return None
        sums = torch.nn.functional.avg_pool2d(mean_map[None, None], (sh, sw), stride=1)[0, 0]
        r_lo, r_hi = max(0, row - sh + 1), min(row, h - sh)
        c_lo, c_hi = max(0, col - sw + 1), min(col, w - sw)
        window = sums[r_lo : r_hi + 1, c_lo : c_hi + 1]
        dr, dc = divmod(int(window.flatten().argmax()), window.shape[1])
        return (r_lo + dr, r_lo + dr + sh, c_lo + dc, c_lo + dc + sw)

    def candidates(
        self, maps: Sequence[torch.Tensor], targets: torch.Tensor, informative: torch.Tensor
    ) -> list[tuple[Box, int | None]]:
        """``(box, class or None)`` pairs: the peak token of the mean of the informative maps
        of every group, for each batch of maps given (e.g. one per explained block), and the
        ``max_box`` window around it with the most saliency, then the remembered ones."""
        w = maps[0].shape[-1]
        return list(
            dict.fromkeys(self._map_places(maps, targets, informative) + self._recalled(targets, w))
        )

    def _map_places(
        self, maps: Sequence[torch.Tensor], targets: torch.Tensor, informative: torch.Tensor
    ) -> list[tuple[Box, int | None]]:
        w = maps[0].shape[-1]
        found: list[tuple[Box, int | None]] = []
        for group, members in self._groups(targets):
            keep = (members & informative).float()
            if not bool(keep.any()):
                continue
            for batch in maps:
                mean_map = mean_saliency_map(batch * keep[:, None, None])
                row, col = divmod(int(mean_map.flatten().argmax()), w)
                found.append(((row, row + 1, col, col + 1), group))
                grown = self._grown(mean_map, row, col)
                if grown is not None and _on_border(grown, *mean_map.shape):
                    found.append((grown, group))
        return found

    def _recalled(self, targets: torch.Tensor, w: int) -> list[tuple[Box, int | None]]:
        """The remembered places whose group is present among ``targets``."""
        present = {g for g, _ in self._groups(targets)}
        found: list[tuple[Box, int | None]] = []
        for box, group in self._remembered:
            if isinstance(box, int):  # a token index from an older checkpoint
                box = (box // w, box // w + 1, box % w, box % w + 1)
            if group in present:
                found.append((box, group))
        return found

    def search_boxes(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        targets: torch.Tensor,
        p0: torch.Tensor,
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """``[N, levels, 4]``: each probe's box at every level of the search (coarse to fine,
        the last a single token). Each level occludes the four corner windows of the probe's
        box, each a little over half its size along each axis (``side // 2 + 1``; 1 from a side
        of 2) so that they overlap in the middle and a cue of up to 2x2 tokens straddling the
        midlines lies inside one of them, and keeps the one that drops the score the most."""
        return self._search(p0, _Scored(forward, score, images, targets, grid, self.max_batch))

    def _search(self, p0: torch.Tensor, scored: _Scored) -> torch.Tensor:
        """:meth:`search_boxes`, its copies' scores kept in ``scored``."""
        n, device = scored.images.shape[0], scored.images.device
        r0 = torch.zeros(n, dtype=torch.long, device=device)
        c0 = torch.zeros_like(r0)
        bh, bw = scored.grid
        path = []
        while bh > 1 or bw > 1:
            ch, cw = _child(bh), _child(bw)
            offsets = torch.tensor(
                [(a, b) for a in sorted({0, bh - ch}) for b in sorted({0, bw - cw})],
                device=device,
            )  # [k, 2], k = 4 (2 where one side is already a single token)
            k = len(offsets)
            tops = r0[:, None] + offsets[:, 0]  # [n, k]
            lefts = c0[:, None] + offsets[:, 1]
            children = torch.stack([tops, tops + ch, lefts, lefts + cw], dim=-1)  # [n, k, 4]
            rows = torch.arange(n, device=device).repeat_interleave(k)
            drop = (p0[rows] - scored.copies(rows, children.reshape(-1, 4), _OCCLUDED)).view(n, k)
            best = children[torch.arange(n, device=device), drop.argmax(dim=1)]
            r0, c0, bh, bw = best[:, 0], best[:, 2], ch, cw
            path.append(best)
        if not path:
            return torch.tensor([0, 1, 0, 1], device=device).repeat(n, 1, 1)
        return torch.stack(path, dim=1)

    def search_tokens(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        targets: torch.Tensor,
        p0: torch.Tensor,
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """``[N]``: each probe's most sensitive token (row-major), the end of
        :meth:`search_boxes`."""
        last = self.search_boxes(forward, score, images, targets, p0, grid)[:, -1]
        return last[:, 0] * grid[1] + last[:, 2]

    def _searched(
        self, path: torch.Tensor, targets: torch.Tensor, grid: tuple[int, int]
    ) -> list[tuple[Box, int | None]]:
        """Each group's most frequent single token and box up to ``max_box`` on the path."""
        found = []
        sides = torch.stack([path[..., 1] - path[..., 0], path[..., 3] - path[..., 2]], -1)
        small = (sides <= self.max_box).all(-1).all(0)  # the levels whose boxes are small
        for group, members in self._groups(targets):
            for level in small.nonzero().flatten().tolist():
                box = _mode_box(path[members, level])
                if _is_token(box) or _on_border(box, *grid):
                    found.append((box, group))
        return found

    def _preserved(
        self, p0: torch.Tensor, tests: Sequence[tuple[Box, torch.Tensor]], scored: _Scored
    ) -> list[torch.Tensor]:
        """For each ``(box, probe rows)``: the share of each probe's probability that the box
        alone keeps (one batched forward for all)."""
        rows, boxes = _stacked(tests, p0.device)
        q = scored.copies(rows, boxes, _KEPT)
        kept = (q / p0[rows].clamp_min(1e-12)).clamp(0.0, 1.0).cpu()
        return list(kept.split([len(r) for _, r in tests]))

    def check(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        maps: Sequence[torch.Tensor],
        targets: torch.Tensor,
        informative: torch.Tensor,
        logits: torch.Tensor | None = None,
    ) -> tuple[list[Suspect], float]:
        """Test the candidates on ``images`` (the probes): ``forward`` gives logits,
        ``score`` per-class scores from them (the explainer's ``score_fn``); ``maps`` one or
        more ``[N, h, w]`` batches of the probes' maps, ``targets`` the explained classes;
        ``logits``, when given, ``forward(images)`` already computed (e.g. the explanation's
        unmasked logits, when ``forward`` is the explainer's
        :meth:`~lightning_vitrcam.ViTReciproCAM.predict`), saving the probes' own forward.
        Returns the suspects (most probes hit first) and the largest group mean drop of any
        candidate (a continuous signal, 0 without candidates)."""
        grid: tuple[int, int] = tuple(maps[0].shape[-2:])  # type: ignore[assignment]
        # drops compare one computation (route, precision) with and without occlusion, so
        # logits from another route than forward's must not be passed in
        # every copy runs once: the search's copies and the groups' shared probes are reused
        scored = _Scored(forward, score, images, targets, grid, self.max_batch)
        p0 = scored.scores(images, targets) if logits is None else scored.of_logits(logits, targets)
        fresh = self._map_places(maps, targets, informative)
        recalled = self._recalled(targets, grid[1])
        self.searched = False
        if self.search and not self.search_always:
            # the search only proposes places: when the maps' or remembered places already
            # confirm one, its 16-20 copies per probe cannot change whether this warns
            pairs = list(dict.fromkeys(fresh + recalled))
            suspects, worst = self._test(pairs, p0, scored, targets, grid)
            if suspects:
                return suspects, worst
        if self.search:
            fresh += self._searched(self._search(p0, scored), targets, grid)
            self.searched = True
        pairs = list(dict.fromkeys(fresh + recalled))
        return self._test(pairs, p0, scored, targets, grid)

    def _test(
        self,
        pairs: Sequence[tuple[Box, int | None]],
        p0: torch.Tensor,
        scored: _Scored,
        targets: torch.Tensor,
        grid: tuple[int, int],
    ) -> tuple[list[Suspect], float]:
        """:meth:`check` of the places ``pairs``, each in its group's probes; fills
        ``last_tests`` and remembers the places for the next evaluation."""
        # this evaluation's places first: the oldest remembered ones fall out of the memory
        self._remembered = list(pairs[:_MEMORY])
        self.last_tests = []
        if not pairs:
            return [], 0.0
        groups = dict(self._groups(targets))
        rows = [groups[g].nonzero().flatten() for _, g in pairs]
        rows_all, boxes = _stacked(
            [(box, r) for (box, _), r in zip(pairs, rows, strict=True)], p0.device
        )
        p_occ = scored.copies(rows_all, boxes, _OCCLUDED)
        drop = ((p0[rows_all] - p_occ) / p0[rows_all].clamp_min(1e-12)).clamp(-1.0, 1.0)
        drops = drop.cpu().split([len(r) for r in rows])  # one transfer for a few dozen numbers
        for (box, group), part in zip(pairs, drops, strict=True):
            self.last_tests.append(
                {"box": list(box), "grid": list(grid), "group": group, "drops": part.tolist()}
            )
        # a box, or a token inside the image, must also be sufficient (see max_box): the ones
        # the occlusion confirmed are kept alone, in one more forward
        boxes_to_keep = [
            i for i, (box, _) in enumerate(pairs)
            if _needs_sufficiency(box, grid) and self.confirms(drops[i])[1]
        ]  # fmt: skip
        if boxes_to_keep:
            kept = self._preserved(p0, [(pairs[i][0], rows[i]) for i in boxes_to_keep], scored)
            for i, part in zip(boxes_to_keep, kept, strict=True):
                self.last_tests[i]["kept"] = part.tolist()
        suspects, worst = [], 0.0
        for (box, group), part, test in zip(pairs, drops, self.last_tests, strict=True):
            worst = max(worst, float(part.mean()))
            if self.judge(test):
                hits = self.confirms(part)[0]
                alone = self._both(part, test.get("kept"))[0]
                r0, r1, c0, c1 = box
                suspects.append(
                    Suspect(
                        r0,
                        c0,
                        grid,
                        group,
                        len(part),
                        hits,
                        float(part.mean()),
                        self.min_drop,
                        r1 - r0,
                        c1 - c0,
                        alone,
                    )  # fmt: skip
                )
        return _pruned(suspects), worst


def _pruned(suspects: list[Suspect]) -> list[Suspect]:
    """Most convincing first, without repeats: a place confirmed on all probes needs no
    repeat per class, and a box holding a token confirmed for the same group says less."""
    everyone = {s.box for s in suspects if s.group is None}
    tokens = {(s.row, s.col, s.group) for s in suspects if _is_token(s.box)}

    def redundant(s: Suspect) -> bool:
        if s.group is not None and s.box in everyone:
            return True
        r0, r1, c0, c1 = s.box
        return not _is_token(s.box) and any(
            (r, c, s.group) in tokens for r in range(r0, r1) for c in range(c0, c1)
        )

    kept = [s for s in suspects if not redundant(s)]
    kept.sort(key=lambda s: (s.group is not None, -s.hits / s.probes, -s.mean_drop))
    return kept


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
    places: dict[Box, list[Suspect]] = {}
    for s in suspects:
        places.setdefault(s.box, []).append(s)
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
