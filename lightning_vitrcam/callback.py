"""A Lightning callback that watches what a Vision Transformer attends to while it trains.

Every few epochs (or steps) :class:`ViTReciproCAMCallback` explains a fixed, seeded set of
validation images with :class:`~lightning_vitrcam.explainer.ViTReciproCAM`, logs a captioned
saliency grid, the mean saliency map, ADCC and shortcut signals under ``vitrcam/``, warns when
the saliency collapses onto one spot (a possible shortcut), and at the end of fit logs one
timeline per probe image showing how its explanation drifted.

Example:
    >>> import lightning as L
    >>> from lightning_vitrcam import ViTReciproCAMCallback
    >>> callback = ViTReciproCAMCallback(num_images=8, every_n_epochs=2, explain="both")
    >>> trainer = L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.utils.data import IterableDataset

from lightning_vitrcam.explainer import ReciproCAMResult, ViTReciproCAM, unwrap_model
from lightning_vitrcam.loggers import Picture, log_pictures, log_scalars
from lightning_vitrcam.metrics import (
    ADCC,
    border_energy,
    energy_in_mask,
    hotspot_location,
    hotspot_ratio,
    map_drift,
    mean_saliency_map,
    pointing_game,
)
from lightning_vitrcam.render import (
    denormalize,
    heatmap,
    overlay,
    resolve_mean_std,
    row_captions,
    saliency_grid,
    timeline,
    to_uint8,
)

__all__ = ["PossibleShortcutWarning", "ViTReciproCAMCallback", "default_batch_reader", "find_vit"]

IMAGE_KEYS: tuple[str, ...] = ("image", "images", "x", "input", "inputs")
LABEL_KEYS: tuple[str, ...] = ("label", "labels", "y", "target", "targets")
MASK_KEYS: tuple[str, ...] = ("mask", "masks")
_ADCC_NAMES = ("adcc", "average_drop", "increase", "coherency", "complexity")
_HOW_TO_READ = (
    "pass batch_reader=<a function of the batch returning dict(image=[B,C,H,W] tensor,"
    " label=[B] class indices (optional), mask=[B,H,W] object mask (optional)) or a tuple"
    " (images, labels[, masks])>"
)


class PossibleShortcutWarning(UserWarning):
    """The mean saliency collapsed onto one spot or left the object masks."""


# --------------------------------------------------------------------------- batches
def _first_key(batch: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in batch:
            return batch[key]
    return None


def default_batch_reader(batch: Any) -> dict[str, Any]:
    """Images, labels and masks of a collated batch: ``{"image", "label", "mask"}``.

    Reads a tensor of images, a tuple/list ``(images, labels[, masks])`` or a dict with the
    keys ``image/images/x/input/inputs``, ``label/labels/y/target/targets`` and
    ``mask/masks``. Missing labels or masks are None. Nothing is checked here.

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


