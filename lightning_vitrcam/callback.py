"""A Lightning callback that watches what a Vision Transformer looks at while it trains.

The callback keeps Lightning's hooks and the schedule; everything else is the core every entry
point shares (:class:`~lightning_vitrcam.monitor.Monitor`): probes
(:mod:`~lightning_vitrcam.probes`) -> evaluation (explainer, ADCC, signals, the shortcut alarm:
:mod:`~lightning_vitrcam.evaluation`) -> pictures (:mod:`~lightning_vitrcam.render`) -> loggers
(:mod:`~lightning_vitrcam.loggers`). The trainer itself is the core's host
(:mod:`~lightning_vitrcam.hosts`).

Example:
    >>> import lightning as L
    >>> from lightning_vitrcam import ViTReciproCAMCallback
    >>> callback = ViTReciproCAMCallback(num_images=8, every_n_epochs=2, explain="both")
    >>> trainer = L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from lightning_vitrcam.metrics import FLAT_LOG_ODDS
from lightning_vitrcam.monitor import Monitor, Options, SettingsView
from lightning_vitrcam.probes import probes_for_fit, validation_loader
from lightning_vitrcam.reporting import ExplanationSkippedWarning
from lightning_vitrcam.sharding import check_strategy
from lightning_vitrcam.shortcut import PossibleShortcutWarning, ShortcutAlarm

__all__ = ["ExplanationSkippedWarning", "PossibleShortcutWarning", "ViTReciproCAMCallback"]


class ViTReciproCAMCallback(SettingsView, Callback):
    """Explain a fixed set of validation images with ViT-ReciproCAM while a ViT trains.

    A seeded sample of ``num_images`` validation images (the probes) is drawn once at the start
    of fit and explained after every ``every_n_epochs``-th validation (or every
    ``every_n_steps`` optimizer steps) and once more at the end of training, on the training
    device under the trainer's precision; under DDP each rank explains its share and the
    results are gathered. Nothing of the training run changes: eval mode, no gradients, every
    training flag restored, no hook left behind, the global RNGs untouched.

    Scalars go under ``vitrcam/`` to every logger (and through ``pl_module.log``, so that
    ``EarlyStopping``/``ModelCheckpoint`` can monitor them); pictures
    (``vitrcam/saliency_grid``, ``vitrcam/mean_saliency``, at the end ``vitrcam/timeline``) to
    TensorBoard, W&B, MLflow or PNG files, from global rank zero only. A
    :class:`PossibleShortcutWarning` says what the prediction hangs on, and on what evidence
    (``shortcut_alarm``). What each signal means: the README's tables.

    Args:
        num_images: probe images (all of the dataset when it has fewer; warned once).
        every_n_epochs: explain after every n-th validation epoch (None or 0: only at the end);
            ignored when ``every_n_steps`` is set.
        every_n_steps: explain every n optimizer steps instead.
        explain: ``"predicted"``, ``"label"`` (needs labels) or ``"both"`` (signals on the
            predicted class, the grid adds a true-class column).
        task: ``"multiclass"`` (softmax), ``"binary"`` (one logit: the predicted side is
            explained on its probability), ``"multilabel"`` (a sigmoid per label) or
            ``"auto"``: one logit is binary, multi-hot labels multi-label, else multiclass
            (said once at fit start).
        top_k: multi-label: labels explained per probe (the most probable ones; with
            ``explain="label"`` the true ones first), one grid column each.
        compute_adcc: compute ADCC (one more explanation pass of the probes).
        target_block: block whose first norm output is masked (see ``ViTReciproCAM``).
        kernel: ``"gaussian"`` (3x3, paper) or ``"point"``.
        cmap: matplotlib colormap of the overlays.
        class_names: one name per class (default: the datamodule's ``class_names``).
        mean: normalisation mean of the images, one value or one per channel (default: the
            ViT's timm ``pretrained_cfg``, else ImageNet's, fitted to the images' channels).
        std: normalisation std of the images (same default).
        dataloader_idx: which validation dataloader the probes come from.
        batch_reader: function of a collated batch returning a dict (``image``, ``label``,
            ``mask``) or a tuple ``(images, labels[, masks])``; default: common layouts.
        max_batch: at most this many token sequences per pass, shared by the explainer, ADCC
            and the alarm (halved once when an evaluation runs out of memory).
        model_attr: dotted attribute path to the ViT, when it cannot be found.
        shortcut_alarm: the alarm (its settings: :class:`ShortcutAlarm`), or None for none;
            the callback keeps its own copy.
        hotspot_threshold: also warn when the hotspot ratio exceeds this (None: never).
        energy_threshold: also warn when the energy in the object masks falls below this
            (None: never; set it below your objects' area share).
        seed: seed of the probe sample (a local generator).
        log_images: log pictures (scalars are logged either way).
        report: at the end of fit, write ``vitrcam/report.html`` (one self-contained file:
            the last evaluation's verdict, pictures and scalars, every scalar over the steps)
            and ``report.json`` under the run's log directory.
        timeline_columns: at most this many evaluations, evenly spaced, per timeline row.
        flat_threshold: a map is "flat" when masking any window moves the predicted class's
            log-odds by less than this.
        channels: image channels shown: one index (grey) or three.

    Example:
        >>> cb = ViTReciproCAMCallback(num_images=4, every_n_steps=100,
        ...                            shortcut_alarm=ShortcutAlarm(min_drop=0.6))
        >>> cb.alarm.rule.min_drop, cb.timeline_images()
        (0.6, [])
    """

    def __init__(
        self,
        num_images: int = 16,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        explain: Literal["predicted", "label", "both"] = "predicted",
        task: Literal["auto", "multiclass", "binary", "multilabel"] = "auto",
        top_k: int = 3,
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
        # copied by the monitor, so the default instance is never shared between callbacks
        shortcut_alarm: ShortcutAlarm | None = ShortcutAlarm(),  # noqa: B008
        hotspot_threshold: float | None = None,
        energy_threshold: float | None = None,
        seed: int = 0,
        log_images: bool = True,
        report: bool = True,
        timeline_columns: int = 8,
        flat_threshold: float = FLAT_LOG_ODDS,
        channels: list[int] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
        options = Options.of(locals())
        self.every_n_epochs = every_n_epochs or None
        self.every_n_steps = every_n_steps or None
        self.dataloader_idx = dataloader_idx
        self._monitor = Monitor(options)

    # ------------------------------------------------------------------ state
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            num_images=self.num_images,
            seed=self.seed,
            dataloader_idx=self.dataloader_idx,
            explain=self.explain,
            target_block=self.target_block,
        )

    @property
    def max_batch(self) -> int:
        """The batch bound now in use (halved after an out-of-memory error)."""
        return self._monitor.max_batch

    @override
    def state_dict(self) -> dict[str, Any]:
        """The probe selection, the evaluation history (plain types and CPU tensors) and the
        alarm's memory."""
        return self._monitor.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the indices are used in on_fit_start, once the dataset can be read
        self._monitor.load_state_dict(state_dict)

    # ------------------------------------------------------------------ setup
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        check_strategy(trainer)
        monitor = self._monitor
        monitor.build(pl_module, pl_module.device, "pl_module")
        after_validation = self.every_n_steps is None and self.every_n_epochs is not None
        probes = probes_for_fit(
            trainer, pl_module, self.num_images, self.seed, monitor.loaded_indices,
            self.batch_reader, self.dataloader_idx, after_validation,
        )  # fmt: skip
        alarm_loader = None
        if self.alarm is not None and self.alarm.probes:
            alarm_loader = validation_loader(trainer, self.dataloader_idx)
        names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        # the trainer is the host: it has every name the core reads (lightning_vitrcam.hosts)
        monitor.attach(trainer, probes, alarm_loader, class_names=names)

    # ------------------------------------------------------------------ hooks
    def _due(self, trainer: Trainer, trigger: Literal["epoch", "step"]) -> bool:
        """The one place that decides whether a hook explains now."""
        if self._monitor.probes is None or trainer.sanity_checking:
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

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._due(trainer, "epoch"):
            self._evaluate(trainer, pl_module, via_module_log=True)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self._due(trainer, "step"):
            self._evaluate(trainer, pl_module, via_module_log=True)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._monitor.probes is None:
            return
        # self.log is not allowed here: the loggers get the final values directly
        self._evaluate(trainer, pl_module, via_module_log=False)
        self._monitor.finish(trainer, trainer.global_step, per_step=self.every_n_steps is not None)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # keep the probes for timeline_images() but release the device memory
        self._monitor.release()

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, via_module_log: bool) -> None:
        result = self._monitor.evaluate(trainer, trainer.global_step, trainer.current_epoch)
        if result is None or not via_module_log:
            return
        # logger=False: Lightning would forward step-level values only every
        # log_every_n_steps; the monitor gave the loggers every evaluation. The values are the
        # same on every rank, so sync_dist's mean leaves them as they are; it keeps Lightning
        # from warning about unsynced epoch-level values under DDP.
        for key, value in result.scalars.items():
            pl_module.log(key, value, logger=False, sync_dist=True)

    def timeline_images(self) -> list[torch.Tensor]:
        """One ``uint8 [3, H, W]`` picture per probe image: its overlays across evaluations
        (at most ``timeline_columns``, evenly spaced, first and last included); empty before
        the first evaluation."""
        return self._monitor.timeline_images(per_step=self.every_n_steps is not None)
