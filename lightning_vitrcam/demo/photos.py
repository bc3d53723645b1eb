"""Crops of real images: a photograph, a brain MRI slice and a terrain relief.

The generated data of this package (shapes, digits, textures) are drawn by rules the alarm
was designed beside; these are not. The three real images ship with matplotlib (a core
dependency) as its sample data: the portrait of Grace Hopper (a US Navy photograph), an MRI
slice of a head (``s1045.ima.gz``) and the elevation of the Jacksboro fault, shaded as a
relief. Each image of a class is a random square crop of its source (a third to three fifths
of the source's side, centred on its content), flipped at random and given its own level,
spread and cast from one range for every class, so that neither colour nor brightness names
the class: the class is what a real image of that kind shows (a face, a uniform or a flag; a
skull and its folds; ridges and valleys).

Example:
    >>> images, labels, masks = photos(6, seed=0)
    >>> tuple(images.shape), sorted(set(labels.tolist())), bool(masks.all())
    ((6, 3, 48, 48), [0, 1, 2], True)
    >>> images, labels, _ = scans(6, seed=0)  # "a scan or not": the MRI crops are positive
    >>> sorted(set(labels.tolist()))
    [0, 1]
"""

from __future__ import annotations

import gzip
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["PHOTO_NAMES", "photos", "scans"]

PHOTO_NAMES: tuple[str, ...] = ("portrait", "scan", "terrain")
_SIDE = 192  # each source is kept at this many pixels on its shorter side (crops of 64-115)


def _gray(image: torch.Tensor) -> torch.Tensor:
    """``[1, 1, H, W]`` in [0, 1] at :data:`_SIDE` pixels on the shorter side."""
    x = image.float()[None, None]
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-6)
    h, w = x.shape[-2:]
    k = _SIDE / min(h, w)
    return F.interpolate(x, size=(round(h * k), round(w * k)), mode="area")


@lru_cache(maxsize=1)
def _sources() -> tuple[torch.Tensor, ...]:
    """The three real images, grey, from matplotlib's sample data (read once)."""
    import numpy as np
    from matplotlib import cbook
    from matplotlib.colors import LightSource
    from PIL import Image

    path = lambda name: cbook.get_sample_data(name, asfileobj=False)  # noqa: E731
    portrait = np.asarray(Image.open(path("grace_hopper.jpg")).convert("L"), dtype=np.float32)
    with gzip.open(path("s1045.ima.gz")) as f:
        mri = np.frombuffer(f.read(), np.uint16).reshape(256, 256).astype(np.float32)
    with np.load(path("jacksboro_fault_dem.npz")) as dem:
        shade = LightSource(azdeg=315, altdeg=45).hillshade(
            dem["elevation"], vert_exag=0.05, dx=10, dy=10
        )
    images = (portrait, mri, shade.astype(np.float32))
    return tuple(_gray(torch.from_numpy(x)) for x in images)


def _crops(source: torch.Tensor, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """``[n, 1, size, size]`` random square crops of ``source`` centred on pixels brighter
    than its mean (its content: the MRI's black surround is not a crop of a head)."""
    _, _, h, w = source.shape
    side = (1 / 3 + (3 / 5 - 1 / 3) * torch.rand(n, generator=g)) * min(h, w)
    content = (source[0, 0] > source.mean()).flatten().nonzero().flatten()
    centre = content[torch.randint(0, len(content), (n,), generator=g)]
    cy, cx = (centre // w).float(), (centre % w).float()
    cy = torch.minimum(torch.maximum(cy, side / 2), h - side / 2)
    cx = torch.minimum(torch.maximum(cx, side / 2), w - side / 2)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip * side / w
    theta[:, 1, 1] = side / h
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 2] = 2 * cy / h - 1
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    return F.grid_sample(source.expand(n, -1, -1, -1), grid, mode="bilinear",
                         align_corners=False)  # fmt: skip


def _draw(classes: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """``[n, 3, size, size]`` in [0, 1]: a crop of the source of each of ``classes``."""
    n = len(classes)
    grey = torch.zeros(n, 1, size, size)
    for k, source in enumerate(_sources()):
        idx = (classes == k).nonzero().flatten()
        if len(idx):
            grey[idx] = _crops(source, len(idx), size, g)
    # each image its own level, spread and cast, drawn from one range for every class: the
    # class is in the content, not in the tone (an MRI crop is darker than a portrait's)
    z = grey - grey.mean(dim=(2, 3), keepdim=True)
    z = z / z.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    level = 0.35 + 0.25 * torch.rand(n, 1, 1, 1, generator=g)
    spread = 0.12 + 0.08 * torch.rand(n, 1, 1, 1, generator=g)
    cast = 1.0 + 0.12 * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1)
    img = (level + spread * z) * cast + 0.02 * torch.randn(n, 3, size, size, generator=g)
    return img.clamp(0, 1)


def photos(
    n: int, seed: int = 0, size: int = 48
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` crops balanced over :data:`PHOTO_NAMES`: ``(images [n, 3, size, size] in [0, 1],
    labels [n], masks [n, size, size])`` (the mask is the whole image)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % len(PHOTO_NAMES)
    return _draw(labels, size, g), labels, torch.ones(n, size, size, dtype=torch.bool)


def scans(n: int, seed: int = 0, size: int = 48) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` crops labelled "a scan or not", half of each: 1 the MRI crops, 0 crops of the
    portrait or the terrain (as many of each)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % 2
    portrait, scan, terrain = (PHOTO_NAMES.index(c) for c in ("portrait", "scan", "terrain"))
    other = torch.where(torch.randperm(n, generator=g) % 2 == 0, portrait, terrain)
    classes = torch.where(labels == 1, scan, other)
    return _draw(classes, size, g), labels, torch.ones(n, size, size, dtype=torch.bool)
