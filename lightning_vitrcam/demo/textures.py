"""Photograph-like textures with no object: bricks, grass, gravel and a cratered surface.

The class is the texture's structure; every image draws its colour from the same range, its
own scale and its own phase, so neither colour nor place names the class. The whole image is
the evidence: a test that cuts a part out of one image and pastes it into another meets a
model for which any part of the image carries its class.

Example:
    >>> images, labels, masks = textures(8, seed=0)
    >>> tuple(images.shape), TEXTURE_NAMES[int(labels[0])] in TEXTURE_NAMES, bool(masks.all())
    ((8, 3, 48, 48), True, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["TEXTURE_NAMES", "textures"]

TEXTURE_NAMES: tuple[str, ...] = ("bricks", "grass", "gravel", "craters")


def _smooth(n: int, size: int, cells: int, g: torch.Generator) -> torch.Tensor:
    """``[n, 1, size, size]`` smooth noise in [-1, 1] from a ``cells`` x ``cells`` lattice."""
    return F.interpolate(2 * torch.rand(n, 1, cells, cells, generator=g) - 1, size=(size, size),
                         mode="bicubic", align_corners=False).clamp(-1, 1)  # fmt: skip


def _bricks(n: int, s: int, g: torch.Generator) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(s).float(), torch.arange(s).float(), indexing="ij")
    h = 7 + 5 * torch.rand(n, 1, 1, generator=g)
    w = 12 + 8 * torch.rand(n, 1, 1, generator=g)
    dy, dx = h * torch.rand(n, 1, 1, generator=g), w * torch.rand(n, 1, 1, generator=g)
    row = torch.floor((yy + dy) / h)
    x = xx + dx + 0.5 * w * (row % 2)
    mortar = ((yy + dy) % h < 1.6) | (x % w < 1.6)
    shade = 0.15 * (2 * torch.rand(n, 8, 8, generator=g) - 1)  # each brick its own shade
    idx_r = row.long() % 8
    idx_c = torch.floor(x / w).long() % 8
    brick = shade.gather(1, idx_r.view(n, -1).clamp(0, 7)[:, :, None].expand(-1, -1, 8))
    brick = brick.view(n, s, s, 8).gather(3, idx_c[..., None]).squeeze(3)
    return torch.where(mortar, torch.full_like(brick, -0.45), brick)


def _grass(n: int, s: int, g: torch.Generator) -> torch.Tensor:
    # noise stretched along a near-vertical direction: long thin blades
    fine = 2 * torch.rand(n, 1, s * 2, s // 3, generator=g) - 1
    blades = F.interpolate(fine, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
    tilt = 0.3 * (2 * torch.rand(n, generator=g) - 1)
    grid = F.affine_grid(
        torch.stack([torch.stack([tilt.cos(), -tilt.sin(), torch.zeros(n)], -1),
                     torch.stack([tilt.sin(), tilt.cos(), torch.zeros(n)], -1)], 1),
        (n, 1, s, s), align_corners=False,
    )  # fmt: skip
    return 0.5 * F.grid_sample(blades[:, None], grid, padding_mode="reflection",
                               align_corners=False)[:, 0]  # fmt: skip


def _gravel(n: int, s: int, g: torch.Generator) -> torch.Tensor:
    # stones: the nearest of random seeds gives each pixel its stone's shade, darker at edges
    k = 40
    seeds = torch.rand(n, k, 2, generator=g) * s
    shade = 0.35 * (2 * torch.rand(n, k, generator=g) - 1)
    yy, xx = torch.meshgrid(torch.arange(s).float(), torch.arange(s).float(), indexing="ij")
    p = torch.stack([xx, yy], -1).view(1, 1, -1, 2)
    d = (p - seeds[:, :, None]).norm(dim=-1)  # [n, k, P]
    two = d.topk(2, dim=1, largest=False)
    edge = (two.values[:, 1] - two.values[:, 0]) < 1.2
    stone = shade.gather(1, two.indices[:, 0])
    return torch.where(edge, torch.full_like(stone, -0.4), stone).view(n, s, s)


def _craters(n: int, s: int, g: torch.Generator) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(s).float(), torch.arange(s).float(), indexing="ij")
    out = 0.25 * _smooth(n, s, 5, g)[:, 0]
    for _ in range(4):
        cx, cy = (s * torch.rand(n, 1, 1, generator=g) for _ in range(2))
        r = 3 + 6 * torch.rand(n, 1, 1, generator=g)
        d = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() / r
        # a dark bowl with a bright rim on one side (light from the top-left)
        bowl = torch.where(d < 1, -0.3 * (1 - d), torch.zeros_like(d))
        rim = 0.35 * torch.exp(-((d - 1) ** 2) / 0.02) * ((yy - cy + xx - cx) < 0)
        out = out + bowl + rim
    return out


_MAKERS = (_bricks, _grass, _gravel, _craters)


def textures(
    n: int, seed: int = 0, size: int = 48
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` textures balanced over :data:`TEXTURE_NAMES`: ``(images [n, 3, size, size] in
    [0, 1], labels [n], masks [n, size, size])`` (the mask is the whole image: no object)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % len(_MAKERS)
    pattern = torch.zeros(n, size, size)
    for k, make in enumerate(_MAKERS):
        idx = (labels == k).nonzero().flatten()
        if len(idx):
            pattern[idx] = make(len(idx), size, g)
    base = 0.3 + 0.35 * torch.rand(n, 3, 1, 1, generator=g)
    light = 0.12 * _smooth(n, size, 3, g)  # uneven light over the photograph
    img = base * (1 + pattern[:, None]) + light + 0.03 * torch.randn(n, 3, size, size, generator=g)
    return img.clamp(0, 1), labels, torch.ones(n, size, size, dtype=torch.bool)
