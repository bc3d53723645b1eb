"""Demo data: procedurally drawn shapes with a planted corner shortcut, and coloured squares.

``ShapesDataModule`` draws small RGB images of a few light-coloured shapes on a darker textured
grey background. With probability ``shortcut_p`` a small patch whose colour names the class sits
in a fixed corner, in both the training and the validation split, so a Vision Transformer can
score well on validation by reading the corner alone. ``patch_free_dataloader()`` serves images
from the same distribution without the patch, which exposes such a model.

:func:`coloured_squares` is the smallest task with a known answer (the colour of one square names
the class), used by the tests and examples.

Example:
    >>> dm = ShapesDataModule(num_train=64, num_val=32, num_patch_free=32, batch_size=16)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.val_dataloader()))
    >>> sorted(batch), tuple(batch["image"].shape), tuple(batch["mask"].shape)
    (['has_patch', 'image', 'label', 'mask'], (16, 3, 64, 64), (16, 64, 64))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "CORNERS",
    "CUE_KINDS",
    "DEMO_MEAN",
    "DEMO_STD",
    "PATCH_COLORS",
    "PER_CLASS",
    "SHAPE_NAMES",
    "SQUARE_COLOURS",
    "ShapesDataModule",
    "ShapesDataset",
    "coloured_squares",
    "corner_slices",
]

Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right", "per_class"]
CueKind = Literal["patch", "moving_edge", "moving_any", "tint"]
#: what the planted cue is: a patch in a fixed corner (``shortcut_corner``), a tag at a random
#: place along the bottom edge or anywhere, or a class-specific colour cast of the whole image
CUE_KINDS: tuple[str, ...] = ("patch", "moving_edge", "moving_any", "tint")
_TINT = 0.15  # weight of the class colour in a tinted image
CORNERS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")
# the class-specific variant: class k's patch sits in CORNERS[k % 4]
PER_CLASS = "per_class"
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
# Shape radius as a fraction of the image side; every shape fits in a disc of that radius.
_RADIUS_RANGE = (0.28, 0.36)
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
# so the disc of radius r bounds the drawn object.
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
    is painted ``PATCH_COLORS[label]`` (``has_patch``); with ``shortcut_corner="per_class"``
    the corner depends on the class too (class k: ``CORNERS[k % 4]``), a class-specific
    position a global mean map does not single out. Shapes never reach that corner area
    (whether or not the patch is drawn), so masks and patch never overlap. ``shortcut_kind``
    plants other cues instead: ``"moving_edge"`` a class-coloured tag of ``patch_size`` at a
    random place along the bottom edge, ``"moving_any"`` the tag anywhere (over the shape too,
    like a sticker), ``"tint"`` a class-specific colour cast of the whole image. ``radius``
    is the range of the shapes' radius as a fraction of the image side (small shapes sit
    anywhere) and ``colour_jitter`` a random per-image colour change of the whole image
    (gains in ``1 +- colour_jitter``), unrelated to the class. ``cue_classes`` limits the cue
    to images of those classes (e.g. the positives of a binary task). Everything is drawn once at
    construction from local ``torch.Generator``s; the same arguments give the same data, and
    ``shortcut_p`` only decides where the cue goes, not the shapes themselves.

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
        shortcut_kind: CueKind = "patch",
        radius: tuple[float, float] = _RADIUS_RANGE,
        colour_jitter: float = 0.0,
        cue_classes: Sequence[int] | None = None,
    ) -> None:
        if cue_classes is not None and not all(0 <= c < num_classes for c in cue_classes):
            raise ValueError(
                f"cue_classes must be classes in [0, {num_classes}), got {cue_classes}"
            )
        self.cue_classes = None if cue_classes is None else [int(c) for c in cue_classes]
        if shortcut_kind not in CUE_KINDS:
            raise ValueError(f"shortcut_kind must be one of {CUE_KINDS}, got {shortcut_kind!r}")
        if not 0.0 < radius[0] <= radius[1] <= _RADIUS_RANGE[1]:
            raise ValueError(
                f"radius must be a range 0 < low <= high <= {_RADIUS_RANGE[1]}, got {radius}"
            )
        if not 0.0 <= colour_jitter < 1.0:
            raise ValueError(f"colour_jitter must be in [0, 1), got {colour_jitter}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if not 2 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPE_NAMES)}], got {num_classes}")
        if not 0.0 <= shortcut_p <= 1.0:
            raise ValueError(f"shortcut_p must be in [0, 1], got {shortcut_p}")
        if shortcut_corner not in (*CORNERS, PER_CLASS):
            raise ValueError(
                f"shortcut_corner must be one of {(*CORNERS, PER_CLASS)}, got {shortcut_corner!r}"
            )
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        # The largest shape must fit beside the corner area with a one-pixel border.
        if 2 * radius[1] * image_size + patch_size + _CORNER_MARGIN + 1 > image_size:
            raise ValueError(
                f"image_size={image_size} is too small for patch_size={patch_size}; "
                "use a larger image_size or a smaller patch_size (e.g. 64 and 8)"
            )
        self.shortcut_kind = shortcut_kind
        self.radius = (float(radius[0]), float(radius[1]))
        self.colour_jitter = float(colour_jitter)
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
        low, high = self.radius
        radius = s * (low + (high - low) * torch.rand(n, generator=g))
        # a draw once spent on rotation angles (measured: rotation made the task too hard for a
        # from-scratch ViT); kept so that every later draw, hence the data, stays as it was
        torch.rand(n, generator=g)
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
        corner = self._corners(labels)  # index into CORNERS, per image
        cx = torch.where(corner % 2 == 1, s - cx, cx)  # right corners
        cy = torch.where(corner >= 2, s - cy, cy)  # bottom corners
        # Light shapes on a darker background: every channel separates object from background,
        # which a linear patch embedding reads far more easily than hue or saturation.
        (c_lo, c_hi), (b_lo, b_hi) = _SHAPE_LEVEL, _BG_LEVEL
        color = c_lo + (c_hi - c_lo) * torch.rand(n, 3, generator=g)
        level = b_lo + (b_hi - b_lo) * torch.rand(n, 1, generator=g)
        tint = 0.04 * (2.0 * torch.rand(n, 3, generator=g) - 1.0)
        has_patch = torch.rand(n, generator=g) < self.shortcut_p
        if self.cue_classes is not None:  # only these classes carry the cue (a one-sided leak)
            has_patch &= torch.isin(labels, torch.tensor(self.cue_classes))
        # the other cues and the colour jitter draw from their own generator, so that the
        # shapes (and the corner patch) are the same whatever the cue
        extra = torch.Generator().manual_seed((self.seed * 7919 + 17) % (2**63 - 1))
        j = self.colour_jitter
        gain = 1.0 + j * (2.0 * torch.rand(n, 3, generator=extra) - 1.0)
        offset = 0.5 * j * (2.0 * torch.rand(n, 3, generator=extra) - 1.0)
        tinted = has_patch & (self.shortcut_kind == "tint")
        tint_rgb = self.patch_colors.float()[labels] / 255.0  # [n, 3]

        images = torch.empty(n, 3, s, s, dtype=torch.uint8)
        masks = torch.empty(n, s, s, dtype=torch.bool)
        pix = torch.arange(s, dtype=torch.float32) + 0.5  # pixel centres
        for start in range(0, n, _CHUNK):
            sl = slice(start, min(start + _CHUNK, n))
            m = sl.stop - sl.start
            u = (pix.view(1, 1, s) - cx[sl].view(m, 1, 1)) / radius[sl].view(m, 1, 1)
            v = (pix.view(1, s, 1) - cy[sl].view(m, 1, 1)) / radius[sl].view(m, 1, 1)
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
            img = img * gain[sl].view(m, 3, 1, 1) + offset[sl].view(m, 3, 1, 1)
            cast = (1.0 - _TINT) * img + _TINT * tint_rgb[sl].view(m, 3, 1, 1)
            img = torch.where(tinted[sl].view(m, 1, 1, 1), cast, img)
            img = img + _NOISE_STD * torch.randn(m, 3, s, s, generator=g)
            images[sl] = (img.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
            masks[sl] = mask

        if self.shortcut_kind == "patch":
            for k, name in enumerate(CORNERS):
                rows, cols = corner_slices(name, s, self.patch_size)
                patch_idx = (has_patch & (corner == k)).nonzero(as_tuple=True)[0]
                patch_rgb = self.patch_colors[labels[patch_idx]].view(-1, 3, 1, 1)
                images[patch_idx, :, rows, cols] = patch_rgb
        elif self.shortcut_kind in ("moving_edge", "moving_any"):
            self._tags(images, labels, has_patch, extra)
        return images, labels.long(), masks, has_patch

    def _tags(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        has_patch: torch.Tensor,
        g: torch.Generator,
    ) -> None:
        """A class-coloured tag at a random place of each cue-carrying image: along the bottom
        edge (``moving_edge``) or anywhere (``moving_any``); one masked assignment."""
        n, s, p = len(labels), self.image_size, self.patch_size
        left = torch.randint(0, s - p + 1, (n,), generator=g)
        top = torch.randint(0, s - p + 1, (n,), generator=g)
        if self.shortcut_kind == "moving_edge":
            top = torch.full_like(top, s - p)
        pix = torch.arange(s)
        rows = (pix[None] >= top[:, None]) & (pix[None] < top[:, None] + p)  # [n, s]
        cols = (pix[None] >= left[:, None]) & (pix[None] < left[:, None] + p)
        where = (rows[:, :, None] & cols[:, None, :] & has_patch[:, None, None])[:, None]
        colour = self.patch_colors[labels].view(n, 3, 1, 1).expand_as(images)
        images.copy_(torch.where(where, colour, images))

    def _corners(self, labels: torch.Tensor) -> torch.Tensor:
        """Each image's patch corner as an index into ``CORNERS``."""
        if self.shortcut_corner == PER_CLASS:
            return labels % len(CORNERS)
        return torch.full_like(labels, CORNERS.index(self.shortcut_corner))


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
        shortcut_corner: Corner of the patch, or ``"per_class"`` (class k's patch in
            ``CORNERS[k % 4]``).
        patch_size: Side of the patch in pixels; equal to the ViT patch size, the shortcut
            fills exactly one token.
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers.
        seed: Seed of the drawn data.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        shortcut_kind: The cue planted (see :class:`ShapesDataset`): ``"patch"`` (in
            ``shortcut_corner``), ``"moving_edge"``, ``"moving_any"`` or ``"tint"``.
        radius: Range of the shapes' radius as a fraction of the image side.
        colour_jitter: Random per-image colour change, unrelated to the class.
        cue_classes: Only images of these classes carry the cue (e.g. ``[1]``: the positives
            of a binary task, "circle or square" with ``num_classes=2``).

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
        shortcut_kind: CueKind = "patch",
        radius: tuple[float, float] = _RADIUS_RANGE,
        colour_jitter: float = 0.0,
        cue_classes: list[int] | None = None,
    ) -> None:
        super().__init__()
        # the arguments live in self.hparams (and in checkpoints, where the command line's
        # `explain` finds the class names)
        self.save_hyperparameters()
        self.train_set: ShapesDataset | None = None
        self.val_set: ShapesDataset | None = None
        self.patch_free_set: ShapesDataset | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Shape name of each class index."""
        return SHAPE_NAMES[: self.hparams.num_classes]

    def _make(self, num: int, shortcut_p: float, seed: int) -> ShapesDataset:
        hp = self.hparams
        return ShapesDataset(
            num,
            image_size=hp.image_size,
            num_classes=hp.num_classes,
            shortcut_p=shortcut_p,
            shortcut_corner=hp.shortcut_corner,
            patch_size=hp.patch_size,
            seed=seed,
            mean=hp.mean,
            std=hp.std,
            shortcut_kind=hp.shortcut_kind,
            radius=tuple(hp.radius),
            colour_jitter=hp.colour_jitter,
            cue_classes=hp.cue_classes,
        )

    def setup(self, stage: str | None = None) -> None:
        """Draw all three splits once (about a second for the defaults); later calls are no-ops."""
        if self.train_set is not None:
            return
        hp = self.hparams
        s_train, s_val, s_free = _child_seeds(hp.seed, 3)
        self.train_set = self._make(hp.num_train, hp.shortcut_p, s_train)
        self.val_set = self._make(hp.num_val, hp.shortcut_p, s_val)
        self.patch_free_set = self._make(hp.num_patch_free, 0.0, s_free)

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
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )


SQUARE_COLOURS = torch.tensor([[2.0, -1, -1], [-1, 2.0, -1], [-1, -1, 2.0], [2.0, 2.0, -1]])


def coloured_squares(
    n: int,
    seed: int = 0,
    size: int = 32,
    side: int = 8,
    noise: float = 0.3,
    corner: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images with one coloured ``side``-pixel square (the object; its colour,
    ``SQUARE_COLOURS[label]`` in normalised units, names the class): ``(images [n,3,size,size],
    labels [n], masks [n,size,size])``, drawn from a local generator.

    ``corner=True`` plants a shortcut: the square gets a random colour and an 8x8 patch in the
    top-left corner carries the label's colour.

    Example:
        >>> x, y, m = coloured_squares(4, seed=1)
        >>> tuple(x.shape), int(m[0].sum())
        ((4, 3, 32, 32), 64)
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * noise
    y = torch.randint(0, len(SQUARE_COLOURS), (n,), generator=g)
    other = torch.randint(0, len(SQUARE_COLOURS), (n,), generator=g)
    r = torch.randint(0, size - side + 1, (n, 1, 1), generator=g)
    c = torch.randint(0, size - side + 1, (n, 1, 1), generator=g)
    yy, xx = torch.arange(size).view(1, -1, 1), torch.arange(size).view(1, 1, -1)
    mask = (yy >= r) & (yy < r + side) & (xx >= c) & (xx < c + side)
    x = torch.where(mask[:, None], SQUARE_COLOURS[other if corner else y][:, :, None, None], x)
    if corner:
        x[:, :, :8, :8] = SQUARE_COLOURS[y][:, :, None, None]
    return x, y, mask
