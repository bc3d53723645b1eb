"""A Lightning callback that watches what a Vision Transformer attends to while it trains.

Every few epochs (or steps) :class:`ViTReciproCAMCallback` explains a fixed, seeded set of
validation images with :class:`~lightning_vitrcam.explainer.ViTReciproCAM`, logs a captioned
saliency grid, the mean saliency map, ADCC and shortcut signals under ``vitrcam/``, warns when
the saliency collapses onto one spot (a possible shortcut), and at the end of fit logs one
timeline per probe image showing how its explanation drifted.

The callback only wires Lightning's hooks to the stages: probes (:mod:`~lightning_vitrcam.probes`)
-> explainer -> signals (:mod:`~lightning_vitrcam.metrics`, :mod:`~lightning_vitrcam.shortcut`)
-> pictures (:mod:`~lightning_vitrcam.render`) -> loggers (:mod:`~lightning_vitrcam.loggers`).

Example:
    >>> import lightning as L
    >>> from lightning_vitrcam import ViTReciproCAMCallback
    >>> callback = ViTReciproCAMCallback(num_images=8, every_n_epochs=2, explain="both")
    >>> trainer = L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng

from lightning_vitrcam.adapters import find_vit
from lightning_vitrcam.explainer import ReciproCAMResult, ViTReciproCAM
from lightning_vitrcam.loggers import log_pictures, log_scalars
from lightning_vitrcam.metrics import ADCC, ADCC_KEYS, FLAT_LOG_ODDS, flat_maps, probe_signals
from lightning_vitrcam.normalization import resolve_mean_std
from lightning_vitrcam.probes import (
    HOW_TO_READ,
    Probes,
    overrides,
    sample_probes,
    validation_loader,
)
from lightning_vitrcam.render import (
    Picture,
    evenly_spaced,
    heatmap,
    probe_timelines,
    saliency_picture,
)
from lightning_vitrcam.sharding import gather_result, probe_shard, sharded_forward, take
from lightning_vitrcam.shortcut import (
    PossibleShortcutWarning,
    ShortcutAlarm,
    Suspect,
    shortcut_message,
)

__all__ = ["ExplanationSkippedWarning", "PossibleShortcutWarning", "ViTReciproCAMCallback"]


class ExplanationSkippedWarning(UserWarning):
    """An evaluation failed after setup and was skipped; training went on."""


class _Skip(Exception):
    """Why an evaluation is skipped, and what the user can do about it."""

    def __init__(self, cause: str, remedy: str) -> None:
        super().__init__(cause)
        self.cause, self.remedy = cause, remedy

    @classmethod
    def of(cls, err: BaseException) -> _Skip:
        if isinstance(err, _Skip):
            return err
        return cls(
            f"{type(err).__name__}: {err}",
            "this is a bug or an unsupported setup; please report it with the traceback above"
            " the warning (run with the callback's evaluation outside fit to see it)",
        )

    def message(self, epoch: int, step: int) -> str:
        return (
            f"ViTReciproCAMCallback: the evaluation at epoch {epoch} (step {step}) was skipped:"
            f" {self.cause}. {self.remedy[0].upper()}{self.remedy[1:]}. Training continues."
        )


# (result the metrics use, predicted-class result, true-class result)
_Explained = tuple[ReciproCAMResult, ReciproCAMResult | None, ReciproCAMResult | None]


@dataclass
class _Outcome:
    """What one evaluation computed (tensors on the training device)."""

    images: torch.Tensor
    primary: ReciproCAMResult
    pred: ReciproCAMResult | None
    true: ReciproCAMResult | None
    values: dict[str, float]
    mean_map: torch.Tensor
    flat: torch.Tensor
    suspects: list[Suspect]


@dataclass
class _Evaluation:
    epoch: int
    step: int
    maps: torch.Tensor  # [N, h, w] float16 on CPU: compact, enough for drift and pictures
    adcc: float | None


_SHARDED = ("FSDP", "DeepSpeed", "ModelParallel")


def _check_strategy(trainer: Trainer) -> None:
    """Sharded strategies are refused early: the explainer calls the unwrapped ViT directly,
    which needs every parameter in full on every rank."""
    kind = type(trainer.strategy).__name__
    if any(word in kind for word in _SHARDED):
        raise ValueError(
            f"ViTReciproCAMCallback does not support the sharded strategy {kind}: the explainer"
            " runs the unwrapped ViT, whose parameters must be whole (unsharded) on every"
            " rank, and this has not been tested on a GPU. Use strategy='ddp' (tested), or"
            " explain checkpoints afterwards with `lightning-vitrcam explain`."
        )


class ViTReciproCAMCallback(Callback):
    """Explain a fixed set of validation images with ViT-ReciproCAM while a ViT trains.

    A seeded sample of ``num_images`` validation images (the probes) is drawn once at the start
    of fit and explained after every ``every_n_epochs``-th validation (or every
    ``every_n_steps`` optimizer steps) and once more at the end of training, on the training
    device under the trainer's precision. Under DDP each rank explains its share of the probes
    and the results are gathered (:mod:`~lightning_vitrcam.sharding`), so every rank holds, and
    rank zero logs, exactly what one process would. Nothing of the training run changes: the
    model is explained in eval mode without gradients, every module's training flag is
    restored, no hook stays behind and the global RNGs are left untouched.

    Logged each time under ``vitrcam/`` (scalars also through ``pl_module.log``, so that
    ``EarlyStopping``/``ModelCheckpoint`` can monitor them, except at the end of training):
    ``adcc`` (paper form: harmonic mean of the probe averages), ``average_drop``,
    ``increase``, ``coherency``, ``complexity``, ``adcc_delta`` and ``map_drift``
    (``1 - Pearson`` per probe, averaged) against the previous evaluation, ``hotspot_ratio``
    and ``border_energy`` of the mean saliency map and, when batches carry object masks,
    ``energy_in_mask`` and ``pointing_game``; pictures ``vitrcam/saliency_grid``,
    ``vitrcam/mean_saliency`` and, at the end, ``vitrcam/timeline``. TensorBoard and W&B get
    them natively, any other logger (or none) PNG files in its log directory; only global rank
    zero renders and writes. ``score_range`` (median raw score range of the maps) and
    ``flat_maps`` (share of maps without signal, left out of the map signals) say how much the
    maps can be trusted; ``shortcut_drop`` is the shortcut alarm's strongest evidence.

    A :class:`PossibleShortcutWarning` (rank zero) says where the model's prediction hangs on one
    fixed place and on what evidence: the peaks of the global and per-class mean maps, and,
    when those and the places remembered from the last evaluation confirm nothing, the places a
    hierarchical occlusion search finds (``shortcut_search``), are occluded in the
    probes, and a place whose occlusion collapses the prediction on most probes of a group is
    reported (:class:`~lightning_vitrcam.shortcut.ShortcutAlarm`, beyond the
    paper; e.g. "occluding token row 0, column 0 (on the top-left corner) drops the
    predicted-class probability by 0.69 on average and by at least half on 15 of 16 probes").
    Optionally also when the hotspot ratio exceeds ``hotspot_threshold`` or the energy in the
    object masks falls below ``energy_threshold``.

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
        mean: normalisation mean of the images, one value or one per channel (default: the
            ViT's timm ``pretrained_cfg``, else ImageNet's, fitted to the images' channels).
        std: normalisation std of the images (same default).
        dataloader_idx: which validation dataloader the probes come from.
        batch_reader: function of a collated batch returning a dict (keys ``image``,
            ``label``, ``mask`` or their aliases) or a tuple ``(images, labels[, masks])``;
            the default reads tensors, tuples/lists and dicts with common keys.
        max_batch: at most this many token sequences per explanation pass (memory bound).
        model_attr: dotted attribute path from the LightningModule to the ViT, needed only
            when it cannot be found (none or several candidates).
        shortcut_alarm: run the occlusion-confirmed shortcut alarm (a few extra forwards of
            the probes per evaluation).
        shortcut_search: let the alarm also propose the places a hierarchical occlusion search
            finds (16 occluded copies per probe on an 8x8 token grid, 20 on 14x14); it finds a
            cue whichever block reads it, where the explained block's maps are flat or weak.
            It runs only when no map peak or remembered place is confirmed (it cannot change
            whether such an evaluation warns). False: only the maps' peaks are tested
            (cheaper, misses such cues).
        min_drop: the alarm counts a probe as hit when occluding the suspected place (a
            token, or a box of up to 2x2 tokens that must also keep the prediction alone)
            removes at least this share of its predicted-class probability.
        min_share: the alarm reports a place when at least this share of a group's probes
            (all probes, or those of one predicted class) are hit ...
        min_hits: ... and at least this many of them (see :class:`ShortcutAlarm` for why
            half and 3).
        hotspot_threshold: also warn when the hotspot ratio exceeds this (None, the default:
            never; a ratio says how peaked the mean map is, not whether the model depends on
            the peak, and object-centred data peak in the centre).
        energy_threshold: warn when the mean energy in the object masks drops below this
            (None, the default: never). Opt-in because its meaningful level depends on how
            much of the image the objects cover: an untrained model scores about the objects'
            area share (0.1-0.3 on the demo data), so set it below that share.
        seed: seed of the probe sample.
        log_images: log pictures (scalars are logged either way).
        timeline_columns: at most this many evaluations, evenly spaced, per timeline row.
        flat_threshold: a probe's map is "flat" (no signal: marked in its caption, left out of
            the mean-map signals) when masking any window moves the predicted class's
            log-odds by less than this (see :func:`~lightning_vitrcam.metrics.flat_maps`).
        channels: image channels shown in the pictures: one index (grey) or three (red,
            green, blue); default grey for one-channel images, else the first three.

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
        shortcut_alarm: bool = True,
        shortcut_search: bool = True,
        min_drop: float = 0.5,
        min_share: float = 0.5,
        min_hits: int = 3,
        hotspot_threshold: float | None = None,
        energy_threshold: float | None = None,
        seed: int = 0,
        log_images: bool = True,
        timeline_columns: int = 8,
        flat_threshold: float = FLAT_LOG_ODDS,
        channels: list[int] | None = None,
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
        self.shortcut_alarm = shortcut_alarm
        self.shortcut_search = shortcut_search
        self.min_drop = min_drop
        self.min_share = min_share
        self.min_hits = min_hits
        self.hotspot_threshold = hotspot_threshold
        self.energy_threshold = energy_threshold
        self._alarm = ShortcutAlarm(
            min_drop, min_share, min_hits, max_batch=max_batch, search=shortcut_search
        )
        self.seed = seed
        self.log_images = log_images
        self.timeline_columns = timeline_columns
        self.flat_threshold = flat_threshold
        self.channels = None if channels is None else [int(c) for c in channels]

        self._vit: torch.nn.Module | None = None
        self._device = torch.device("cpu")
        self._flat_hinted = False
        self._cam: ViTReciproCAM | None = None
        self._adcc: ADCC | None = None
        self._probe: Probes | None = None
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

    @property
    def alarm(self) -> ShortcutAlarm:
        """The shortcut alarm; its ``last_tests`` hold the last evaluation's evidence (each
        candidate place, its group and every tested probe's drop)."""
        return self._alarm

    def state_dict(self) -> dict[str, Any]:
        """The probe selection, the evaluation history (plain types and CPU tensors) and the
        alarm's candidates."""
        indices = None if self._probe is None else self._probe.indices
        return {"indices": indices, "history": self.history, "alarm": self._alarm.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the indices are used in on_fit_start, once the dataset can be read
        self._loaded_indices = state_dict.get("indices")
        self._history = [_Evaluation(**e) for e in state_dict.get("history", [])]
        if "alarm" in state_dict:
            self._alarm.load_state_dict(state_dict["alarm"])

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per evaluation so far: ``epoch``, ``step``, ``maps`` (CPU), ``adcc``."""
        return [dict(vars(e)) for e in self._history]

    # ------------------------------------------------------------------ setup
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _check_strategy(trainer)
        name, vit = find_vit(pl_module, self.model_attr)
        self._vit, self._device = vit, pl_module.device
        try:
            self._build_explainer()
        except ValueError as err:
            where = f"pl_module.{name}" if name else type(pl_module).__name__
            raise ValueError(
                f"ViTReciproCAMCallback cannot explain {where} ({type(vit).__name__}): {err}."
                " Point model_attr at the Vision Transformer to explain."
            ) from err
        datamodule_names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        if self.class_names is None and datamodule_names is not None:
            # a datamodule that names its classes saves the user from repeating them
            self.class_names = [str(c) for c in datamodule_names]
        self._probe = self._read_probes(trainer, pl_module).to(pl_module.device)
        channels = self._probe.images.shape[1]
        self._mean_std = resolve_mean_std(vit, self.mean, self.std, channels=channels)
        self._check_setup(trainer)

    def _build_explainer(self) -> None:
        """The explainer (and the ADCC metric that calls it) at the current ``max_batch``."""
        self._cam = ViTReciproCAM(
            self._vit, self.target_block, self.kernel, max_batch=self.max_batch
        )
        self._adcc = ADCC(self._cam).to(self._device) if self.compute_adcc else None

    def _read_probes(self, trainer: Trainer, pl_module: LightningModule) -> Probes:
        epoch_mode = self.every_n_steps is None and self.every_n_epochs is not None
        if epoch_mode and (
            not overrides("validation_step", pl_module) or trainer.limit_val_batches == 0
        ):
            raise ValueError(
                "ViTReciproCAMCallback explains after validation epochs but this run does not"
                " validate (no validation_step, or limit_val_batches=0); add validation or"
                " use every_n_steps="
            )
        loader = validation_loader(trainer, self.dataloader_idx)
        if loader is None:
            raise ValueError(
                "ViTReciproCAMCallback needs a validation dataloader to draw its probe images"
                " from: pass val_dataloaders= to trainer.fit or define val_dataloader()"
            )
        probes = sample_probes(
            loader, self.num_images, self.seed, self._loaded_indices, self.batch_reader
        )
        if len(probes) < self.num_images:
            rank_zero_warn(
                f"ViTReciproCAMCallback: the validation data has {len(probes)} images,"
                f" fewer than num_images={self.num_images}; all of them are used"
            )
        return probes

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
                    f" none; use explain='predicted' or {HOW_TO_READ}"
                )
            if bool(((probe.labels < 0) | (probe.labels >= num_classes)).any()):
                raise ValueError(
                    f"the probe labels {probe.labels.tolist()} are not class indices in"
                    f" [0, {num_classes})"
                )
        if self._history and tuple(self._history[-1].maps.shape) != tuple(
            (len(probe), *dry.grid_size)
        ):
            rank_zero_warn(
                "ViTReciproCAMCallback: the restored history does not match the probes"
                " (num_images or image size changed); starting a new history"
            )
            self._history = []

    # ------------------------------------------------------------------ hooks
    def _due(self, trainer: Trainer, trigger: Literal["epoch", "step"]) -> bool:
        """The one place that decides whether a hook explains now."""
        if self._probe is None or trainer.sanity_checking:
            return False
        if trigger == "step":
            step = self.every_n_steps
            return step is not None and trainer.global_step > 0 and trainer.global_step % step == 0
        every = self.every_n_epochs
        return (
            trainer.state.fn == TrainerFn.FITTING
            and self.every_n_steps is None
            and every is not None
            and (trainer.current_epoch + 1) % every == 0
        )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._due(trainer, "epoch"):
            self._evaluate(trainer, pl_module, via_module_log=True)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self._due(trainer, "step"):
            self._evaluate(trainer, pl_module, via_module_log=True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._probe is None:
            return
        # self.log is not allowed here: the loggers get the final values directly
        self._evaluate(trainer, pl_module, via_module_log=False)
        if self.log_images and trainer.is_global_zero:
            self._write(trainer, lambda: self._log_timeline(trainer))

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

    def _explain(self, images: torch.Tensor, labels: torch.Tensor | None) -> _Explained:
        """(result the metrics use, predicted-class result, true-class result)."""
        cam = self._cam
        assert cam is not None
        # in "label" mode the predicted maps are only drawn
        pred = cam(images) if self.explain != "label" or self.log_images else None
        true = cam(images, labels) if self.explain != "predicted" else None
        primary = true if self.explain == "label" else pred
        assert primary is not None
        return primary, pred, true

    def _explain_own(self, trainer: Trainer, images: torch.Tensor) -> _Explained:
        """This rank's share of the probes explained (and scored for ADCC): no collective
        runs here, so a failure on one rank cannot leave the others waiting in one."""
        probe = self._probe
        assert probe is not None
        shard = probe_shard(len(probe), trainer.global_rank, trainer.world_size, images.device)
        labels = None if probe.labels is None else probe.labels[shard.rows]
        own = self._explain(images[shard.rows], labels)
        logits = own[0].logits
        bad = ~torch.isfinite(logits)
        if bool(bad.any()):
            nan = int(torch.isnan(logits).sum())
            raise _Skip(
                f"the model's logits on the probe images contain {nan} NaN and"
                f" {int(bad.sum()) - nan} inf values",
                "the model has probably diverged: lower the learning rate, clip gradients or"
                " check the loss",
            )
        if self._adcc is not None and shard.valid:
            # ADCC of this rank's own probes; the metric sums its states across ranks
            mine = slice(0, shard.valid)
            self._adcc.update(images[shard.rows[mine]], result=take(own[0], mine))
        return own

    def _combine(self, trainer: Trainer, images: torch.Tensor, own: _Explained) -> _Outcome:
        """All ranks' shares gathered, then the signals, ADCC and the shortcut alarm, the
        same on every rank."""
        probe = self._probe
        assert probe is not None
        previous = self._history[-1] if self._history else None
        n = len(probe)
        primary, pred, true = (
            None if r is None else gather_result(trainer.strategy, r, n) for r in own
        )
        assert primary is not None
        flat = flat_maps(primary.log_odds_range, self.flat_threshold)
        stats, mean_map = probe_signals(
            primary.maps, probe.masks, None if previous is None else previous.maps, ~flat
        )
        stats["score_range"] = primary.score_range.median().to(mean_map.dtype)
        stats["flat_maps"] = flat.float().mean()
        if self._adcc is not None:
            parts = self._adcc.compute()
            self._adcc.reset()
            stats.update({k: parts[k] for k in ADCC_KEYS})
        suspects: list[Suspect] = []
        if self.shortcut_alarm:
            cam = self._cam
            assert cam is not None
            # the copies take the explanation's route (cam.predict), so its unmasked logits
            # are the probes' own scores and save one forward
            suspects, drop = self._alarm.check(
                sharded_forward(trainer.strategy, cam.predict),
                cam.score_fn,
                images,
                [primary.maps],
                primary.targets,
                ~flat,
                logits=primary.logits,
            )
            stats["shortcut_drop"] = torch.tensor(drop, device=mean_map.device)
        # one host transfer for all scalars
        values = dict(zip(stats, torch.stack(list(stats.values())).float().tolist(), strict=True))
        if "adcc" in values and previous is not None and previous.adcc is not None:
            values["adcc_delta"] = values["adcc"] - previous.adcc
        return _Outcome(images, primary, pred, true, values, mean_map, flat, suspects)

    def _measure_safely(self, trainer: Trainer) -> tuple[_Outcome | None, _Skip | None]:
        """One evaluation's tensor work, any failure turned into a :class:`_Skip`.

        The local part (:meth:`_explain_own`) may fail on one rank alone: out of memory
        halves ``max_batch`` and retries once, then all ranks agree whether to go on before
        any of them enters a collective (:meth:`_combine`).
        """
        probe = self._probe
        assert probe is not None
        with self._explaining(trainer):
            images = self._input(trainer, probe.images)
            own, skip = self._local_safely(trainer, images)
            if not trainer.strategy.reduce_boolean_decision(skip is None, all=True):
                if self._adcc is not None:
                    self._adcc.reset()
                return None, skip or _Skip("another process failed", "see its warning")
            assert own is not None
            try:
                return self._combine(trainer, images, own), None
            except Exception as err:  # noqa: BLE001 - a monitor never ends a run
                return None, _Skip.of(err)

    def _local_safely(
        self, trainer: Trainer, images: torch.Tensor
    ) -> tuple[_Explained | None, _Skip | None]:
        try:
            return self._explain_own(trainer, images), None
        except torch.OutOfMemoryError:
            before = self.max_batch
            self._release_memory()
            self.max_batch = max(1, before // 2)
            self._build_explainer()
            try:
                return self._explain_own(trainer, images), None
            except torch.OutOfMemoryError:
                self._release_memory()
                return None, _Skip(
                    f"out of memory with max_batch={before} and again with {self.max_batch}",
                    "lower max_batch or num_images, or explain less often",
                )
            except Exception as err:  # noqa: BLE001 - a monitor never ends a run
                return None, _Skip.of(err)
        except Exception as err:  # noqa: BLE001 - a monitor never ends a run
            return None, _Skip.of(err)

    def _release_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, via_module_log: bool) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        if self._probe is None or (self._history and self._history[-1].step == step):
            return
        outcome, skip = self._measure_safely(trainer)
        # every rank must take the same branch: a rank that logs with sync_dist while another
        # skips would wait forever
        if not trainer.strategy.reduce_boolean_decision(skip is None, all=True):
            skip = skip or _Skip("another process failed", "see that process's warning")
            rank_zero_warn(skip.message(epoch, step), category=ExplanationSkippedWarning)
            return
        assert outcome is not None
        values = outcome.values
        primary = outcome.primary
        self._history.append(
            _Evaluation(epoch, step, primary.maps.to("cpu", torch.float16), values.get("adcc"))
        )
        scalars = {f"vitrcam/{k}": v for k, v in values.items()}
        if via_module_log:
            # logger=False: Lightning would forward step-level values only every
            # log_every_n_steps; the loggers get every evaluation below instead. The values
            # are computed from the gathered results, the same on every rank, so sync_dist's
            # mean leaves them as they are; it keeps Lightning from warning about unsynced
            # epoch-level values under DDP.
            for key, value in scalars.items():
                pl_module.log(key, value, logger=False, sync_dist=True)
        if not trainer.is_global_zero:
            return
        self._hint_flat(outcome.flat)
        message = shortcut_message(
            values,
            outcome.mean_map,
            epoch,
            step,
            self.hotspot_threshold,
            self.energy_threshold,
            outcome.suspects,
            self.class_names,
        )
        if message is not None:
            rank_zero_warn(message, category=PossibleShortcutWarning)
        self._write(trainer, lambda: log_scalars(trainer, scalars, step, epoch))
        if self.log_images:
            self._write(trainer, lambda: log_pictures(trainer, self._pictures(outcome), step))

    def _write(self, trainer: Trainer, write: Callable[[], Any]) -> None:
        """Run a logger call; a logger that fails costs one warning, never the run."""
        try:
            write()
        except Exception as err:  # noqa: BLE001 - a monitor never ends a run
            names = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "no logger"
            rank_zero_warn(
                f"ViTReciproCAMCallback: writing to the loggers ({names}) failed:"
                f" {type(err).__name__}: {err}; check the logger's configuration (its"
                " directory, credentials, connection). Training continues.",
                category=ExplanationSkippedWarning,
            )

    def _hint_flat(self, flat: torch.Tensor) -> None:
        """Once per run: say what to try when most probe maps carry no signal."""
        share = float(flat.float().mean())
        if self._flat_hinted or share <= 0.5:
            return
        self._flat_hinted = True
        rank_zero_warn(
            f"ViTReciproCAMCallback: {share:.0%} of the probe maps are flat: masking any window"
            f" of block {self.target_block} moves the predicted class's log-odds by less than"
            f" {self.flat_threshold:g}, so those maps are marked 'flat' and left out of the"
            " mean-map signals. This is normal for an untrained model; if it persists, explain"
            " an earlier block (target_block=-2 is the authors' default) or check that the"
            " model's prediction depends on the image at all.",
        )

    # ------------------------------------------------------------------ pictures
    def _pictures(self, outcome: _Outcome) -> list[Picture]:
        probe, (mean, std) = self._probe, self._mean_std  # type: ignore[misc]
        images, pred, true = outcome.images, outcome.pred, outcome.true
        values, mean_map = outcome.values, outcome.mean_map
        assert probe is not None and pred is not None
        grid = saliency_picture(
            "vitrcam/saliency_grid",
            images,
            pred.maps,
            preds=pred.logits.argmax(dim=1),
            probs=pred.probs,
            labels=probe.labels,
            true_maps=None if true is None else true.maps,
            class_names=self.class_names,
            mean=mean,
            std=std,
            cmap=self.cmap,
            channels=self.channels,
            notes=["flat map" if f else None for f in outcome.flat.tolist()],
        )
        ratio = values.get("hotspot_ratio")
        title = (
            "mean saliency: all maps flat"
            if ratio is None
            else f"mean saliency, hotspot x{ratio:.1f}"
        )
        return [
            grid,
            Picture("vitrcam/mean_saliency", heatmap(mean_map, cmap=self.cmap, title=title)),
        ]

    def timeline_images(self) -> list[torch.Tensor]:
        """One ``uint8 [3, H, W]`` picture per probe image: its overlays across evaluations
        (at most ``timeline_columns``, evenly spaced, first and last included); empty before
        the first evaluation."""
        probe, history = self._probe, self._history
        if probe is None or not history or self._mean_std is None:
            return []
        kept = [history[i] for i in evenly_spaced(len(history), self.timeline_columns)]
        per_step = self.every_n_steps is not None
        labels = [f"step {e.step}" if per_step else f"ep {e.epoch}" for e in kept]
        mean, std = self._mean_std
        frames = [e.maps for e in kept]
        return probe_timelines(
            probe.images,
            frames,
            labels,
            mean,
            std,
            self.cmap,
            self.timeline_columns,
            channels=self.channels,
        )

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
