"""The shortcut-learning demo: data with a planted corner shortcut, a small ViT, an experiment.

* :mod:`~lightning_vitrcam.demo.data`: ``ShapesDataModule``/``ShapesDataset`` (shapes with a
  class-coloured corner patch, plus a patch-free split) and ``coloured_squares``.
* :mod:`~lightning_vitrcam.demo.model`: ``ViTClassifier``, a timm ViT trained from scratch.
* :mod:`~lightning_vitrcam.demo.experiment`: ``shortcut_experiment`` and its table.

With ``shortcut_p=0.95`` the default ViT reaches high validation accuracy within two epochs
while it stays near chance on patch-free images; with ``shortcut_p=0`` it needs more steps
to learn the shapes themselves (the README's demo table).

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
