"""The shortcut-learning demo: data with a planted corner shortcut, a small ViT, an experiment.

* :mod:`~lightning_vitrcam.demo.data`: ``ShapesDataModule``/``ShapesDataset`` (shapes with a
  class-coloured corner patch, plus a patch-free split) and ``coloured_squares``.
* :mod:`~lightning_vitrcam.demo.model`: ``ViTClassifier``, a timm ViT trained from scratch.
* :mod:`~lightning_vitrcam.demo.experiment`: ``shortcut_experiment`` and its table.

Measured on 2 CPU threads with the defaults (3,000 training images, ~10 s per epoch unloaded):
with ``shortcut_p=0.95`` the default ViT reaches ~97% validation accuracy within 2 epochs but
stays at chance (25%) on patch-free images for ~4 epochs (a 10-epoch run slowly picks up shapes
too: 99% validation, 45% patch-free at the end). With ``shortcut_p=0`` it needs more steps to
learn the shapes themselves (chance after 1 epoch, ~80% after 4, ~97% after 10 epochs of a
10-epoch run).

Example:
    >>> from lightning_vitrcam.demo import ShapesDataModule, ViTClassifier
    >>> dm = ShapesDataModule(num_train=64, num_val=32, num_patch_free=32, batch_size=16)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.val_dataloader()))
    >>> model = ViTClassifier(model_kwargs=dict(img_size=64, patch_size=8, embed_dim=32,
    ...                                         depth=1, num_heads=2))
    >>> model(batch["image"]).shape
    torch.Size([16, 4])
"""

from lightning_vitrcam.demo.data import (
    CORNERS,
    DEMO_MEAN,
    DEMO_STD,
    PATCH_COLORS,
    SHAPE_NAMES,
    SQUARE_COLOURS,
    ShapesDataModule,
    ShapesDataset,
    coloured_squares,
    corner_slices,
)
from lightning_vitrcam.demo.experiment import (
    EpochSignals,
    first_warning,
    shortcut_experiment,
    signals_table,
)
from lightning_vitrcam.demo.model import DEFAULT_VIT_KWARGS, ViTClassifier

__all__ = [
    "CORNERS",
    "DEFAULT_VIT_KWARGS",
    "DEMO_MEAN",
    "DEMO_STD",
    "PATCH_COLORS",
    "SHAPE_NAMES",
    "SQUARE_COLOURS",
    "EpochSignals",
    "ShapesDataModule",
    "ShapesDataset",
    "ViTClassifier",
    "coloured_squares",
    "corner_slices",
    "first_warning",
    "shortcut_experiment",
    "signals_table",
]
