"""Confounders painted onto generated images, and a data module that plants one.

The cues are those of the shortcut literature, scaled to small images: a class-coded tag at
a fixed corner or moving along the bottom edge, a colour cast, a scanner's text tag, thin
bright full-height stripes, a dark band along the bottom edge, a ruler near an edge, a sticker
and a one-letter stamp. A cue is *class-coded* (each class has its own: tags, a bit pattern
in the class's colour; casts, stickers, edge rulers) or the *same* for every image that
carries it (text, stripes, band, ruler, stamp): then the classes that carry it
(``classes``) make it a shortcut, as when only the positives of a binary task carry it (Sun
et al., MICCAI 2023, arXiv 2307.12344).

:class:`CueDataModule` serves training and validation data with the cue, a cue-free split,
and a *swap* split: cue-free images of one class given the cue of another (for a cue only
some classes carry, images of the other classes given the cue), to measure reliance the way
the literature does, by the predictions the cue flips.

Example:
    >>> dm = CueDataModule("binary_digits", "band", p=1.0, classes=[1], num_train=32,
    ...                    num_val=16, num_free=16)
    >>> batch = next(iter(dm.val_dataloader()))
    >>> tuple(batch["image"].shape), sorted(batch)
    ((16, 3, 48, 48), ['image', 'label'])
    >>> swap = dm.swap_set
    >>> bool((swap.labels == 1).all()), bool((swap.original_labels == 0).all())
    (True, True)
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_vitrcam.demo.glyphs import digit_pairs, digits
from lightning_vitrcam.demo.lesions import LESION_NAMES, lesions
from lightning_vitrcam.demo.photos import PHOTO_NAMES, photos, scans
from lightning_vitrcam.demo.textures import TEXTURE_NAMES, textures

__all__ = ["BASES", "CODED", "CUES", "CueDataModule", "CueSet", "paint", "tag_codes"]

_TAG = 6  # the tag's side in pixels (one token of a 6-pixel patch grid)

# a 4-or-5 x 5 pixel font for the text tag and the stamp
_FONT = {
    "R": ["1110", "1001", "1110", "1010", "1001"],
    "M": ["10001", "11011", "10101", "10001", "10001"],
    "1": ["010", "110", "010", "010", "111"],
    "A": ["0110", "1001", "1111", "1001", "1001"],
}


def _text(word: str) -> torch.Tensor:
    """``[5, W]`` bool bitmap of ``word`` (one free column between letters)."""
    cols: list[torch.Tensor] = []
    for k, ch in enumerate(word):
        if k:
            cols.append(torch.zeros(5, 1, dtype=torch.bool))
        cols.append(torch.tensor([[c == "1" for c in row] for row in _FONT[ch]]))
    return torch.cat(cols, dim=1)


def tag_codes(num_classes: int, seed: int = 0) -> torch.Tensor:
    """``[K, 6, 6]`` bool: one distinct 3x3 bit pattern per class (3-6 bits set, each bit a
    2x2 pixel cell).

    Example:
        >>> codes = tag_codes(10)
        >>> tuple(codes.shape), len({tuple(c.flatten().tolist()) for c in codes})
        ((10, 6, 6), 10)
    """
    bits = torch.tensor([[(v >> b) & 1 for b in range(9)] for v in range(512)], dtype=torch.bool)
    count = bits.sum(1)
    usable = bits[(count >= 3) & (count <= 6)]
    if num_classes > len(usable):
        raise ValueError(f"at most {len(usable)} classes have a tag code, got {num_classes}")
    g = torch.Generator().manual_seed(seed)
    chosen = usable[torch.randperm(len(usable), generator=g)[:num_classes]].view(-1, 3, 3)
    return chosen.repeat_interleave(2, 1).repeat_interleave(2, 2)


def _hues(num_classes: int) -> torch.Tensor:
    """``[K, 3]``: saturated colours evenly spread over the hue circle."""
    return torch.tensor(
        [colorsys.hsv_to_rgb(k / num_classes, 1.0, 1.0) for k in range(num_classes)]
    )


def _at(images: torch.Tensor, rows: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor,
        stamp: torch.Tensor, colour: torch.Tensor) -> None:  # fmt: skip
    """Paint the bool bitmap ``stamp`` ``[k, h, w]`` (one per row, or one for all) in
    ``colour`` ``[k, 3]`` at each row's ``(top, left)``, clipped to the image."""
    s = images.shape[-1]
    for j, i in enumerate(rows.tolist()):
        bitmap = stamp[j] if stamp.dim() == 3 else stamp
        h, w = bitmap.shape
        t, left = int(tops[j]), int(lefts[j])
        t0, l0 = max(t, 0), max(left, 0)
        t1, l1 = min(t + h, s), min(left + w, s)
        if t1 <= t0 or l1 <= l0:
            continue
        part = bitmap[t0 - t : t1 - t, l0 - left : l1 - left]
        region = images[i, :, t0:t1, l0:l1]
        images[i, :, t0:t1, l0:l1] = torch.where(part, colour[j].view(3, 1, 1), region)


