"""Probe images: a fixed sample of a validation loader, read without moving any RNG or sampler.

:func:`validation_loader` finds the loader the fit loop will validate on, :func:`sample_probes`
draws ``num`` images from it with a local generator (indexing a map-style dataset directly and
collating with the loader's ``collate_fn``), and :func:`read_batch` turns a collated batch of any
common layout into checked ``(images, labels, masks)``.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.randn(10, 3, 8, 8), torch.arange(10))
    >>> probes = sample_probes(DataLoader(data, batch_size=4), num=3, seed=0)
    >>> tuple(probes.images.shape), probes.indices == sorted(probes.indices)
    ((3, 3, 8, 8), True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import CombinedLoader
from lightning.pytorch.utilities.seed import isolate_rng
from lightning_utilities.core.overrides import is_overridden
from torch.utils.data import IterableDataset

from lightning_vitrcam._warnings import warn

__all__ = [
    "HOW_TO_READ",
    "IMAGE_KEYS",
    "LABEL_KEYS",
    "MASK_KEYS",
    "Probes",
    "default_batch_reader",
    "overrides",
    "probes_for_fit",
    "read_batch",
    "sample_probes",
    "validation_loader",
]

# the column names of the common datasets and processors: torchvision-style dicts, HF image
# processors (pixel_values, labels), Hub datasets (img / label, fine_label, ...)
IMAGE_KEYS: tuple[str, ...] = ("image", "images", "pixel_values", "img", "x", "input", "inputs")
LABEL_KEYS: tuple[str, ...] = (
    "label",
    "labels",
    "fine_label",
    "y",
    "target",
    "targets",
    "class",
    "class_label",
)
MASK_KEYS: tuple[str, ...] = ("mask", "masks", "segmentation_mask")
HOW_TO_READ = (
    "pass batch_reader=<a function of the batch returning dict(image=[B,C,H,W] tensor,"
    " label=[B] class indices or 0/1, or [B, K] multi-hot (optional), mask=[B,H,W] object"
    " mask (optional)) or a tuple (images, labels[, masks])>"
)


# --------------------------------------------------------------------------- batches
def _first_key(batch: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in batch:
            return batch[key]
    return None


def default_batch_reader(batch: Any) -> dict[str, Any]:
    """Images, labels and masks of a collated batch: ``{"image", "label", "mask"}``.

    Reads a tensor of images, a tuple/list ``(images, labels[, masks])`` or a dict with one
    of the keys of :data:`IMAGE_KEYS` (``image``, ``pixel_values``, ``img``, ...),
    :data:`LABEL_KEYS` (``label``, ``labels``, ...) and :data:`MASK_KEYS`. Missing labels or
    masks are None. Nothing is checked here.

    Example:
        >>> import torch
        >>> out = default_batch_reader({"x": torch.zeros(2, 3, 4, 4), "y": torch.tensor([0, 1])})
        >>> tuple(out["image"].shape), out["label"].tolist(), out["mask"]
        ((2, 3, 4, 4), [0, 1], None)
    """
    if isinstance(batch, torch.Tensor):
        return {"image": batch, "label": None, "mask": None}
    if isinstance(batch, Mapping):
        return {
            "image": _first_key(batch, IMAGE_KEYS),
            "label": _first_key(batch, LABEL_KEYS),
            "mask": _first_key(batch, MASK_KEYS),
        }
    if isinstance(batch, tuple | list) and batch:
        parts = list(batch) + [None, None]
        # a third entry that is not a tensor (file names, ids) is not a mask
        mask = parts[2] if isinstance(parts[2], torch.Tensor) else None
        return {"image": parts[0], "label": parts[1], "mask": mask}
    return {"image": None, "label": None, "mask": None}


def _describe(batch: Any) -> str:
    if isinstance(batch, Mapping):
        return f"a dict with keys {sorted(map(str, batch))}"
    if isinstance(batch, tuple | list):
        return f"a {type(batch).__name__} of {[type(b).__name__ for b in batch]}"
    return f"a {type(batch).__name__}"


def read_batch(
    batch: Any, reader: Callable[[Any], Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Checked ``(images [B,C,H,W] float, labels or None, masks [B,H,W] or None)``; labels
    are ``[B]`` class indices (float 0/1 stay float) or ``[B, K]`` multi-hot
    of a collated batch, read by ``reader`` (a function of the batch returning what
    :func:`default_batch_reader` reads) or by :func:`default_batch_reader`.

    Example:
        >>> images, labels, masks = read_batch((torch.zeros(2, 3, 4, 4), torch.tensor([1, 0])))
        >>> labels.tolist(), masks
        ([1, 0], None)
    """
    read = default_batch_reader(reader(batch) if reader is not None else batch)
    images, labels, masks = read["image"], read["label"], read["mask"]
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        what = _describe(batch) if reader is None else f"batch_reader's output {_describe(images)}"
        raise ValueError(
            f"ViTReciproCAMCallback cannot find a float [B, C, H, W] image tensor in {what}"
            f" (looked for a tensor, a tuple (images, labels[, masks]) or a dict with one of"
            f" the image keys {list(IMAGE_KEYS)}, label keys {list(LABEL_KEYS)} and mask keys"
            f" {list(MASK_KEYS)}); {HOW_TO_READ}"
        )
    n = images.shape[0]
    if labels is not None:
        labels = _checked_labels(labels, n)
    if masks is not None:
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3 or masks.shape[0] != n:
            raise ValueError(
                f"the batch's masks must be [B={n}, H, W], got {tuple(masks.shape)}; {HOW_TO_READ}"
            )
    return images, labels, masks


