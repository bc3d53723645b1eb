"""Demo data and model for the shortcut-learning demo.

``ShapesDataModule`` draws small RGB images of a few light-coloured shapes on a darker textured
grey background. With
probability ``shortcut_p`` a small patch whose colour names the class sits in a fixed corner, in
both the training and the validation split, so a Vision Transformer can score well on validation
by reading the corner alone. ``patch_free_dataloader()`` serves images from the same distribution
without the patch, which exposes such a model. ``ViTClassifier`` wraps a small timm ViT.

Measured on 2 CPU threads with the defaults (3,000 training images, ~10 s per epoch unloaded):
with ``shortcut_p=0.95`` the default ViT reaches ~97% validation accuracy within 2 epochs but
stays at chance (25%) on patch-free images for ~4 epochs (a 10-epoch run slowly picks up shapes
too: 99% validation, 45% patch-free at the end). With ``shortcut_p=0`` it needs more steps to
learn the shapes themselves (chance after 1 epoch, ~80% after 4, ~97% after 10 epochs of a
10-epoch run).

Example:
    >>> import lightning as L
    >>> from lightning_vitrcam.demo import ShapesDataModule, ViTClassifier
    >>> dm = ShapesDataModule(num_train=64, num_val=32, num_patch_free=32, batch_size=16)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.val_dataloader()))
    >>> sorted(batch), tuple(batch["image"].shape), tuple(batch["mask"].shape)
    (['has_patch', 'image', 'label', 'mask'], (16, 3, 64, 64), (16, 64, 64))
    >>> model = ViTClassifier(model_kwargs=dict(img_size=64, patch_size=8, embed_dim=32,
    ...                                         depth=1, num_heads=2))
    >>> model(batch["image"]).shape
    torch.Size([16, 4])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_vitrcam.callback import PossibleShortcutWarning, ViTReciproCAMCallback
from lightning_vitrcam.render import denormalize

__all__ = [
    "CORNERS",
    "DEFAULT_VIT_KWARGS",
    "PATCH_COLORS",
    "SHAPE_NAMES",
    "ShapesDataModule",
    "ShapesDataset",
    "EpochSignals",
    "ViTClassifier",
    "first_warning",
    "shortcut_experiment",
    "signals_table",
    "corner_slices",
    "DEMO_MEAN",
    "DEMO_STD",
]

Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right"]
CORNERS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")
# Fully saturated and far apart, so the shortcut is trivially readable from one token.
PATCH_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
)
DEFAULT_VIT_KWARGS: dict[str, Any] = {
    "img_size": 64,
    "patch_size": 8,
    "embed_dim": 128,
    "depth": 4,
    "num_heads": 4,
}

# Shape radius as a fraction of the image side; every shape fits in a disc of that radius.
_RADIUS_RANGE = (0.28, 0.36)
# Rotation (radians, +-) is off: measured on this data, it cost a from-scratch ViT about 15
# points of accuracy after 3 epochs; any value must stay well under pi/8 (square vs diamond).
_MAX_ROTATION = 0.0
_SHAPE_LEVEL = (0.6, 1.0)  # range of each shape colour channel
_BG_LEVEL = (0.15, 0.4)  # range of the background grey level
_TEXTURE_AMPLITUDE = 0.15  # background brightness swing of the low-frequency texture
_NOISE_STD = 0.03  # per-pixel noise over background and shape
_CORNER_MARGIN = 2  # free pixels between the patch corner area and any shape
# The default ViT's timm pretrained_cfg normalisation, so that the callback's default (read from
# the model) de-normalises demo images correctly without configuration.
DEMO_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEMO_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
_CHUNK = 256  # images drawn at once: bounds peak memory, fixed so chunking never changes data


def corner_slices(corner: str, image_size: int, patch_size: int) -> tuple[slice, slice]:
    """Row and column slices of the ``patch_size`` square in ``corner`` of a square image.

    Example:
        >>> corner_slices("bottom_right", 64, 8)
        (slice(56, 64, None), slice(56, 64, None))
    """
    if corner not in CORNERS:
        raise ValueError(f"shortcut_corner must be one of {CORNERS}, got {corner!r}")
    top = corner.startswith("top")
    left = corner.endswith("left")
    rows = slice(0, patch_size) if top else slice(image_size - patch_size, image_size)
    cols = slice(0, patch_size) if left else slice(image_size - patch_size, image_size)
    return rows, cols


# Shape tests in the shape's own frame (unit radius, y pointing down). Every shape has the area
# of the equilateral triangle inscribed in the unit circle: measured on this data, a from-scratch
# ViT otherwise learns "how much foreground" first, which reaches ~65% without learning shapes
# and also keeps it from picking up the planted shortcut. All shapes fit inside the unit disc
# (also if rotated), so the disc of radius r bounds the drawn object.
_AREA = 3.0 * math.sqrt(3.0) / 4.0
_CROSS_HALF_WIDTH = 0.22
_RING_OUTER = 0.9


def _circle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u * u + v * v <= _AREA / math.pi


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) <= math.sqrt(_AREA) / 2.0


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Equilateral, apex up, inscribed in the unit circle: three half-planes at inradius 0.5.
    c = math.sqrt(3.0) / 2.0
    return (v <= 0.5) & (c * u - 0.5 * v <= 0.5) & (-c * u - 0.5 * v <= 0.5)


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Two bars of half-width w and half-length h overlap in a square: area 8wh - 4w^2.
    w = _CROSS_HALF_WIDTH
    h = (_AREA + 4.0 * w * w) / (8.0 * w)
    au, av = u.abs(), v.abs()
    return ((au <= w) & (av <= h)) | ((av <= w) & (au <= h))


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    rho2 = u * u + v * v
    return (rho2 <= _RING_OUTER**2) & (rho2 >= _RING_OUTER**2 - _AREA / math.pi)


def _diamond(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u.abs() + v.abs() <= math.sqrt(_AREA / 2.0)


_SHAPE_FNS: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    _circle,
    _square,
    _triangle,
    _cross,
    _ring,
    _diamond,
)


def _child_seeds(seed: int, n: int) -> list[int]:
    """Independent seeds for the splits, derived from one user seed without the global RNG."""
    g = torch.Generator().manual_seed(seed)
    return [int(s) for s in torch.randint(0, 2**62, (n,), generator=g)]


class ShapesDataset(Dataset):
    """Procedurally drawn shapes with an optional class-coloured corner patch (the shortcut).

    Each image shows one upright shape (class ``label``) of random size, position and
    light colour on a darker grey low-frequency texture with pixel noise. All shapes of one size
    cover the same area, so only their form tells the classes apart. ``mask`` marks the shape's
    pixels. With probability ``shortcut_p`` the ``patch_size`` square in ``shortcut_corner``
    is painted ``PATCH_COLORS[label]`` (``has_patch``). Shapes never reach that corner area
    (whether or not the patch is drawn), so masks and patch never overlap. Everything is drawn
    once at construction from a local ``torch.Generator``; the same arguments give the same data,
    and ``shortcut_p`` only decides where the patch goes, not the shapes themselves.

    Items are dicts ``{"image": float [3,H,W] normalised, "label": long [], "mask": bool [H,W],
    "has_patch": bool []}``. The raw data are kept as ``images`` (uint8 ``[N,3,H,W]``),
    ``labels``, ``masks`` and ``has_patch``.

    Example:
        >>> ds = ShapesDataset(8, shortcut_p=1.0, seed=1)
        >>> item = ds[0]
        >>> item["image"].shape, item["label"].dtype, bool(item["has_patch"])
        (torch.Size([3, 64, 64]), torch.int64, True)
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int = 64,
        num_classes: int = 4,
        shortcut_p: float = 0.0,
        shortcut_corner: Corner = "top_left",
        patch_size: int = 8,
        seed: int = 0,
        mean: Sequence[float] = DEMO_MEAN,
        std: Sequence[float] = DEMO_STD,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if not 2 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPE_NAMES)}], got {num_classes}")
        if not 0.0 <= shortcut_p <= 1.0:
            raise ValueError(f"shortcut_p must be in [0, 1], got {shortcut_p}")
        if shortcut_corner not in CORNERS:
            raise ValueError(f"shortcut_corner must be one of {CORNERS}, got {shortcut_corner!r}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        # The largest shape must fit beside the corner area with a one-pixel border.
        if 2 * _RADIUS_RANGE[1] * image_size + patch_size + _CORNER_MARGIN + 1 > image_size:
            raise ValueError(
                f"image_size={image_size} is too small for patch_size={patch_size}; "
                "use a larger image_size or a smaller patch_size (e.g. 64 and 8)"
            )
        self.num_samples = num_samples
        self.image_size = image_size
        self.num_classes = num_classes
        self.shortcut_p = shortcut_p
        self.shortcut_corner = shortcut_corner
        self.patch_size = patch_size
        self.seed = seed
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)
        self.images, self.labels, self.masks, self.has_patch = self._generate()

    @property
    def class_names(self) -> tuple[str, ...]:
        """Shape name of each class index."""
        return SHAPE_NAMES[: self.num_classes]

    @property
    def patch_colors(self) -> torch.Tensor:
        """uint8 ``[num_classes, 3]`` colour of the shortcut patch for each class."""
        return torch.tensor(PATCH_COLORS[: self.num_classes], dtype=torch.uint8)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = (self.images[index].float() / 255.0 - self._mean) / self._std
        return {
            "image": image,
            "label": self.labels[index],
            "mask": self.masks[index],
            "has_patch": self.has_patch[index],
        }

    def _generate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, s, c = self.num_samples, self.image_size, self.num_classes
        g = torch.Generator().manual_seed(self.seed)

        # Per-image parameters are drawn for the whole set first, so they never depend on _CHUNK.
        labels = torch.randperm(n, generator=g) % c  # balanced classes in random order
        radius = s * (
            _RADIUS_RANGE[0] + (_RADIUS_RANGE[1] - _RADIUS_RANGE[0]) * torch.rand(n, generator=g)
        )
        angle = _MAX_ROTATION * (2.0 * torch.rand(n, generator=g) - 1.0)
        # Centres in a top-left frame; mirrored to the requested corner below.
        lo, hi = radius + 1.0, s - 1.0 - radius
        cx = lo + (hi - lo) * torch.rand(n, generator=g)
        cy = lo + (hi - lo) * torch.rand(n, generator=g)
        # Shapes whose bounding box would reach the corner area are moved out along one axis,
        # resampled uniformly over what is left, so no pile-up forms at the boundary.
        keep_out = self.patch_size + _CORNER_MARGIN + radius
        push_x = torch.rand(n, generator=g) < 0.5
        alt = keep_out + (hi - keep_out) * torch.rand(n, generator=g)
        clash = (cx < keep_out) & (cy < keep_out)
        cx = torch.where(clash & push_x, alt, cx)
        cy = torch.where(clash & ~push_x, alt, cy)
        if self.shortcut_corner.endswith("right"):
            cx = s - cx
        if self.shortcut_corner.startswith("bottom"):
            cy = s - cy
        # Light shapes on a darker background: every channel separates object from background,
        # which a linear patch embedding reads far more easily than hue or saturation.
        (c_lo, c_hi), (b_lo, b_hi) = _SHAPE_LEVEL, _BG_LEVEL
        color = c_lo + (c_hi - c_lo) * torch.rand(n, 3, generator=g)
        level = b_lo + (b_hi - b_lo) * torch.rand(n, 1, generator=g)
        tint = 0.04 * (2.0 * torch.rand(n, 3, generator=g) - 1.0)
        has_patch = torch.rand(n, generator=g) < self.shortcut_p

        images = torch.empty(n, 3, s, s, dtype=torch.uint8)
        masks = torch.empty(n, s, s, dtype=torch.bool)
        pix = torch.arange(s, dtype=torch.float32) + 0.5  # pixel centres
        for start in range(0, n, _CHUNK):
            sl = slice(start, min(start + _CHUNK, n))
            m = sl.stop - sl.start
            dx = (pix.view(1, 1, s) - cx[sl].view(m, 1, 1)) / radius[sl].view(m, 1, 1)
            dy = (pix.view(1, s, 1) - cy[sl].view(m, 1, 1)) / radius[sl].view(m, 1, 1)
            cos, sin = angle[sl].cos().view(m, 1, 1), angle[sl].sin().view(m, 1, 1)
            u, v = cos * dx + sin * dy, cos * dy - sin * dx
            mask = torch.zeros(m, s, s, dtype=torch.bool)
            lab = labels[sl]
            for k in range(c):
                idx = (lab == k).nonzero(as_tuple=True)[0]
                if idx.numel():
                    mask[idx] = _SHAPE_FNS[k](u[idx], v[idx])

            texture = F.interpolate(
                _TEXTURE_AMPLITUDE * (2.0 * torch.rand(m, 1, 4, 4, generator=g) - 1.0),
                size=(s, s),
                mode="bicubic",
                align_corners=False,
            )
            background = level[sl].view(m, 1, 1, 1) + tint[sl].view(m, 3, 1, 1) + texture
            img = torch.where(mask.unsqueeze(1), color[sl].view(m, 3, 1, 1), background)
            img = img + _NOISE_STD * torch.randn(m, 3, s, s, generator=g)
            images[sl] = (img.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
            masks[sl] = mask

        rows, cols = corner_slices(self.shortcut_corner, s, self.patch_size)
        patch_idx = has_patch.nonzero(as_tuple=True)[0]
        patch_rgb = self.patch_colors[labels[patch_idx]].view(-1, 3, 1, 1)
        images[patch_idx, :, rows, cols] = patch_rgb
        return images, labels.long(), masks, has_patch


class ShapesDataModule(L.LightningDataModule):
    """Train/val splits with the planted corner shortcut, plus a patch-free held-out split.

    ``val_dataloader()`` returns one loader drawn like training (same ``shortcut_p``), so
    validation accuracy rewards the shortcut. ``patch_free_dataloader()`` (also served as
    ``test_dataloader()``) has the same shapes distribution with no patch. ``shortcut_p=0``
    gives the clean variant. The three splits use independent seeds derived from ``seed``.

    Batches are dicts: ``image`` float ``[B,3,H,W]`` normalised with ``mean``/``std``,
    ``label`` long ``[B]``, ``mask`` bool ``[B,H,W]`` (object pixels), ``has_patch`` bool ``[B]``.

    Args:
        num_train: Training images.
        num_val: Validation images (with the shortcut at rate ``shortcut_p``).
        num_patch_free: Held-out images without the patch.
        image_size: Side of the square images in pixels.
        num_classes: Number of shape classes, the first of ``SHAPE_NAMES`` (2 to 6).
        shortcut_p: Probability that an image carries the class-coloured corner patch.
        shortcut_corner: Corner of the patch.
        patch_size: Side of the patch in pixels; equal to the ViT patch size, the shortcut
            fills exactly one token.
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers.
        seed: Seed of the drawn data.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.

    Example:
        >>> dm = ShapesDataModule(num_train=32, num_val=16, num_patch_free=16, shortcut_p=0.0)
        >>> dm.setup()
        >>> dm.class_names
        ('circle', 'square', 'triangle', 'cross')
        >>> bool(next(iter(dm.patch_free_dataloader()))["has_patch"].any())
        False
    """

    def __init__(
        self,
        num_train: int = 3000,
        num_val: int = 500,
        num_patch_free: int = 500,
        image_size: int = 64,
        num_classes: int = 4,
        shortcut_p: float = 0.95,
        shortcut_corner: Corner = "top_left",
        patch_size: int = 8,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        mean: tuple[float, float, float] = DEMO_MEAN,
        std: tuple[float, float, float] = DEMO_STD,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_train = num_train
        self.num_val = num_val
        self.num_patch_free = num_patch_free
        self.image_size = image_size
        self.num_classes = num_classes
        self.shortcut_p = shortcut_p
        self.shortcut_corner = shortcut_corner
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.train_set: ShapesDataset | None = None
        self.val_set: ShapesDataset | None = None
        self.patch_free_set: ShapesDataset | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Shape name of each class index."""
        return SHAPE_NAMES[: self.num_classes]

    def _make(self, num: int, shortcut_p: float, seed: int) -> ShapesDataset:
        return ShapesDataset(
            num,
            image_size=self.image_size,
            num_classes=self.num_classes,
            shortcut_p=shortcut_p,
            shortcut_corner=self.shortcut_corner,
            patch_size=self.patch_size,
            seed=seed,
            mean=self.mean,
            std=self.std,
        )

    def setup(self, stage: str | None = None) -> None:
        """Draw all three splits once (about a second for the defaults); later calls are no-ops."""
        if self.train_set is not None:
            return
        s_train, s_val, s_free = _child_seeds(self.seed, 3)
        self.train_set = self._make(self.num_train, self.shortcut_p, s_train)
        self.val_set = self._make(self.num_val, self.shortcut_p, s_val)
        self.patch_free_set = self._make(self.num_patch_free, 0.0, s_free)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training images (order follows the global seed, e.g. ``L.seed_everything``)."""
        self.setup()
        return self._dl(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """One loader of validation images, with the shortcut at rate ``shortcut_p``."""
        self.setup()
        return self._dl(self.val_set, shuffle=False)

    def patch_free_dataloader(self) -> DataLoader:
        """Held-out images of the same distribution without any patch."""
        self.setup()
        return self._dl(self.patch_free_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The patch-free split, so ``trainer.test`` measures accuracy without the shortcut."""
        return self.patch_free_dataloader()

    def _dl(self, dataset: ShapesDataset | None, shuffle: bool) -> DataLoader:
        assert dataset is not None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map normalised batch images back to ``[0, 1]`` RGB for display."""
        return denormalize(images, self.mean, self.std)


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from a dict batch (``image``/``label``) or an ``(image, label)`` pair."""
    if isinstance(batch, Mapping):
        return batch["image"], batch["label"]
    return batch[0], batch[1]


class ViTClassifier(L.LightningModule):
    """Image classifier around a timm Vision Transformer, always trained from scratch.

    ``self.model`` is the timm ViT (``timm.create_model(model_name, pretrained=False,
    num_classes=num_classes, **model_kwargs)``). Without ``model_kwargs`` the ViT is a small one
    for 64x64 images: 8x8 patches (one token per shortcut patch), width 128, 4 blocks, 4 heads.
    Given ``model_kwargs`` replace those defaults entirely.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss`` and
    ``test/acc``. Optimiser: AdamW; with ``scheduler="cosine"`` the learning rate warms up
    linearly over ``warmup_fraction`` of the steps, then follows a cosine to zero.

    Args:
        model_name: timm model name of a ViT.
        model_kwargs: Extra ``timm.create_model`` arguments; ``None`` uses
            ``DEFAULT_VIT_KWARGS``.
        num_classes: Number of output classes.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        scheduler: ``"cosine"`` (per step, over ``trainer.estimated_stepping_batches``) or
            ``"none"``.
        warmup_fraction: Fraction of all steps used for linear warm-up.
        label_smoothing: Cross-entropy label smoothing (DeiT's 0.1). It also keeps the softmax
            off 1.0, where ReciproCAM's score differences would vanish in rounding noise.

    Example:
        >>> model = ViTClassifier(model_kwargs=dict(img_size=32, patch_size=8, embed_dim=32,
        ...                                         depth=1, num_heads=2), num_classes=3)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        model_name: str = "vit_tiny_patch16_224",
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        scheduler: Literal["cosine", "none"] = "cosine",
        warmup_fraction: float = 0.05,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        kwargs = dict(DEFAULT_VIT_KWARGS if model_kwargs is None else model_kwargs)
        if kwargs.pop("pretrained", False):
            raise ValueError("ViTClassifier trains from scratch; pretrained weights are not used")
        kwargs.pop("num_classes", None)
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        self.model = timm.create_model(
            model_name, pretrained=False, num_classes=num_classes, **kwargs
        )
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]`` of normalised images ``[B, 3, H, W]``."""
        return self.model(images)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = _unpack(batch)
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0])
        self.log(
            "train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=labels.shape[0]
        )
        return loss

    def _eval_step(self, batch: Any, prefix: str, metric: MulticlassAccuracy) -> torch.Tensor:
        images, labels = _unpack(batch)
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        metric(logits, labels)
        n = labels.shape[0]
        self.log(f"{prefix}/loss", loss, prog_bar=True, batch_size=n)
        self.log(f"{prefix}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        # No weight decay on biases, norms, position embeddings and tokens (all are < 2-D).
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        for name in ("pos_embed", "cls_token", "reg_token"):
            p = getattr(self.model, name, None)
            if isinstance(p, torch.nn.Parameter) and any(p is q for q in decay):
                decay = [q for q in decay if q is not p]
                no_decay.append(p)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        if self.hparams.scheduler == "none":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    @torch.no_grad()
    def evaluate_accuracy(self, dataloader: DataLoader) -> float:
        """Top-1 accuracy of the model over ``dataloader``, outside any Trainer.

        Batches may be dicts or ``(image, label)`` pairs; the training mode is restored.

        Example:
            >>> dm = ShapesDataModule(num_train=8, num_val=8, num_patch_free=8)
            >>> model = ViTClassifier(model_kwargs=dict(img_size=64, patch_size=8,
            ...                                         embed_dim=32, depth=1, num_heads=2))
            >>> 0.0 <= model.evaluate_accuracy(dm.patch_free_dataloader()) <= 1.0
            True
        """
        was_training = self.training
        self.eval()
        # iterating a DataLoader draws its base seed from the global RNG: isolate it so that
        # measuring during training never changes the run
        correct, total = 0, 0
        try:
            with isolate_rng():
                batches = list(dataloader)
            for batch in batches:
                images, labels = _unpack(batch)
                images, labels = images.to(self.device), labels.to(self.device)
                correct += int((self(images).argmax(-1) == labels).sum())
                total += int(labels.numel())
        finally:
            self.train(was_training)
        return correct / max(1, total)


# --------------------------------------------------------------------------- experiment
@dataclass
class EpochSignals:
    """What one epoch of :func:`shortcut_experiment` showed."""

    epoch: int
    val_acc: float
    patch_free_acc: float
    hotspot_ratio: float
    energy_in_mask: float | None
    adcc: float | None
    warned: bool


class _SignalRecorder(Callback):
    """Collects the per-epoch signals once validation and the ReciproCAM callback are done."""

    def __init__(self, datamodule: ShapesDataModule) -> None:
        self.datamodule = datamodule
        self.rows: list[EpochSignals] = []
        self.caught: list[warnings.WarningMessage] = []
        self._seen = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if "vitrcam/hotspot_ratio" not in metrics:
            return

        def value(key: str) -> float | None:
            return float(metrics[key]) if key in metrics else None

        shortcut = [w for w in self.caught if issubclass(w.category, PossibleShortcutWarning)]
        self.rows.append(
            EpochSignals(
                epoch=trainer.current_epoch,
                val_acc=float(metrics["val/acc"]),
                patch_free_acc=pl_module.evaluate_accuracy(self.datamodule.patch_free_dataloader()),
                hotspot_ratio=float(metrics["vitrcam/hotspot_ratio"]),
                energy_in_mask=value("vitrcam/energy_in_mask"),
                adcc=value("vitrcam/adcc"),
                warned=len(shortcut) > self._seen,
            )
        )
        self._seen = len(shortcut)


def shortcut_experiment(
    shortcut_p: float,
    epochs: int = 4,
    *,
    num_train: int = 3000,
    num_val: int = 500,
    num_patch_free: int = 500,
    model_kwargs: dict[str, Any] | None = None,
    callback_kwargs: dict[str, Any] | None = None,
    root_dir: str = "lightning_logs",
    name: str | None = None,
    seed: int = 0,
) -> list[EpochSignals]:
    """Train the demo ViT with the callback and record, per epoch, validation accuracy,
    accuracy on patch-free images, hotspot ratio, energy in the object, ADCC and whether the
    callback warned "possible shortcut". TensorBoard logs go to ``root_dir/name``.

    Example (tiny settings; real runs use the defaults):
        >>> import tempfile
        >>> rows = shortcut_experiment(0.95, epochs=1, num_train=64, num_val=32,
        ...     num_patch_free=32, model_kwargs=dict(img_size=64, patch_size=8, embed_dim=32,
        ...     depth=1, num_heads=2), callback_kwargs=dict(num_images=4, log_images=False),
        ...     root_dir=tempfile.mkdtemp())
        >>> len(rows), rows[0].epoch, rows[0].hotspot_ratio >= 1.0
        (1, 0, True)
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    L.seed_everything(seed, verbose=False)
    data = ShapesDataModule(
        num_train=num_train,
        num_val=num_val,
        num_patch_free=num_patch_free,
        shortcut_p=shortcut_p,
        seed=seed,
    )
    recorder = _SignalRecorder(data)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(root_dir, name=name or f"shortcut_p={shortcut_p}"),
        callbacks=[ViTReciproCAMCallback(**(callback_kwargs or {})), recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PossibleShortcutWarning)
        recorder.caught = caught
        trainer.fit(ViTClassifier(model_kwargs=model_kwargs), datamodule=data)
    return recorder.rows


def signals_table(runs: Mapping[str, Sequence[EpochSignals]]) -> str:
    """A markdown table of :func:`shortcut_experiment` results, one row per run and epoch."""

    def fmt(v: float | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "| run | epoch | val acc | patch-free acc | hotspot ratio | energy in object | ADCC"
        " | warned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, rows in runs.items():
        for r in rows:
            lines.append(
                f"| {run} | {r.epoch} | {r.val_acc:.2f} | {r.patch_free_acc:.2f} |"
                f" {r.hotspot_ratio:.1f} | {fmt(r.energy_in_mask)} | {fmt(r.adcc)} |"
                f" {'yes' if r.warned else 'no'} |"
            )
    return "\n".join(lines)


def first_warning(rows: Sequence[EpochSignals]) -> int | None:
    """The first epoch at which the callback warned, or None."""
    return next((r.epoch for r in rows if r.warned), None)