def _ruler(length: int, vertical: bool) -> torch.Tensor:
    """A graduated bar: 2 pixels thick, a 2-pixel tick every 4 pixels."""
    bar = torch.zeros(4, length, dtype=torch.bool)
    bar[2:] = True
    bar[:2, ::4] = True
    return bar.T if vertical else bar


def paint(
    cue: str, images: torch.Tensor, rows: torch.Tensor, codes: torch.Tensor,
    num_classes: int, g: torch.Generator,
) -> None:  # fmt: skip
    """Paint ``cue`` onto ``images[rows]`` (``[n, 3, s, s]`` in [0, 1], in place); ``codes``
    ``[len(rows)]`` is the class whose cue each row gets (used by class-coded cues)."""
    if not len(rows):
        return
    k, s = len(rows), images.shape[-1]
    white = torch.ones(k, 3)
    if cue in ("tag", "moving_tag"):
        tops = torch.full((k,), s - _TAG)
        lefts = tops if cue == "tag" else torch.randint(0, s - _TAG + 1, (k,), generator=g)
        # the class's bits in the class's colour on a black square
        _at(images, rows, tops, lefts, torch.ones(_TAG, _TAG, dtype=torch.bool), torch.zeros(k, 3))
        _at(images, rows, tops, lefts, tag_codes(num_classes)[codes], _hues(num_classes)[codes])
    elif cue == "tint":
        hue = _hues(num_classes)[codes].view(k, 3, 1, 1)
        images[rows] = 0.8 * images[rows] + 0.2 * hue
    elif cue == "text":
        word = _text("RM1")
        tops = s - 7 - torch.randint(0, 3, (k,), generator=g)
        lefts = 2 + torch.randint(0, 4, (k,), generator=g)
        _at(images, rows, tops, lefts, word, 0.95 * white)
    elif cue == "stamp":
        letter = _text("A")
        tops = torch.randint(0, s - 5, (k,), generator=g)
        lefts = torch.randint(0, s - 4, (k,), generator=g)
        local = images[rows].mean(dim=(1, 2, 3))
        _at(images, rows, tops, lefts, letter, (local + 0.2).clamp(0, 1)[:, None].expand(k, 3))
    elif cue == "stripes":
        x1 = torch.randint(2, s - 3, (k,), generator=g)
        gap = torch.randint(6, s // 2, (k,), generator=g)
        x2 = torch.where(x1 + gap < s - 2, x1 + gap, x1 - gap)
        width = 1 + torch.randint(0, 2, (k,), generator=g)
        cols = torch.arange(s)
        line = ((cols >= x1[:, None]) & (cols < (x1 + width)[:, None])) | (
            (cols >= x2[:, None]) & (cols < (x2 + width)[:, None])
        )  # [k, s]
        images[rows] = torch.where(line[:, None, None, :], torch.tensor(0.95), images[rows])
    elif cue == "band":
        height = torch.randint(4, 11, (k,), generator=g)
        band = torch.arange(s)[None] >= (s - height)[:, None]  # [k, s] rows
        images[rows] = torch.where(band[:, None, :, None], torch.tensor(0.02), images[rows])
    elif cue == "ruler":
        length = torch.randint(24, 33, (k,), generator=g)
        edge = torch.randint(0, 4, (k,), generator=g)  # top, right, bottom, left
        inset = 1 + torch.randint(0, 3, (k,), generator=g)
        along = torch.stack(
            [torch.randint(0, s - int(n) + 1, (1,), generator=g)[0] for n in length]
        )
        colour = torch.tensor([0.92, 0.86, 0.45]).expand(k, 3)
        for j in range(k):
            vertical = int(edge[j]) in (1, 3)
            bar = _ruler(int(length[j]), vertical)
            if int(edge[j]) == 0:
                top, left = int(inset[j]), int(along[j])
            elif int(edge[j]) == 2:
                top, left = s - 4 - int(inset[j]), int(along[j])
                bar = bar.flip(0)
            elif int(edge[j]) == 3:
                top, left = int(along[j]), int(inset[j])
            else:
                top, left = int(along[j]), s - 4 - int(inset[j])
                bar = bar.flip(1)
            _at(images, rows[j : j + 1], torch.tensor([top]), torch.tensor([left]), bar,
                colour[j : j + 1])  # fmt: skip
    elif cue == "edge_ruler":
        # class k's strip (about 6x1 tokens, with dark ticks) along edge k % 4
        strip = torch.ones(5, 36, dtype=torch.bool)
        colour = torch.tensor([0.95, 0.95, 0.9]).expand(k, 3)
        for j in range(k):
            e, off = int(codes[j]) % 4, int(torch.randint(-4, 5, (1,), generator=g))
            bar = strip if e in (0, 2) else strip.T
            c0 = (s - 36) // 2 + off
            top, left = {0: (0, c0), 1: (c0, s - 5), 2: (s - 5, c0), 3: (c0, 0)}[e]
            _at(images, rows[j : j + 1], torch.tensor([top]), torch.tensor([left]), bar,
                colour[j : j + 1])  # fmt: skip
            ticks = torch.zeros_like(bar)
            if e in (0, 2):
                ticks[1:4, ::4] = True
            else:
                ticks[::4, 1:4] = True
            _at(images, rows[j : j + 1], torch.tensor([top]), torch.tensor([left]), ticks,
                torch.tensor([[0.1, 0.1, 0.1]]))  # fmt: skip
    elif cue == "sticker":
        d = 15 + torch.randint(0, 4, (k,), generator=g)
        palette = torch.tensor(
            [[1.0, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.3, 1.0], [1.0, 0.9, 0.0],
             [1.0, 0.1, 1.0], [0.0, 1.0, 1.0]]
        )  # fmt: skip
        for j in range(k):
            n = int(d[j])
            yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            disc = (yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2 <= (n / 2) ** 2
            top, left = (int(torch.randint(0, s - n + 1, (1,), generator=g)) for _ in range(2))
            _at(images, rows[j : j + 1], torch.tensor([top]), torch.tensor([left]), disc,
                palette[int(codes[j]) % len(palette)][None])  # fmt: skip
    elif cue != "none":
        raise ValueError(f"unknown cue {cue!r}; one of {CUES}")


#: every cue :func:`paint` draws ("none": no cue)
CUES: tuple[str, ...] = (
    "tag", "moving_tag", "tint", "text", "stripes", "band", "ruler", "edge_ruler", "sticker",
    "stamp", "none",
)  # fmt: skip
#: the cues whose look names the class (each class has its own)
CODED: frozenset[str] = frozenset({"tag", "moving_tag", "tint", "edge_ruler", "sticker"})

#: the generated images: ``(make(n, seed, size) -> (images, labels, masks), class names)``
BASES: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "digits": (digits, tuple(str(d) for d in range(10))),
    "digit_pairs": (digit_pairs, tuple(f"{d:02d}" for d in range(100))),
    "binary_digits": (digits, ("under 5", "5 or more")),
    "textures": (textures, TEXTURE_NAMES),
    # crops of real images (matplotlib's sample data), not generated
    "photos": (photos, PHOTO_NAMES),
    "scans": (scans, ("not a scan", "scan")),
    # skin-lesion-like images, "irregular or not" (generated; no rule was chosen on them)
    "lesions": (lesions, LESION_NAMES),
}


class CueSet(Dataset):
    """Images (normalised with mean = std = 0.5) with their labels; ``masks`` are kept for
    study but not served. ``original_labels``: the true class (the swap split's ``labels``
    are the class whose cue each image got)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                 original_labels: torch.Tensor | None = None) -> None:  # fmt: skip
        self.images = ((images - 0.5) / 0.5).float()
        self.labels = labels.long()
        self.masks = masks
        self.original_labels = self.labels if original_labels is None else original_labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


class CueDataModule(L.LightningDataModule):
    """Generated images (``base``: one of :data:`BASES`) with a planted ``cue`` (one of
    :data:`CUES`) on each image of the ``classes`` that carry it with probability ``p`` (and
    of the other classes with ``other_p``), in training and validation alike.

    ``patch_free_dataloader()`` serves the same distribution without the cue and
    ``swap_dataloader()`` the swap split (see the module docstring), whose labels are the
    class the cue names: accuracy on it is the share of images the cue moved to its class.

    Args:
        base: ``"digits"`` (10 classes), ``"digit_pairs"`` (100), ``"binary_digits"`` (5 or
            more: class 1), ``"textures"`` (4), ``"photos"`` (3: crops of real images) or
            ``"scans"`` (the same crops, "a scan or not": class 1).
        cue: the confounder.
        p: probability that an image of a carrying class carries the cue.
        classes: the classes that carry it (None: every class).
        other_p: probability that an image of any other class carries it.
        num_train, num_val, num_free: split sizes (the swap split has ``num_free`` images).
        image_size: side of the images in pixels.
        batch_size: every loader's batch size.
        seed: seed of every split.
    """

    def __init__(
        self,
        base: str = "digits",
        cue: str = "tag",
        p: float = 0.95,
        classes: Sequence[int] | None = None,
        other_p: float = 0.0,
        num_train: int = 3000,
        num_val: int = 500,
        num_free: int = 500,
        image_size: int = 48,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if base not in BASES:
            raise ValueError(f"base must be one of {sorted(BASES)}, got {base!r}")
        if cue not in CUES:
            raise ValueError(f"cue must be one of {CUES}, got {cue!r}")
        if not (0.0 <= p <= 1.0 and 0.0 <= other_p <= 1.0):
            raise ValueError(f"p and other_p must be in [0, 1], got {p} and {other_p}")
        self.base, self.cue, self.p, self.other_p = base, cue, p, other_p
        make, self.class_names = BASES[base]
        k = len(self.class_names)
        self.classes = list(range(k)) if classes is None else [int(c) for c in classes]
        self.batch_size = batch_size
        s = seed * 1009
        self.train_set = self._split(make, num_train, s + 1, image_size, cued=True)
        self.val_set = self._split(make, num_val, s + 2, image_size, cued=True)
        self.free_set = self._split(make, num_free, s + 3, image_size, cued=False)
        self.swap_set = self._swap(make, num_free, s + 4, image_size)

    def _images(self, make: Callable[..., Any], n: int, seed: int, size: int) -> tuple:
        images, labels, masks = make(n, seed, size)
        if self.base == "binary_digits":
            labels = (labels >= 5).long()
        return images, labels, masks

    def _split(self, make: Callable[..., Any], n: int, seed: int, size: int, cued: bool) -> CueSet:
        images, labels, masks = self._images(make, n, seed, size)
        if cued and self.cue != "none":
            g = torch.Generator().manual_seed(seed + 7)
            carrier = torch.isin(labels, torch.tensor(self.classes))
            chance = torch.where(carrier, self.p, self.other_p)
            rows = (torch.rand(n, generator=g) < chance).nonzero().flatten()
            paint(self.cue, images, rows, labels[rows], len(self.class_names), g)
        return CueSet(images, labels, masks)

    def _swap(self, make: Callable[..., Any], n: int, seed: int, size: int) -> CueSet:
        """Cue-free images given another class's cue (or, for a cue some classes carry, the
        images of the other classes given it); labelled with the class the cue names."""
        images, labels, masks = self._images(make, n, seed, size)
        g = torch.Generator().manual_seed(seed + 7)
        k = len(self.class_names)
        if self.cue in CODED:
            shift = 1 + torch.randint(0, k - 1, (n,), generator=g)
            names = (labels + shift) % k
            rows = torch.arange(n)
        else:
            carrying = torch.tensor(self.classes)
            rows = (~torch.isin(labels, carrying)).nonzero().flatten()
            names = torch.full((n,), int(carrying[0]) if len(carrying) < k else -1)
        if self.cue != "none":
            paint(self.cue, images, rows, names[rows], k, g)
        return CueSet(images[rows], names[rows], masks[rows], labels[rows])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def patch_free_dataloader(self) -> DataLoader:
        """The validation distribution without the cue."""
        return DataLoader(self.free_set, batch_size=self.batch_size)

    def swap_dataloader(self) -> DataLoader:
        """Cue-free images given another class's cue, labelled with that class."""
        return DataLoader(self.swap_set, batch_size=self.batch_size)
