"""Handwriting-like digits drawn from strokes: 10 classes, 100 (two digits side by side) or
binary ("5 or more").

Each digit is a few polylines on a unit box; every image draws its own affine transform
(scale, rotation, shear, shift), a smooth warp of the strokes and a stroke width, then renders
the strokes anti-aliased on a dark textured background. No font and no bundled data set: the
project generates its own, so that benchmarks never see the images they are later checked on.

Example:
    >>> images, labels, masks = digits(8, seed=0)
    >>> tuple(images.shape), labels.tolist()[:4], bool(masks[0].any())
    ((8, 3, 48, 48), [4, 0, 7, 3], True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DIGIT_STROKES", "digit_pairs", "digits", "render_strokes"]

Point = tuple[float, float]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 12) -> list:
    """Points of an elliptic arc from angle ``a0`` to ``a1`` (degrees; 90 points down)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in torch.linspace(a0, a1, n).tolist()
    ]


#: each digit as polylines on a unit box (x right, y down)
DIGIT_STROKES: tuple[list[list[Point]], ...] = (
    [_arc(0.5, 0.5, 0.26, 0.38, 0, 360, 20)],
    [[(0.36, 0.24), (0.52, 0.1), (0.52, 0.9)]],
    [_arc(0.5, 0.32, 0.24, 0.22, -170, 40, 10) + [(0.25, 0.9), (0.78, 0.9)]],
    [_arc(0.48, 0.3, 0.22, 0.2, -160, 90, 10), _arc(0.48, 0.7, 0.26, 0.2, -90, 160, 10)],
    [[(0.62, 0.9), (0.62, 0.1), (0.22, 0.64), (0.8, 0.64)]],
    [[(0.74, 0.1), (0.34, 0.1), (0.3, 0.44)], _arc(0.5, 0.64, 0.25, 0.24, -130, 140, 12)],
    [_arc(0.56, 0.55, 0.28, 0.38, -60, -250, 12), _arc(0.52, 0.7, 0.22, 0.19, 0, 360, 14)],
    [[(0.22, 0.1), (0.78, 0.1), (0.42, 0.9)]],
    [_arc(0.5, 0.29, 0.2, 0.18, 0, 360, 14), _arc(0.5, 0.7, 0.24, 0.2, 0, 360, 14)],
    [_arc(0.48, 0.3, 0.22, 0.2, 0, 360, 14), [(0.7, 0.32), (0.62, 0.9)]],
)


def _segments(strokes: Sequence[Sequence[Point]]) -> torch.Tensor:
    """``[S, 4]``: the polylines' segments ``(x0, y0, x1, y1)``."""
    out = [(*a, *b) for line in strokes for a, b in zip(line[:-1], line[1:], strict=True)]
    return torch.tensor(out, dtype=torch.float32)


