"""Interventions on the probe images, and the cache that scores each distinct copy once.

An intervention changes a probe's pixels at a place on the token grid: :func:`occlude_boxes`
fills the place with the probes' per-channel mean colour (is the place necessary?),
:func:`keep_boxes` keeps only the place (is it sufficient?). :class:`CopyCache` scores such
copies for their probe's explained class, running each distinct ``(probe, place, kind)`` once
per check: the search, the groups (all probes, each class) and the evidence kinds share many.

Example:
    >>> import torch
    >>> x = torch.zeros(1, 1, 4, 4); x[0, 0, 0, 0] = 16.0
    >>> occlude_boxes(x, torch.tensor([0]), torch.tensor([[1, 2, 0, 2]]), (2, 2))[0, 0]
    tensor([[16.,  0.,  0.,  0.],
            [ 0.,  0.,  0.,  0.],
            [ 1.,  1.,  1.,  1.],
            [ 1.,  1.,  1.,  1.]])
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

import torch

from lightning_vitrcam.shortcut.shapes import shifts

__all__ = [
    "Copy",
    "CopyCache",
    "argmax_predicts",
    "brought_here",
    "colour_shift",
    "colour_swap",
    "inside",
    "keep_boxes",
    "move_object",
    "occlude_boxes",
    "paste_regions",
    "region_pixels",
    "transplant",
]


class Copy(IntEnum):
    """What a copy of a probe shows: the place filled, or the place alone."""

    OCCLUDED = 0
    KEPT = 1


def inside(images: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W]`` bool: the pixels of each image's token box ``boxes[i]``."""
    h, w = grid
    H, W = images.shape[-2:]
    # pixel -> token cell; exact for patch grids, nearest cell when H or W is not a multiple
    cell_r = ((torch.arange(H, device=images.device) * h) // H).view(1, H, 1)
    cell_c = ((torch.arange(W, device=images.device) * w) // W).view(1, 1, W)
    r0, r1, c0, c1 = (boxes[:, k].view(-1, 1, 1) for k in range(4))
    return (cell_r >= r0) & (cell_r < r1) & (cell_c >= c0) & (cell_c < c1)


def fill_colour(images: torch.Tensor) -> torch.Tensor:
    """``[1, C, 1, 1]``: the probes' per-channel mean, what an occluded place shows."""
    return images.mean(dim=(0, 2, 3), keepdim=True)


def occlude_boxes(
    images: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Copies ``images[rows]``, each with the token box ``boxes[i] = (r0, r1, c0, c1)`` filled
    with the images' per-channel mean, all in one tensor operation."""
    fill = fill_colour(images).to(images.dtype)
    return torch.where(inside(images, boxes, grid)[:, None], fill, images[rows])


def keep_boxes(
    images: torch.Tensor, rows: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """The complement of :func:`occlude_boxes`: copies of ``images[rows]`` that keep only the
    token box ``boxes[i]``, everything else filled with the images' per-channel mean.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> keep_boxes(x, torch.tensor([0]), torch.tensor([[0, 1, 1, 2]]), (2, 2))[0, 0]
        tensor([[7.5000, 7.5000, 2.0000, 3.0000],
                [7.5000, 7.5000, 6.0000, 7.0000],
                [7.5000, 7.5000, 7.5000, 7.5000],
                [7.5000, 7.5000, 7.5000, 7.5000]])
    """
    fill = fill_colour(images).to(images.dtype)
    return torch.where(inside(images, boxes, grid)[:, None], images[rows], fill)


def transplant(
    images: torch.Tensor,
    recipients: torch.Tensor,
    own: torch.Tensor,
    donors: torch.Tensor,
    boxes: torch.Tensor,
    grid: tuple[int, int],
) -> torch.Tensor:
    """Copies of ``images[recipients]`` with their own place ``own[i]`` occluded first (so
    that their own cue does not compete) and then ``images[donors[i]]``'s pixels inside the
    box ``boxes[i]`` pasted at the same place.

    Example:
        >>> x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
        >>> out = transplant(x, torch.tensor([0]), torch.tensor([[1, 2, 1, 2]]),
        ...                  torch.tensor([1]), torch.tensor([[0, 1, 0, 1]]), (2, 2))
        >>> out[0, 0]
        tensor([[1.0000, 1.0000, 0.0000, 0.0000],
                [1.0000, 1.0000, 0.0000, 0.0000],
                [0.0000, 0.0000, 0.5000, 0.5000],
                [0.0000, 0.0000, 0.5000, 0.5000]])
    """
    base = occlude_boxes(images, recipients, own, grid)
    return torch.where(inside(images, boxes, grid)[:, None], images[donors], base)


def region_pixels(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W]`` bool: the pixels of the token regions ``masks`` ``[B, h, w]`` (each pixel
    belongs to the token cell it falls in, as in :func:`inside`)."""
    h, w = masks.shape[-2:]
    H, W = size
    rows = (torch.arange(H, device=masks.device) * h) // H
    cols = (torch.arange(W, device=masks.device) * w) // W
    return masks[:, rows][:, :, cols]


def paste_regions(
    images: torch.Tensor,
    recipients: torch.Tensor,
    donors: torch.Tensor,
    masks: torch.Tensor,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Copies of ``images[recipients]`` with ``images[donors[i]]``'s pixels inside the token
    region ``masks[i]`` (``[P, h, w]`` bool) pasted at the same place; nothing of the
    recipient is occluded first (a mark added to an image that keeps its own object).
    ``base``: the images the recipients are taken from, when ``images`` holds the donors'
    pixels only (e.g. a blank fill).

    Example:
        >>> x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
        >>> m = torch.tensor([[[True, False], [False, False]]])
        >>> paste_regions(x, torch.tensor([0]), torch.tensor([1]), m)[0, 0, :, 0].tolist()
        [1.0, 1.0, 0.0, 0.0]
    """
    pixels = region_pixels(masks, tuple(images.shape[-2:]))
    base = images if base is None else base
    return torch.where(pixels[:, None], images[donors], base[recipients])


def brought_here(images: torch.Tensor, donors: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[P, C, H, W]``: each ``images[donors[i]]`` moved so that its pixels of the region's
    control place (:func:`~lightning_vitrcam.shortcut.shapes.elsewhere`: the point reflection
    through the centre, or half the grid further) sit on the region ``masks[i]`` itself: the
    donor's own content from elsewhere, to paste where its mark was.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> m = torch.zeros(1, 2, 2, dtype=torch.bool); m[0, 1, 1] = True  # bottom-right token
        >>> brought_here(x, torch.tensor([0]), m)[0, 0, 2:, 2:]  # the top-left token's pixels
        tensor([[5., 4.],
                [1., 0.]])
    """
    h, w = masks.shape[-2:]
    H, W = images.shape[-2:]
    src = images[donors]
    rolled = src.roll((-(h // 2) * (H // h), -(w // 2) * (W // w)), (-2, -1))
    return torch.where(shifts(masks)[:, None, None, None], rolled, src.flip(-1).flip(-2))


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: mean and std over the pixels, ``[B, C, 1, 1]`` each."""
    mean = images.mean(dim=(2, 3), keepdim=True)
    std = images.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return mean, std


def colour_swap(
    images: torch.Tensor, recipients: torch.Tensor, donors: torch.Tensor
) -> torch.Tensor:
    """Copies of ``images[recipients]`` with the per-channel mean and std of
    ``images[donors]``: the recipient's content in the donor's colour statistics.

    Example:
        >>> a = torch.arange(4.0).view(1, 2, 2)
        >>> x = torch.stack([a, 10 + 2 * a])
        >>> colour_swap(x, torch.tensor([0]), torch.tensor([1]))[0, 0]
        tensor([[10., 12.],
                [14., 16.]])
    """
    mean, std = _channel_stats(images)
    own = (images[recipients] - mean[recipients]) / std[recipients]
    return own * std[donors] + mean[donors]


def colour_shift(
    images: torch.Tensor, recipients: torch.Tensor, donors: torch.Tensor, seed: int = 0
) -> torch.Tensor:
    """The control of :func:`colour_swap`: each recipient's per-channel (mean, std) moved by
    as much as the swap moves them, in a random direction that matches no image (a seeded
    generator: the global RNG is untouched; the std stays at least a tenth of its own)."""
    mean, std = _channel_stats(images)
    m, s = mean[recipients], std[recipients]
    change = torch.cat([mean[donors] - m, std[donors] - s], dim=1).flatten(1)  # [P, 2C]
    g = torch.Generator(device="cpu").manual_seed(seed)
    direction = torch.randn(change.shape, generator=g).to(change)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    step = (direction * change.norm(dim=1, keepdim=True)).view(change.shape[0], 2, -1)
    new_mean = m + step[:, 0, :, None, None]
    new_std = (s + step[:, 1, :, None, None]).clamp_min(0.1 * s)
    return (images[recipients] - m) / s * new_std + new_mean


def move_object(
    images: torch.Tensor,
    masks: torch.Tensor,
    objects: torch.Tensor,
    backgrounds: torch.Tensor,
) -> torch.Tensor:
    """Copies of ``images[backgrounds]`` whose own object (``masks``) is filled with their
    background's mean colour and onto which the object of ``images[objects]`` is pasted at its
    own place: object ``objects[i]`` on the background of ``backgrounds[i]``.

    Example:
        >>> x = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
        >>> m = torch.tensor([[[True, False], [False, False]], [[False, False], [False, True]]])
        >>> move_object(x, m, torch.tensor([0]), torch.tensor([1]))[0, 0]
        tensor([[0., 1.],
                [1., 1.]])
    """
    m = masks.to(images.device).bool()
    bg = images[backgrounds]
    own = m[backgrounds][:, None]
    fill = (bg * ~own).sum(dim=(2, 3), keepdim=True) / (~own).sum(
        dim=(2, 3), keepdim=True
    ).clamp_min(1)
    base = torch.where(own, fill, bg)
    return torch.where(m[objects][:, None], images[objects], base)


def argmax_predicts(scores: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` bool: the one predicted class of each row (multiclass, binary)."""
    return torch.nn.functional.one_hot(scores.argmax(dim=1), scores.shape[1]).bool()


_MAKE = {Copy.OCCLUDED: occlude_boxes, Copy.KEPT: keep_boxes}


class CopyCache:
    """The probes' copies of one alarm check, each scored once by ``(probe row, box, kind)``.

    ``forward`` maps a batch of images to logits (it bounds its own batch size), ``score``
    logits to per-class scores, ``predicts`` scores to the predicted classes (default: the
    arg-max); each copy is scored for its probe's ``targets`` class. A copy looked up instead
    of run again has the score it had, up to the float rounding of another batch.
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        targets: torch.Tensor,
        grid: tuple[int, int],
        predicts: Callable[[torch.Tensor], torch.Tensor] = argmax_predicts,
    ) -> None:
        self.forward, self.score, self.predicts = forward, score, predicts
        self.images, self.targets, self.grid = images, targets, grid
        self._keys = torch.empty(0, dtype=torch.long, device=images.device)
        self._values = torch.empty(0, device=images.device)

    def scores(self, batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each image's score of its target class (one forward of the whole batch)."""
        return self.of_logits(self.forward(batch), targets)

    def of_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each row's score of its target class, read from its logits."""
        return self.score(logits.float()).gather(1, targets[:, None]).squeeze(1)

    def copies(self, rows: torch.Tensor, boxes: torch.Tensor, kind: Copy) -> torch.Tensor:
        """Each ``images[rows[i]]`` with ``boxes[i]`` occluded (or kept alone), scored for its
        target: the copies not scored yet run once each, in one batched forward."""
        keys = self._key(rows, boxes, kind)
        unique, inverse = keys.unique(return_inverse=True)
        first = torch.full_like(unique, len(keys)).scatter_reduce(
            0, inverse, torch.arange(len(keys), device=keys.device), "amin"
        )
        found, values = self._lookup(unique)
        todo = first[~found]
        if todo.numel():
            make = _MAKE[kind]
            fresh = self.scores(
                make(self.images, rows[todo], boxes[todo], self.grid), self.targets[rows[todo]]
            )
            values = values.to(fresh.dtype)
            values[~found] = fresh
            self._keys = torch.cat([self._keys, unique[~found]])
            self._values = torch.cat([self._values.to(fresh.dtype), fresh])
        return values[inverse]

    def _key(self, rows: torch.Tensor, boxes: torch.Tensor, kind: Copy) -> torch.Tensor:
        """One integer per copy: its probe row, box corners and kind, mixed radix."""
        h, w = self.grid
        code = boxes[:, 0]
        for k, base in ((1, h + 1), (2, w + 1), (3, w + 1)):
            code = code * base + boxes[:, k]
        return (rows * (h + 1) ** 2 * (w + 1) ** 2 + code) * 2 + int(kind)

    def _lookup(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(found, values)``: which ``keys`` were scored, and their scores (0 where not)."""
        if not self._keys.numel():
            return torch.zeros_like(keys, dtype=torch.bool), torch.zeros(
                len(keys), device=keys.device
            )
        known, order = self._keys.sort()
        pos = torch.searchsorted(known, keys).clamp_max(len(known) - 1)
        found = known[pos] == keys
        return found, torch.where(found, self._values[order[pos]], 0.0)
