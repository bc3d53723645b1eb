"""PNG files and bytes of uint8 pictures.

Example:
    >>> import torch
    >>> to_png(torch.zeros(3, 4, 4, dtype=torch.uint8))[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import torch
from PIL import Image

__all__ = ["PNG_COMPRESS_LEVEL", "PNG_STRATEGY", "save_png", "to_png"]

# zlib level 1 and run-length matches: encoding is the callback's cost (and TensorBoard
# checksums every byte), the run's storage matters less; docs/performance.md
PNG_COMPRESS_LEVEL = 1
PNG_STRATEGY = zlib.Z_RLE


def _to_pil(image: torch.Tensor) -> Image.Image:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype} (see overlay/saliency_grid)")
    img = image.detach().cpu()
    if img.dim() == 2:
        return Image.fromarray(img.numpy(), mode="L")
    if img.dim() != 3 or img.shape[0] not in (1, 3, 4):
        raise ValueError(f"image must be [C, H, W] with C in (1, 3, 4), got {tuple(img.shape)}")
    if img.shape[0] == 1:
        return Image.fromarray(img[0].numpy())
    return Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())


def to_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a ``uint8 [3, H, W]`` (or ``[1|4, H, W]``, ``[H, W]``) image.

    Example:
        >>> to_png(torch.zeros(3, 4, 4, dtype=torch.uint8))[:4]
        b'\\x89PNG'
    """
    buf = io.BytesIO()
    _to_pil(image).save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_STRATEGY
    )
    return buf.getvalue()


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a ``uint8 [3, H, W]`` image as PNG (parent folders are created); returns the path.

    Example:
        >>> import tempfile, os
        >>> p = save_png(torch.zeros(3, 4, 4, dtype=torch.uint8),
        ...              os.path.join(tempfile.mkdtemp(), "a", "x.png"))
        >>> p.exists()
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_png(image))
    return path