def _padded(classes: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[K, M, 4]``: each class's segments, padded by repeating its first (a repeated
    segment draws nothing new)."""
    m = max(len(s) for s in classes)
    return torch.stack([torch.cat([s, s[:1].expand(m - len(s), 4)]) for s in classes])


_DIGITS = _padded([_segments(s) for s in DIGIT_STROKES])


def _warp(
    points: torch.Tensor, g: torch.Generator, box: tuple[float, float, float]
) -> torch.Tensor:
    """Each image's points (``[n, P, 2]``, unit box) under its own affine map and smooth warp,
    placed in the part ``(x0, width, height)`` of the image."""
    n = points.shape[0]
    x0, width, height = box
    scale = 0.78 + 0.22 * torch.rand(n, 1, generator=g)
    angle = 0.25 * (2 * torch.rand(n, generator=g) - 1)
    shear = 0.2 * (2 * torch.rand(n, generator=g) - 1)
    shift = 0.08 * (2 * torch.rand(n, 2, generator=g) - 1)
    p = points - 0.5
    p = torch.stack([p[..., 0] + shear[:, None] * p[..., 1], p[..., 1]], -1)
    c, s = angle.cos()[:, None], angle.sin()[:, None]
    p = torch.stack([c * p[..., 0] - s * p[..., 1], s * p[..., 0] + c * p[..., 1]], -1)
    p = p * scale[..., None] + 0.5 + shift[:, None]
    phase = 2 * math.pi * torch.rand(n, 2, 1, generator=g)
    p = p + 0.025 * torch.stack(
        [
            torch.sin(2 * math.pi * p[..., 1] + phase[:, 0]),
            torch.sin(2 * math.pi * p[..., 0] + phase[:, 1]),
        ],
        -1,
    )
    return torch.stack([x0 + width * p[..., 0], height * p[..., 1]], -1)


def render_strokes(segments: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """``[n, size, size]`` in [0, 1]: segments ``[n, M, 4]`` (in units of the image side)
    drawn anti-aliased with stroke width ``width`` ``[n]`` (pixels)."""
    pix = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(pix, pix, indexing="ij")
    p = torch.stack([xx, yy], -1).view(1, 1, -1, 2)  # [1, 1, P, 2]
    a, b = segments[..., None, :2], segments[..., None, 2:]  # [n, M, 1, 2]
    ab = b - a
    t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)
    d = (p - (a + t[..., None] * ab)).norm(dim=-1).amin(dim=1) * size  # [n, P] in pixels
    ink = (width[:, None] / 2 - d + 0.5).clamp(0, 1)
    return ink.view(-1, size, size)


def _canvas(ink: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Light strokes on a grey, softly textured, slightly tinted background (a dark cue
    stands out as much as a light one), with pixel noise:
    ``(images [n, 3, s, s] in [0, 1], masks [n, s, s])``."""
    n, s = ink.shape[0], ink.shape[-1]
    level = 0.25 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    texture = F.interpolate(0.08 * (2 * torch.rand(n, 1, 4, 4, generator=g) - 1), size=(s, s),
                            mode="bicubic", align_corners=False)  # fmt: skip
    stroke = 0.8 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    gain = 1.0 + 0.08 * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1)
    img = (level + texture) * (1 - ink[:, None]) + stroke * ink[:, None]
    img = img * gain + 0.03 * torch.randn(n, 3, s, s, generator=g)
    return img.clamp(0, 1), ink > 0.5


def _draw(
    labels: Sequence[torch.Tensor], boxes: Sequence[tuple[float, float, float]], size: int,
    g: torch.Generator, chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Digits ``labels[j]`` drawn in the parts ``boxes[j]`` of each image, side by side."""
    n = len(labels[0])
    width = size * (0.045 + 0.03 * torch.rand(n, generator=g)) * (1.0 if len(boxes) == 1 else 0.7)
    segs = []
    for lab, box in zip(labels, boxes, strict=True):
        seg = _DIGITS[lab]  # [n, M, 4]
        pts = _warp(seg.view(n, -1, 2), g, box)
        segs.append(pts.view(n, -1, 4))
    segments = torch.cat(segs, dim=1)
    ink = torch.cat(
        [
            render_strokes(segments[i : i + chunk], width[i : i + chunk], size)
            for i in range(0, n, chunk)
        ]
    )
    return _canvas(ink, g)


def digits(
    n: int, seed: int = 0, size: int = 48
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` handwriting-like digits, balanced over the 10 classes in random order:
    ``(images [n, 3, size, size] in [0, 1], labels [n], masks [n, size, size])``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % 10
    images, masks = _draw([labels], [(0.0, 1.0, 1.0)], size, g)
    return images, labels, masks


def digit_pairs(
    n: int, seed: int = 0, size: int = 48
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` two-digit numbers 00-99 (100 classes, balanced), each digit in its half of the
    image: ``(images, labels, masks)`` as :func:`digits`."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % 100
    images, masks = _draw([labels // 10, labels % 10], [(0.0, 0.5, 1.0), (0.5, 0.5, 1.0)], size, g)
    return images, labels, masks
