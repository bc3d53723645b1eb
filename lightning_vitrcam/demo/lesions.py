"""Skin-lesion-like images, "irregular or not": the setting of the rulers, pen marks and
stickers of dermoscopy data, generated (no image of a real lesion is used).

A brown lesion lies near the centre of skin of a random tone, with smooth shading and, on a
third of the images of either class, a few dark hairs across it. The positives ("irregular")
are larger, have a ragged border and, more often, a darker blotch inside; the negatives are
smaller, round and mostly of one colour. The classes overlap in size and blotches, so a
model needs the whole lesion, and a cue that only the positives carry is a shortcut worth
taking. Used by ``benchmarks/shortcut_signal.py`` as data no rule of the alarm was chosen on.

Example:
    >>> images, labels, masks = lesions(8, seed=0)
    >>> tuple(images.shape), sorted(set(labels.tolist())), bool(masks.any((1, 2)).all())
    ((8, 3, 48, 48), [0, 1], True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_vitrcam.demo.textures import _smooth

__all__ = ["LESION_NAMES", "lesions"]

LESION_NAMES: tuple[str, ...] = ("regular", "irregular")


def _outline(
    n: int, size: int, ragged: torch.Tensor, radius: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """``[n, size, size]`` bool: a blob near the centre of mean radius ``radius`` ``[n]`` (a
    share of the side) that varies with the angle by harmonics 2-7 of amplitude ``ragged``
    ``[n]`` (0: a circle)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centre = size / 2 + (size / 10) * (2 * torch.rand(n, 2, generator=g) - 1)
    dy, dx = yy - centre[:, 0, None, None], xx - centre[:, 1, None, None]
    angle, dist = torch.atan2(dy, dx), torch.sqrt(dy**2 + dx**2)
    radius = size * radius
    k = torch.arange(2, 8).float()
    amp = torch.rand(n, len(k), generator=g) * ragged[:, None] / k.sqrt()
    phase = 2 * math.pi * torch.rand(n, len(k), generator=g)
    wobble = (amp[:, :, None, None] * torch.cos(k[None, :, None, None] * angle[:, None]
                                                 + phase[:, :, None, None])).sum(1)  # fmt: skip
    return dist <= radius[:, None, None] * (1 + wobble)


def _hairs(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """``[n, size, size]`` in [0, 1]: three thin dark curves across a third of the images."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.zeros(n, size, size)
    hairy = torch.rand(n, generator=g) < 1 / 3
    for _ in range(3):
        angle = math.pi * torch.rand(n, generator=g)
        offset = size * (torch.rand(n, generator=g) - 0.5)
        bend = 0.02 * (2 * torch.rand(n, generator=g) - 1)
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        u = (xx - size / 2) * cos + (yy - size / 2) * sin
        v = -(xx - size / 2) * sin + (yy - size / 2) * cos
        d = (v - offset[:, None, None] - bend[:, None, None] * u**2).abs()
        out = torch.maximum(out, (1 - d / 0.8).clamp(0, 1))
    return out * hairy[:, None, None]


def lesions(
    n: int, seed: int = 0, size: int = 48
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` images, half of each class in random order: ``(images [n, 3, size, size] in
    [0, 1], labels [n] (1: irregular), masks [n, size, size] (the lesion))``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % 2
    positive = labels.bool()
    # the classes overlap: a ragged border and a blotch are more likely, not certain
    ragged = torch.where(positive, 0.3 + 0.45 * torch.rand(n, generator=g),
                         0.22 * torch.rand(n, generator=g))  # fmt: skip
    blotched = torch.rand(n, generator=g) < torch.where(positive, 0.7, 0.3)
    # irregular lesions are larger (the "diameter" of the clinical ABCD rule), with overlap
    radius = torch.where(positive, 0.2, 0.13) + 0.1 * torch.rand(n, generator=g)
    masks = _outline(n, size, ragged, radius, g)
    inner = _outline(n, size, torch.full((n,), 0.5), radius * 0.7, g) & masks
    # a blotch: the lesion's darker inner part, shrunk towards the lesion's own centre
    shrink = F.max_pool2d((~masks).float()[:, None], 9, stride=1, padding=4)[:, 0] < 0.5
    blotch = inner & shrink & blotched[:, None, None]
    skin = torch.tensor([0.72, 0.54, 0.46]) + 0.08 * (2 * torch.rand(n, 3, generator=g) - 1)
    brown = torch.tensor([0.36, 0.21, 0.13]) + 0.06 * (2 * torch.rand(n, 3, generator=g) - 1)
    shade = 1 + 0.08 * _smooth(n, size, 4, g)[:, 0]
    texture = 1 + 0.12 * _smooth(n, size, 12, g)[:, 0]
    images = skin[:, :, None, None] * shade[:, None]
    lesion = brown[:, :, None, None] * texture[:, None]
    lesion = torch.where(blotch[:, None], lesion * 0.55, lesion)
    images = torch.where(masks[:, None], lesion, images)
    images = images * (1 - 0.7 * _hairs(n, size, g)[:, None])
    return images.clamp(0, 1), labels, masks