def _read_batch(
    batch: Any, reader: Callable[[Any], Any] | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Checked ``(images [B,C,H,W] float, labels [B] long or None, masks [B,H,W] or None)``."""
    read = default_batch_reader(reader(batch) if reader is not None else batch)
    images, labels, masks = read["image"], read["label"], read["mask"]
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        what = _describe(batch) if reader is None else f"batch_reader's output {_describe(images)}"
        raise ValueError(
            f"ViTReciproCAMCallback cannot find a float [B, C, H, W] image tensor in {what};"
            f" {_HOW_TO_READ}"
        )
    n = images.shape[0]
    if labels is not None:
        labels = torch.as_tensor(labels) if not isinstance(labels, torch.Tensor) else labels
        if labels.dim() == 2 and labels.is_floating_point():  # one-hot or soft labels
            labels = labels.argmax(dim=1)
        if labels.dim() != 1 or labels.shape[0] != n or labels.is_floating_point():
            raise ValueError(
                f"the batch's labels must be [B={n}] class indices, got {labels.dtype}"
                f" {tuple(labels.shape)}; {_HOW_TO_READ}"
            )
        labels = labels.long()
    if masks is not None:
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3 or masks.shape[0] != n:
            raise ValueError(
                f"the batch's masks must be [B={n}, H, W], got {tuple(masks.shape)}; {_HOW_TO_READ}"
            )
    return images, labels, masks


# --------------------------------------------------------------------------- the model
def _looks_like_vit(module: nn.Module) -> bool:
    blocks = getattr(module, "blocks", None)
    return isinstance(blocks, nn.Sequential | nn.ModuleList) and hasattr(module, "patch_embed")


def find_vit(module: nn.Module, model_attr: str | None = None) -> tuple[str, nn.Module]:
    """``(name, eager ViT)`` inside ``module``: ``model_attr`` (a dotted attribute path) when
    given, else ``module`` itself or its only submodule with ``.blocks`` and ``.patch_embed``
    (a timm VisionTransformer), ``torch.compile`` and DDP wrappers removed.

    Example:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
        >>> name, found = find_vit(torch.nn.Sequential(torch.nn.Identity(), vit))
        >>> name, found is vit
        ('1', True)
    """
    if model_attr:
        obj: Any = module
        for part in model_attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(
                    f"model_attr={model_attr!r}: {type(obj).__name__} has no attribute {part!r}"
                )
            obj = getattr(obj, part)
        if not isinstance(obj, nn.Module):
            raise ValueError(f"model_attr={model_attr!r} is a {type(obj).__name__}, not a module")
        return model_attr, unwrap_model(obj)
    root = unwrap_model(module)
    if _looks_like_vit(root):
        return "", root
    found: dict[int, tuple[str, nn.Module]] = {}
    for name, sub in root.named_modules():
        sub = unwrap_model(sub)  # a compiled ViT and its _orig_mod are one candidate
        if _looks_like_vit(sub) and id(sub) not in found:
            found[id(sub)] = (name, sub)
    top = list(found.values())
    if len(top) == 1:
        return top[0]
    kind = type(module).__name__
    if not top:
        raise ValueError(
            f"no Vision Transformer found in {kind} (looked for a module with .blocks and"
            " .patch_embed, e.g. a timm VisionTransformer); pass model_attr='<attribute path to"
            " the ViT>', e.g. model_attr='model'"
        )
    names = ", ".join(repr(n) for n, _ in top)
    raise ValueError(
        f"{len(top)} Vision Transformers found in {kind}: {names}; pass model_attr= to choose"
        f" the one to explain, e.g. model_attr={top[0][0]!r}"
    )


# --------------------------------------------------------------------------- probes
@dataclass
class _Probe:
    images: torch.Tensor
    labels: torch.Tensor | None
    masks: torch.Tensor | None
    indices: list[int] | None  # None: the first images of an iterable dataset

    def to(self, device: torch.device) -> _Probe:
        move = lambda t: None if t is None else t.to(device)
        return _Probe(move(self.images), move(self.labels), move(self.masks), self.indices)


@dataclass
class _Evaluation:
    epoch: int
    step: int
    maps: torch.Tensor  # [N, h, w] float16 on CPU: compact, enough for drift and pictures
    adcc: float | None


def _val_dataloader(trainer: Trainer, index: int) -> Any:
    loaders = trainer.val_dataloaders
    if loaders is None:
        # the fit loop builds its validation loaders only when it first validates; ask the
        # same source it will ask (the module's or datamodule's hook, or fit's argument)
        from lightning.pytorch.trainer.connectors.data_connector import _request_dataloader

        source = trainer.fit_loop.epoch_loop.val_loop._data_source
        if not source.is_defined():
            return None
        loaders = _request_dataloader(source)
    if loaders is None:
        return None
    flat = CombinedLoader(loaders, "sequential").flattened
    if not flat:
        return None
    if not 0 <= index < len(flat):
        raise ValueError(f"dataloader_idx={index} but there are {len(flat)} validation loaders")
    return flat[index]


@isolate_rng()
def _sample(
    loader: Any, num: int, seed: int, indices: list[int] | None, reader: Any
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[int] | None]:
    """Read ``num`` probe images without touching the global RNGs or the loader's sampler."""
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
        images, labels, masks = _read_batch(
            loader.collate_fn([dataset[i] for i in indices]), reader
        )
        return images, labels, masks, indices
    # An iterable dataset can only be read from the start. A fresh iterator draws its worker
    # seed from the global RNG (restored by isolate_rng); datasets that keep their own
    # position across iter() calls would be advanced, which no sampler-based loader does.
    parts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
    count = 0
    for batch in loader:
        parts.append(_read_batch(batch, reader))
        count += parts[-1][0].shape[0]
        if count >= num:
            break
    if not parts:
        raise ValueError("the validation dataloader yields no batches")
    cat = lambda i: None if parts[0][i] is None else torch.cat([p[i] for p in parts])[:num]
    return cat(0), cat(1), cat(2), None


# --------------------------------------------------------------------------- the callback
class ViTReciproCAMCallback(Callback):
    """Explain a fixed set of validation images with ViT-ReciproCAM while a ViT trains.

    A seeded sample of ``num_images`` validation images (the probes) is drawn once at the start
    of fit and explained after every ``every_n_epochs``-th validation (or every
    ``every_n_steps`` optimizer steps) and once more at the end of training, on the training
    device under the trainer's precision, on every rank (sharded strategies need all ranks in
    each forward). Nothing of the training run changes: the model is explained in eval mode
    without gradients, every module's training flag is restored, no hook stays behind and the
    global RNGs are left untouched.

    Logged each time under ``vitrcam/`` (scalars also through ``pl_module.log``, so that
    ``EarlyStopping``/``ModelCheckpoint`` can monitor them, except at the end of training):
    ``adcc`` (paper form: harmonic mean of the probe averages), ``average_drop``,
    ``increase``, ``coherency``, ``complexity``, ``adcc_delta`` and ``map_drift``
    (``1 - Pearson`` per probe, averaged) against the previous evaluation, ``hotspot_ratio``
    and ``border_energy`` of the mean saliency map and, when batches carry object masks,
    ``energy_in_mask`` and ``pointing_game``; pictures ``vitrcam/saliency_grid``,
    ``vitrcam/mean_saliency`` and, at the end, ``vitrcam/timeline``. TensorBoard and W&B get
    them natively, any other logger (or none) PNG files in its log directory; only global rank
    zero renders and writes. A :class:`PossibleShortcutWarning` (rank zero) says when the
    hotspot ratio exceeds ``hotspot_threshold`` or the energy in the object masks falls below
    ``energy_threshold``, and where the hotspot is.

    The probes are indexed straight from a map-style dataset (indices drawn with a local
    generator, collated with the loader's ``collate_fn``), so neither the global RNG nor the
    loader's sampler moves. An ``IterableDataset`` can only be read from the start: the first
    ``num_images`` of a fresh iterator are taken (RNG state restored afterwards); a dataset that
    keeps its own position across ``iter()`` calls would be advanced by that read. The
    indices and the history (compact CPU maps) are saved in checkpoints, so a resumed run
    continues the deltas, the drift and the timeline.

    Args:
        num_images: probe images (all of the dataset when it has fewer; warned once).
        every_n_epochs: explain after every n-th validation epoch (None or 0: only at the end);
            ignored when ``every_n_steps`` is set.
        every_n_steps: explain every n optimizer steps instead (in ``on_train_batch_end``).
        explain: class explained: ``"predicted"``, ``"label"`` (needs labels) or ``"both"``
            (metrics on the predicted class, the grid adds a true-class column).
        compute_adcc: compute ADCC (one more explanation pass of the probes).
        target_block: block whose ``norm1`` output is masked (see ``ViTReciproCAM``).
        kernel: ``"gaussian"`` (3x3, paper) or ``"point"``.
        cmap: matplotlib colormap of the overlays.
        class_names: one name per class for the captions (default: the datamodule's
            ``class_names`` attribute when it has one, else class indices).
        mean: normalisation mean of the images (default: the ViT's timm ``pretrained_cfg``).
        std: normalisation std of the images (same default).
        dataloader_idx: which validation dataloader the probes come from.
        batch_reader: function of a collated batch returning a dict (keys ``image``,
            ``label``, ``mask`` or their aliases) or a tuple ``(images, labels[, masks])``;
            the default reads tensors, tuples/lists and dicts with common keys.
        max_batch: at most this many token sequences per explanation pass (memory bound).
        model_attr: dotted attribute path from the LightningModule to the ViT, needed only
            when it cannot be found (none or several candidates).
        hotspot_threshold: warn when the hotspot ratio exceeds this (None: never).
        energy_threshold: warn when the mean energy in the object masks drops below this
            (None, the default: never). Opt-in because its meaningful level depends on how
            much of the image the objects cover: an untrained model scores about the objects'
            area share (0.1-0.3 on the demo data), so set it below that share.
        seed: seed of the probe sample.
        log_images: log pictures (scalars are logged either way).
        timeline_columns: at most this many evaluations, evenly spaced, per timeline row.

    Example:
        >>> cb = ViTReciproCAMCallback(num_images=4, every_n_steps=100, class_names=["a", "b"])
        >>> cb.timeline_images()
        []
    """

    def __init__(
        self,
        num_images: int = 16,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        explain: Literal["predicted", "label", "both"] = "predicted",
        compute_adcc: bool = True,
        target_block: int = -1,
        kernel: Literal["gaussian", "point"] = "gaussian",
        cmap: str = "inferno",
        class_names: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        dataloader_idx: int = 0,
        batch_reader: Callable[[Any], Any] | None = None,
        max_batch: int = 128,
        model_attr: str | None = None,
        hotspot_threshold: float | None = 4.0,
        energy_threshold: float | None = None,
        seed: int = 0,
        log_images: bool = True,
        timeline_columns: int = 8,
    ) -> None:
        super().__init__()
        for name, value in (("num_images", num_images), ("timeline_columns", timeline_columns)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
        if explain not in ("predicted", "label", "both"):
            raise ValueError(f"explain must be 'predicted', 'label' or 'both', got {explain!r}")
        if batch_reader is not None and not callable(batch_reader):
            raise ValueError(f"batch_reader must be callable, got {batch_reader!r}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs or None
        self.every_n_steps = every_n_steps or None
        self.explain = explain
        self.compute_adcc = compute_adcc
        self.target_block = target_block
        self.kernel = kernel
        self.cmap = cmap
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self.dataloader_idx = dataloader_idx
        self.batch_reader = batch_reader
        self.max_batch = max_batch
        self.model_attr = model_attr
        self.hotspot_threshold = hotspot_threshold
        self.energy_threshold = energy_threshold
        self.seed = seed
        self.log_images = log_images
        self.timeline_columns = timeline_columns

        self._cam: ViTReciproCAM | None = None
        self._adcc: ADCC | None = None
        self._probe: _Probe | None = None
        self._mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._history: list[_Evaluation] = []
        self._loaded_indices: list[int] | None = None

    # ------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            num_images=self.num_images,
            seed=self.seed,
            dataloader_idx=self.dataloader_idx,
            explain=self.explain,
            target_block=self.target_block,
        )

    def state_dict(self) -> dict[str, Any]:
        """The probe selection and the evaluation history (plain types and CPU tensors)."""
        indices = None if self._probe is None else self._probe.indices
        return {"indices": indices, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the indices are used in on_fit_start, once the dataset can be read
        self._loaded_indices = state_dict.get("indices")
        self._history = [_Evaluation(**e) for e in state_dict.get("history", [])]

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per evaluation so far: ``epoch``, ``step``, ``maps`` (CPU), ``adcc``."""
        return [dict(vars(e)) for e in self._history]

    # ------------------------------------------------------------------ setup
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        name, vit = find_vit(pl_module, self.model_attr)
        try:
            self._cam = ViTReciproCAM(vit, self.target_block, self.kernel, max_batch=self.max_batch)
        except ValueError as err:
            where = f"pl_module.{name}" if name else type(pl_module).__name__
            raise ValueError(
                f"ViTReciproCAMCallback cannot explain {where} ({type(vit).__name__}): {err}."
                " Point model_attr at the Vision Transformer to explain."
            ) from err
        self._mean_std = resolve_mean_std(vit, self.mean, self.std)
        datamodule_names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        if self.class_names is None and datamodule_names is not None:
            # a datamodule that names its classes saves the user from repeating them
            self.class_names = [str(c) for c in datamodule_names]
        self._probe = self._read_probes(trainer, pl_module).to(pl_module.device)
        self._check_setup(trainer)
        # no cross-process sync: every rank explains the same probes
        self._adcc = (
            ADCC(self._cam, sync_on_compute=False).to(pl_module.device)
            if self.compute_adcc
            else None
        )

    def _read_probes(self, trainer: Trainer, pl_module: LightningModule) -> _Probe:
        epoch_mode = self.every_n_steps is None and self.every_n_epochs is not None
        if epoch_mode and (
            not is_overridden("validation_step", pl_module) or trainer.limit_val_batches == 0
        ):
            raise ValueError(
                "ViTReciproCAMCallback explains after validation epochs but this run does not"
                " validate (no validation_step, or limit_val_batches=0); add validation or"
                " use every_n_steps="
            )
        with isolate_rng():  # a val_dataloader() hook may draw random numbers
            loader = _val_dataloader(trainer, self.dataloader_idx)
        if loader is None:
            raise ValueError(
                "ViTReciproCAMCallback needs a validation dataloader to draw its probe images"
                " from: pass val_dataloaders= to trainer.fit or define val_dataloader()"
            )
        images, labels, masks, indices = _sample(
            loader, self.num_images, self.seed, self._loaded_indices, self.batch_reader
        )
        if images.shape[0] < self.num_images:
            rank_zero_warn(
                f"ViTReciproCAMCallback: the validation data has {images.shape[0]} images,"
                f" fewer than num_images={self.num_images}; all of them are used"
            )
        return _Probe(images, labels, masks, indices)

    def _check_setup(self, trainer: Trainer) -> None:
        probe, cam = self._probe, self._cam
        assert probe is not None and cam is not None
        # a dry run now surfaces every model/image mismatch before the first epoch
        with self._explaining(trainer):
            dry = cam(self._input(trainer, probe.images[:1]))
        num_classes = dry.logits.shape[1]
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but the model predicts"
                f" {num_classes} classes"
            )
        if self.explain != "predicted":
            if probe.labels is None:
                raise ValueError(
                    f"explain={self.explain!r} needs labels but the validation batches have"
                    f" none; use explain='predicted' or {_HOW_TO_READ}"
                )
            if bool(((probe.labels < 0) | (probe.labels >= num_classes)).any()):
                raise ValueError(
                    f"the probe labels {probe.labels.tolist()} are not class indices in"
                    f" [0, {num_classes})"
                )
        if self._history and tuple(self._history[-1].maps.shape) != tuple(
            (probe.images.shape[0], *dry.grid_size)
        ):
            rank_zero_warn(
                "ViTReciproCAMCallback: the restored history does not match the probes"
                " (num_images or image size changed); starting a new history"
            )
            self._history = []

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (
            trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or self.every_n_steps is not None
            or self.every_n_epochs is None
            or (trainer.current_epoch + 1) % self.every_n_epochs != 0
        ):
            return
        self._evaluate(trainer, pl_module, via_module_log=True)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps is None or step == 0 or step % self.every_n_steps != 0:
            return
        self._evaluate(trainer, pl_module, via_module_log=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._probe is None:
            return
        # self.log is not allowed here: the loggers get the final values directly
        self._evaluate(trainer, pl_module, via_module_log=False)
        if self.log_images and trainer.is_global_zero:
            self._log_timeline(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # keep the probes for timeline_images() but release the device memory
        if self._probe is not None:
            self._probe = self._probe.to(torch.device("cpu"))

    # ------------------------------------------------------------------ evaluation
    @contextmanager
    def _explaining(self, trainer: Trainer) -> Iterator[None]:
        # the trainer's precision (autocast for *-mixed); the RNGs are restored in case a
        # custom model draws random numbers even in eval mode
        with torch.no_grad(), isolate_rng(), trainer.precision_plugin.forward_context():
            yield

    def _input(self, trainer: Trainer, images: torch.Tensor) -> torch.Tensor:
        return trainer.precision_plugin.convert_input(images)

    def _explain(
        self, images: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[ReciproCAMResult, ReciproCAMResult | None, ReciproCAMResult | None]:
        """(result the metrics use, predicted-class result, true-class result)."""
        cam = self._cam
        assert cam is not None
        # in "label" mode the predicted maps are only drawn; the flag is the same on every
        # rank, so sharded strategies still see the same forwards everywhere
        pred = cam(images) if self.explain != "label" or self.log_images else None
        true = cam(images, labels) if self.explain != "predicted" else None
        primary = true if self.explain == "label" else pred
        assert primary is not None
        return primary, pred, true

    def _measure(
        self, images: torch.Tensor, result: ReciproCAMResult, masks: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        maps = result.maps
        mean_map = mean_saliency_map(maps)
        stats = {
            "hotspot_ratio": hotspot_ratio(mean_map),
            "border_energy": border_energy(mean_map),
        }
        if masks is not None:
            stats["energy_in_mask"] = energy_in_mask(maps, masks).mean()
            stats["pointing_game"] = pointing_game(maps, masks).mean()
        if self._history:
            previous = self._history[-1].maps.to(maps.device, torch.float32)
            stats["map_drift"] = map_drift(previous, maps).mean()
        if self._adcc is not None:
            self._adcc.update(images, result=result)
            parts = self._adcc.compute()
            self._adcc.reset()
            stats.update({k: parts[k] for k in _ADCC_NAMES})
        return stats, mean_map

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, via_module_log: bool) -> None:
        probe = self._probe
        step, epoch = trainer.global_step, trainer.current_epoch
        if probe is None or (self._history and self._history[-1].step == step):
            return
        with self._explaining(trainer):
            images = self._input(trainer, probe.images)
            primary, pred, true = self._explain(images, probe.labels)
            stats, mean_map = self._measure(images, primary, probe.masks)
        # one host transfer for all scalars
        values = dict(zip(stats, torch.stack(list(stats.values())).float().tolist(), strict=True))
        previous_adcc = self._history[-1].adcc if self._history else None
        if "adcc" in values and previous_adcc is not None:
            values["adcc_delta"] = values["adcc"] - previous_adcc
        self._history.append(
            _Evaluation(epoch, step, primary.maps.to("cpu", torch.float16), values.get("adcc"))
        )
        scalars = {f"vitrcam/{k}": v for k, v in values.items()}
        if via_module_log:
            # logger=False: Lightning would forward step-level values only every
            # log_every_n_steps; the loggers get every evaluation below instead
            for key, value in scalars.items():
                pl_module.log(key, value, logger=False, sync_dist=True)
        log_scalars(trainer, scalars, step, epoch)
        if trainer.is_global_zero:
            self._warn_shortcut(values, mean_map, epoch, step)
            if self.log_images:
                log_pictures(
                    trainer, self._pictures(trainer, images, pred, true, values, mean_map), step
                )

    def _warn_shortcut(
        self, values: dict[str, float], mean_map: torch.Tensor, epoch: int, step: int
    ) -> None:
        reasons = []
        ratio, energy = values["hotspot_ratio"], values.get("energy_in_mask")
        if self.hotspot_threshold is not None and ratio > self.hotspot_threshold:
            reasons.append(f"hotspot ratio {ratio:.2f} > {self.hotspot_threshold}")
        if self.energy_threshold is not None and energy is not None:
            if energy < self.energy_threshold:
                reasons.append(f"energy in the object masks {energy:.2f} < {self.energy_threshold}")
        if not reasons:
            return
        row, col, border = hotspot_location(mean_map)
        place = f"on the {border}" if border else "inside the image"
        rank_zero_warn(
            f"ViTReciproCAMCallback: possible shortcut at epoch {epoch} (step {step}): "
            + " and ".join(reasons)
            + f"; the mean saliency peaks at token row {row}, column {col} ({place})",
            category=PossibleShortcutWarning,
        )

    # ------------------------------------------------------------------ pictures
    def _pictures(
        self,
        trainer: Trainer,
        images: torch.Tensor,
        pred: ReciproCAMResult | None,
        true: ReciproCAMResult | None,
        values: dict[str, float],
        mean_map: torch.Tensor,
    ) -> list[Picture]:
        probe, (mean, std) = self._probe, self._mean_std  # type: ignore[misc]
        assert probe is not None and pred is not None
        draw = dict(mean=mean, std=std, cmap=self.cmap)
        true_maps = None if true is None else true.maps
        grid = saliency_grid(
            images,
            pred.maps,
            preds=pred.logits.argmax(dim=1),
            probs=pred.probs,
            labels=probe.labels,
            true_maps=true_maps,
            class_names=self.class_names,
            **draw,
        )
        parts = captions = None
        if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
            # W&B captions each image: one picture per probe row (input | overlays)
            columns = [to_uint8(denormalize(images, mean, std))]
            columns += [overlay(images, m, **draw) for m in (pred.maps, true_maps) if m is not None]
            parts = list(torch.cat(columns, dim=-1).cpu())
            captions = row_captions(
                pred.logits.argmax(dim=1), pred.probs, probe.labels, self.class_names
            )
        title = f"mean saliency, hotspot x{values['hotspot_ratio']:.1f}"
        return [
            Picture("vitrcam/saliency_grid", grid, parts, captions),
            Picture("vitrcam/mean_saliency", heatmap(mean_map, cmap=self.cmap, title=title)),
        ]

    def _frame_label(self, evaluation: _Evaluation) -> str:
        if self.every_n_steps is not None:
            return f"step {evaluation.step}"
        return f"ep {evaluation.epoch}"

    def timeline_images(self) -> list[torch.Tensor]:
        """One ``uint8 [3, H, W]`` picture per probe image: its overlays across evaluations
        (at most ``timeline_columns``, evenly spaced, first and last included); empty before
        the first evaluation."""
        probe, history = self._probe, self._history
        if probe is None or not history or self._mean_std is None:
            return []
        keep = torch.linspace(0, len(history) - 1, min(len(history), self.timeline_columns))
        kept = [history[i] for i in keep.round().long().unique().tolist()]
        images = probe.images.float()
        maps = torch.cat([e.maps for e in kept]).to(images.device, torch.float32)
        mean, std = self._mean_std
        frames = overlay(images.repeat(len(kept), 1, 1, 1), maps, mean, std, cmap=self.cmap)
        # [T*N, 3, H, W] -> [N, T, 3, H, W]: one row of frames per probe image
        frames = frames.view(len(kept), -1, *frames.shape[1:]).transpose(0, 1).cpu()
        labels = [self._frame_label(e) for e in kept]
        return [timeline(list(row), labels, self.timeline_columns) for row in frames]

    def _log_timeline(self, trainer: Trainer) -> None:
        rows = self.timeline_images()
        if not rows:
            return
        probe = self._probe
        assert probe is not None
        captions = [f"probe {i}" for i in range(len(rows))]
        if probe.labels is not None:
            names = self.class_names
            captions = [
                f"{c}: {names[y] if names else y}"
                for c, y in zip(captions, probe.labels.tolist(), strict=True)
            ]
        picture = Picture("vitrcam/timeline", torch.cat(rows, dim=1), rows, captions)
        log_pictures(trainer, [picture], trainer.global_step)