def _checked_labels(labels: Any, n: int) -> torch.Tensor:
    """Labels as a task can read them: ``[n]`` class indices or 0/1 floats, or ``[n, K]``
    multi-hot; one-hot or soft rows (each summing to one) become class indices."""
    labels = torch.as_tensor(labels) if not isinstance(labels, torch.Tensor) else labels
    if labels.dim() == 2 and labels.shape[1] == 1:  # a binary head's [B, 1] targets
        labels = labels[:, 0]
    if labels.dim() == 2 and labels.shape[0] == n:
        sums = labels.float().sum(dim=1)
        binary = bool(((labels == 0) | (labels == 1)).all())
        if not binary or bool(torch.allclose(sums, torch.ones_like(sums))):
            return labels.argmax(dim=1)  # one-hot or soft labels of a multiclass task
        return labels  # multi-hot: a multi-label task
    integral = not labels.is_floating_point() or bool((labels == labels.round()).all())
    if labels.dim() != 1 or labels.shape[0] != n or not integral:
        raise ValueError(
            f"the batch's labels must be [B={n}] class indices (or 0/1), or [B, K] multi-hot,"
            f" got {labels.dtype} {tuple(labels.shape)}; {HOW_TO_READ}"
        )
    return labels if labels.is_floating_point() else labels.long()


# --------------------------------------------------------------------------- lightning
_LIGHTNING_BASES = ("LightningModule", "LightningDataModule")


def overrides(name: str, instance: Any) -> bool:
    """Whether ``instance`` (a LightningModule or LightningDataModule of either the
    ``lightning.pytorch`` or the standalone ``pytorch_lightning`` package) overrides the hook
    ``name`` of its Lightning base class.

    Lightning's own ``is_overridden`` knows only its own package's classes, and the two
    packages' classes are distinct; the base is therefore found by name in the MRO.

    Example:
        >>> import lightning as L
        >>> class Data(L.LightningDataModule):
        ...     def val_dataloader(self):
        ...         return []
        >>> overrides("val_dataloader", Data()), overrides("test_dataloader", Data())
        (True, False)
    """
    for klass in type(instance).__mro__:
        root = klass.__module__.split(".")[0]
        if klass.__name__ in _LIGHTNING_BASES and root in ("lightning", "pytorch_lightning"):
            return is_overridden(name, instance, klass)
    return callable(getattr(instance, name, None))


# --------------------------------------------------------------------------- probes
@dataclass
class Probes:
    """The probe images with their labels and object masks (when the batches carry them) and
    their dataset indices (None: the first images of an iterable dataset)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    masks: torch.Tensor | None
    indices: list[int] | None

    def to(self, device: torch.device | str) -> Probes:
        move = lambda t: None if t is None else t.to(device)
        return Probes(move(self.images), move(self.labels), move(self.masks), self.indices)

    def __len__(self) -> int:
        return int(self.images.shape[0])


#: the Lightning versions whose fit-loop internals :func:`validation_loader` was checked against
CHECKED_LIGHTNING = "2.6.6"


def _request(trainer: Trainer) -> Any:
    """The validation loaders of the coming fit before the fit loop has built them."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and overrides("val_dataloader", datamodule):
        return datamodule.val_dataloader()
    # Loaders passed as trainer.fit(val_dataloaders=...) and the module's own val_dataloader()
    # hook are reachable only through the fit loop's data source, Lightning's private API (the
    # same source the loop itself asks; the function only calls the source, whichever package
    # it comes from)
    try:
        from lightning.pytorch.trainer.connectors.data_connector import _request_dataloader

        source = trainer.fit_loop.epoch_loop.val_loop._data_source
        defined = source.is_defined()
    except (ImportError, AttributeError) as err:
        import lightning

        raise ValueError(
            "ViTReciproCAMCallback reads validation loaders given to trainer.fit(...) or"
            " defined by the LightningModule through Lightning's fit-loop internals, checked"
            f" with lightning {CHECKED_LIGHTNING}; lightning {lightning.__version__} lacks them"
            f" ({type(err).__name__}: {err}). Define val_dataloader() in a LightningDataModule"
            " (a public route), or use a checked Lightning version"
        ) from err
    return _request_dataloader(source) if defined else None


