"""Pictures of saliency maps for loggers and files, split by concern.

* :mod:`~lightning_vitrcam.render.style`: :class:`Style`, the display options every picture
  takes (normalisation to undo, colormap, overlay weight, channels shown);
* :mod:`~lightning_vitrcam.render.colour`: de-normalising, colouring maps, overlays;
* :mod:`~lightning_vitrcam.render.text` and :mod:`~lightning_vitrcam.render.captions`: text
  drawn into pictures (TensorBoard images have no caption field) and what it says;
* :mod:`~lightning_vitrcam.render.grids`: captioned grids, heatmaps, timelines
  (:class:`Picture`);
* :mod:`~lightning_vitrcam.render.png`: PNG bytes and files.

Normalisation statistics are passed in (see :mod:`lightning_vitrcam.normalization`); nothing
here looks inside a model.

Example:
    >>> import torch
    >>> images, maps = torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4)
    >>> overlay(images, maps, Style(cmap="viridis")).shape
    torch.Size([2, 3, 32, 32])
"""

from lightning_vitrcam.render.captions import row_captions
from lightning_vitrcam.render.colour import colorize, denormalize, overlay, to_uint8
from lightning_vitrcam.render.grids import (
    Picture,
    evaluation_pictures,
    evenly_spaced,
    heatmap,
    probe_timelines,
    saliency_grid,
    saliency_picture,
    timeline,
)
from lightning_vitrcam.render.png import save_png, to_png
from lightning_vitrcam.render.style import Style

__all__ = [
    "Picture",
    "Style",
    "evaluation_pictures",
    "colorize",
    "denormalize",
    "evenly_spaced",
    "heatmap",
    "overlay",
    "probe_timelines",
    "row_captions",
    "saliency_grid",
    "saliency_picture",
    "save_png",
    "timeline",
    "to_png",
    "to_uint8",
]
