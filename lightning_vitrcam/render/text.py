"""Text drawn into pictures (TensorBoard images have no caption field): fonts and strips.

Example:
    >>> tuple(strip(["hello"], width=80).shape)
    (3, 24, 80)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "BG",
    "FG",
    "GREEN",
    "MIN_TILE",
    "PAD",
    "RED",
    "load_font",
    "font_fitting",
    "font_size",
    "pil_to_tensor",
    "strip",
    "upscale",
]

# Tiles smaller than this are upscaled (nearest) so that captions and token cells stay legible.
MIN_TILE = 96
PAD = 2
BG = (24, 24, 24)
FG = (235, 235, 235)
RED = (255, 70, 70)
GREEN = (120, 220, 120)


@lru_cache(maxsize=16)
def load_font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed bitmap font
        return ImageFont.load_default()


def font_size(tile: int) -> int:
    # about an eighth of a tile, bounded so that 96 px tiles and 512 px tiles both read well
    return int(min(22, max(11, round(tile / 8))))


def text_width(font: Any, text: str) -> float:
    if hasattr(font, "getlength"):
        return float(font.getlength(text))
    box = font.getbbox(text)
    return float(box[2] - box[0])


def line_height(font: Any) -> int:
    box = font.getbbox("Ag|")
    return int(box[3] - min(box[1], 0)) + 3


def fit(font: Any, text: str, width: float) -> str:
    """``text`` cut with ``..`` so that it fits ``width`` pixels."""
    if text_width(font, text) <= width:
        return text
    while text and text_width(font, text + "..") > width:
        text = text[:-1]
    return text + ".."


def font_fitting(text: str, width: int, start: int) -> Any:
    """The largest default font from ``start`` down to 10 px that fits ``text`` in ``width``."""
    for size in range(start, 9, -1):
        font = load_font(size)
        if text_width(font, text) <= width - 8:
            return font
    return load_font(10)


def draw_cross(
    draw: ImageDraw.ImageDraw, x: int, y: int, size: int, color: tuple[int, int, int]
) -> None:
    # drawn as lines: the default font has no glyph for "✗"
    w = max(2, size // 5)
    draw.line([(x, y), (x + size, y + size)], fill=color, width=w)
    draw.line([(x, y + size), (x + size, y)], fill=color, width=w)


def strip(
    lines: Sequence[str | tuple[str, tuple[int, int, int]]],
    width: int,
    font: Any = None,
    cross: bool = False,
    align: str = "left",
) -> torch.Tensor:
    """A caption strip ``uint8 [3, h, width]``: one line of text per entry (a string, in the
    foreground colour, or ``(text, rgb)``); ``font`` defaults to one that suits ``width``."""
    font = font if font is not None else font_fitting(max(lines_text(lines), key=len), width, 14)
    lines = [(line, FG) if isinstance(line, str) else line for line in lines]
    lh = line_height(font)
    height = lh * len(lines) + 4
    img = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(img)
    mark = lh - 4 if cross else 0
    room = width - 8 - (mark + 6 if cross else 0)
    for i, (text, color) in enumerate(lines):
        text = fit(font, text, room)
        x = 4 if align == "left" else max(4, int((width - text_width(font, text)) / 2))
        draw.text((x, 2 + i * lh), text, font=font, fill=color)
    if cross:
        draw_cross(draw, width - mark - 5, 4, mark, RED)
        # a red bar on the left makes a mismatching row visible even in a thumbnail
        draw.rectangle([(0, 0), (2, height - 1)], fill=RED)
    return pil_to_tensor(img)


def lines_text(lines: Sequence[str | tuple[str, Any]]) -> list[str]:
    return [line if isinstance(line, str) else line[0] for line in lines] or [""]


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    import numpy as np

    arr = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def upscale(tiles: torch.Tensor, min_size: int = MIN_TILE) -> torch.Tensor:
    """Nearest upscaling by an integer factor until the smaller side is at least ``min_size``."""
    side = min(tiles.shape[-2:])
    factor = max(1, math.ceil(min_size / max(1, side)))
    if factor == 1:
        return tiles
    return tiles.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