def validation_loader(trainer: Trainer, index: int = 0) -> Any:
    """The ``index``-th validation loader of ``trainer``'s fit, or None when it has none.

    Public routes first (``trainer.val_dataloaders``, the datamodule's ``val_dataloader()``);
    the RNGs are restored afterwards because a ``val_dataloader()`` hook may draw from them.
    """
    with isolate_rng():
        loaders = trainer.val_dataloaders
        if loaders is None:
            loaders = _request(trainer)
    if loaders is None:
        return None
    flat = CombinedLoader(loaders, "sequential").flattened
    if not flat:
        return None
    if not 0 <= index < len(flat):
        raise ValueError(f"dataloader_idx={index} but there are {len(flat)} validation loaders")
    return flat[index]


@isolate_rng()
def sample_probes(
    loader: Any,
    num: int,
    seed: int = 0,
    indices: list[int] | None = None,
    reader: Callable[[Any], Any] | None = None,
) -> Probes:
    """Read ``num`` probe images without touching the global RNGs or the loader's sampler.

    From a map-style dataset, ``indices`` (when given and valid) or ``num`` indices drawn with
    a generator seeded by ``seed``, sorted. An ``IterableDataset`` can only be read from the
    start: the first ``num`` images of a fresh iterator (whose worker seed comes from the
    global RNG, restored afterwards); a dataset that keeps its own position across ``iter()``
    calls would be advanced, which no sampler-based loader does.
    """
    dataset = getattr(loader, "dataset", None)
    map_style = (
        dataset is not None
        and not isinstance(dataset, IterableDataset)
        and hasattr(dataset, "__len__")
        and getattr(loader, "batch_sampler", None) is not None
    )
    if map_style:
        size = len(dataset)
        if indices is None or (indices and max(indices) >= size):
            generator = torch.Generator().manual_seed(seed)
            indices = torch.randperm(size, generator=generator)[:num].sort().values.tolist()
        if not indices:
            raise ValueError("the validation dataset is empty")
        return read_items(loader, indices, reader)
    return read_first(loader, num, reader)


def read_items(
    loader: Any, indices: list[int], reader: Callable[[Any], Any] | None = None
) -> Probes:
    """The items ``indices`` of a map-style loader's dataset, collated as the loader does."""
    batch = loader.collate_fn([loader.dataset[i] for i in indices])
    return Probes(*read_batch(batch, reader), list(indices))


def read_first(loader: Any, num: int, reader: Callable[[Any], Any] | None = None) -> Probes:
    """The first ``num`` images of a fresh iterator of ``loader`` (any dataset)."""
    parts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
    count = 0
    for batch in loader:
        parts.append(read_batch(batch, reader))
        count += parts[-1][0].shape[0]
        if count >= num:
            break
    if not parts:
        raise ValueError("the validation dataloader yields no batches")
    cat = lambda i: None if parts[0][i] is None else torch.cat([p[i] for p in parts])[:num]
    return Probes(cat(0), cat(1), cat(2), None)


def probes_for_fit(
    trainer: Trainer,
    pl_module: Any,
    num: int,
    seed: int = 0,
    indices: list[int] | None = None,
    reader: Callable[[Any], Any] | None = None,
    dataloader_idx: int = 0,
    after_validation: bool = True,
) -> Probes:
    """The probes of a coming fit, on ``pl_module``'s device: ``num`` images of the
    ``dataloader_idx``-th validation loader (``indices`` when a resumed run restored them).
    ``after_validation``: the evaluations follow validation epochs, so the run must validate.
    Raises a ``ValueError`` saying what to change when the run has no such images."""
    if after_validation and (
        not overrides("validation_step", pl_module) or trainer.limit_val_batches == 0
    ):
        raise ValueError(
            "ViTReciproCAMCallback explains after validation epochs but this run does not"
            " validate (no validation_step, or limit_val_batches=0); add validation or"
            " use every_n_steps="
        )
    loader = validation_loader(trainer, dataloader_idx)
    if loader is None:
        raise ValueError(
            "ViTReciproCAMCallback needs a validation dataloader to draw its probe images"
            " from: pass val_dataloaders= to trainer.fit or define val_dataloader()"
        )
    probes = sample_probes(loader, num, seed, indices, reader)
    if len(probes) < num:
        warn(
            f"ViTReciproCAMCallback: the validation data has {len(probes)} images,"
            f" fewer than num_images={num}; all of them are used"
        )
    return probes.to(pl_module.device)
