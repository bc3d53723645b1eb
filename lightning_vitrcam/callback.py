"""A Lightning callback that watches what a Vision Transformer looks at while it trains.

The callback keeps Lightning's hooks, the schedule and its state; the work flows one way
through the stages: probes (:mod:`~lightning_vitrcam.probes`) -> evaluation (explainer, ADCC,
signals, the shortcut alarm: :mod:`~lightning_vitrcam.evaluation`) -> pictures
(:mod:`~lightning_vitrcam.render`) -> loggers (:mod:`~lightning_vitrcam.loggers`).

Example:
    >>> import lightning as L
    >>> from lightning_vitrcam import ViTReciproCAMCallback
    >>> callback = ViTReciproCAMCallback(num_images=8, every_n_epochs=2, explain="both")
    >>> trainer = L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_vitrcam._warnings import warn
from lightning_vitrcam.adapters import find_vit
from lightning_vitrcam.alarm_probes import AlarmProbes
from lightning_vitrcam.evaluation import Evaluation, EvaluationSkipped
from lightning_vitrcam.explainer import ViTReciproCAM
from lightning_vitrcam.history import History
from lightning_vitrcam.metrics import FLAT_LOG_ODDS
from lightning_vitrcam.normalization import resolve_mean_std
from lightning_vitrcam.probes import Probes, probes_for_fit, validation_loader
from lightning_vitrcam.render import Style
from lightning_vitrcam.reporting import ExplanationSkippedWarning, Reporter
from lightning_vitrcam.sharding import check_strategy
from lightning_vitrcam.shortcut import PossibleShortcutWarning, ShortcutAlarm
from lightning_vitrcam.tasks import explained_names

__all__ = ["ExplanationSkippedWarning", "PossibleShortcutWarning", "ViTReciproCAMCallback"]


class ViTReciproCAMCallback(Callback):
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
        # copied below, so the default instance is never shared between callbacks
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
        for name, value in (
            ("num_images", num_images),
            ("timeline_columns", timeline_columns),
            ("max_batch", max_batch),
            ("top_k", top_k),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
        for name, value, allowed in (
            ("explain", explain, ("predicted", "label", "both")),
            ("task", task, ("auto", "multiclass", "binary", "multilabel")),
        ):
            if value not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
                )
        if batch_reader is not None and not callable(batch_reader):
            raise ValueError(f"batch_reader must be callable, got {batch_reader!r}")
        if shortcut_alarm is not None and not isinstance(shortcut_alarm, ShortcutAlarm):
            raise ValueError(
                f"shortcut_alarm must be a ShortcutAlarm or None, got {shortcut_alarm!r}"
            )
        self.num_images, self.seed, self.dataloader_idx = num_images, seed, dataloader_idx
        self.every_n_epochs = every_n_epochs or None
        self.every_n_steps = every_n_steps or None
        self.explain, self.compute_adcc = explain, compute_adcc
        self.task, self.top_k = task, top_k
        self.target_block, self.kernel = target_block, kernel
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self.batch_reader, self.model_attr = batch_reader, model_attr
        # a copy: the default instance (and one the user passes twice) is never shared
        self._alarm = copy.deepcopy(shortcut_alarm)
        self.hotspot_threshold, self.energy_threshold = hotspot_threshold, energy_threshold
        self.log_images, self.timeline_columns = log_images, timeline_columns
        self.report = report
        self.flat_threshold = flat_threshold
        self._max_batch = max_batch

        self._evaluation: Evaluation | None = None
        self._probe: Probes | None = None
        self._reporter = Reporter(
            style=Style(cmap=cmap, channels=channels),
            hotspot_threshold=hotspot_threshold,
            energy_threshold=energy_threshold,
            log_images=log_images,
            flat_threshold=flat_threshold,
            target_block=target_block,
        )
        self._history = History()
        self._loaded_indices: list[int] | None = None
        self._alarm_probes: AlarmProbes | None = None
        self._loaded_alarm_probes: dict[str, Any] = {}

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
    def alarm(self) -> ShortcutAlarm | None:
        """The callback's shortcut alarm; its ``last_tests`` hold the last evaluation's
        evidence."""
        return self._alarm

    @property
    def explainer(self) -> ViTReciproCAM | None:
        """The explainer, once fit has started."""
        return None if self._evaluation is None else self._evaluation.cam

    @property
    def probes(self) -> Probes | None:
        """The probe images, labels and masks, once fit has started."""
        return self._probe

    @property
    def style(self) -> Style:
        """How pictures are drawn (normalisation resolved at fit start)."""
        return self._reporter.style

    @property
    def max_batch(self) -> int:
        """The batch bound now in use (halved after an out-of-memory error)."""
        return self._max_batch if self._evaluation is None else self._evaluation.max_batch

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per evaluation so far: ``epoch``, ``step``, ``maps`` (CPU), ``adcc``."""
        return self._history.state_dict()

    @override
    def state_dict(self) -> dict[str, Any]:
        """The probe selection, the evaluation history (plain types and CPU tensors) and the
        alarm's memory."""
        indices = None if self._probe is None else self._probe.indices
        alarm = None if self._alarm is None else self._alarm.state_dict()
        rotation = None if self._alarm_probes is None else self._alarm_probes.state_dict()
        return {
            "indices": indices,
            "history": self.history,
            "alarm": alarm,
            "alarm_probes": rotation,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the indices are used in on_fit_start, once the dataset can be read
        self._loaded_indices = state_dict.get("indices")
        self._history.load_state_dict(state_dict.get("history", []))
        if self._alarm is not None and state_dict.get("alarm"):
            self._alarm.load_state_dict(state_dict["alarm"])
        self._loaded_alarm_probes = state_dict.get("alarm_probes") or {}

    # ------------------------------------------------------------------ setup
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        check_strategy(trainer)
        name, vit = find_vit(pl_module, self.model_attr)
        try:
            self._evaluation = Evaluation(
                vit,
                target_block=self.target_block,
                kernel=self.kernel,
                explain=self.explain,
                draw_predicted=self.log_images,
                compute_adcc=self.compute_adcc,
                max_batch=self._max_batch,
                flat_threshold=self.flat_threshold,
                alarm=self._alarm,
                device=pl_module.device,
                top_k=self.top_k,
            )
        except ValueError as err:
            where = f"pl_module.{name}" if name else type(pl_module).__name__
            raise ValueError(
                f"ViTReciproCAMCallback cannot explain {where} ({type(vit).__name__}): {err}."
                " Point model_attr at the Vision Transformer to explain."
            ) from err
        named = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        if self.class_names is None and named is not None:
            # a datamodule that names its classes saves the user from repeating them
            self.class_names = [str(c) for c in named]
        after_validation = self.every_n_steps is None and self.every_n_epochs is not None
        self._probe = probes_for_fit(
            trainer, pl_module, self.num_images, self.seed, self._loaded_indices,
            self.batch_reader, self.dataloader_idx, after_validation,
        )  # fmt: skip
        if self._alarm is not None and self._alarm.probes:
            # the alarm's own probes, stratified by label (seeded apart from the pictures')
            self._alarm_probes = AlarmProbes(
                validation_loader(trainer, self.dataloader_idx), self._alarm.probes,
                self._alarm.per_class, self.seed + 1, reader=self.batch_reader,
            )  # fmt: skip
            self._alarm_probes.load_state_dict(self._loaded_alarm_probes)
        channels = self._probe.images.shape[1]
        mean, std = resolve_mean_std(vit, self.mean, self.std, channels=channels)
        self._reporter.style = self._reporter.style.but(mean=mean, std=std)
        task, why, width = self._evaluation.resolve_task(trainer, self._probe, self.task)
        self._reporter.class_names = explained_names(task, self.class_names, width)
        self._reporter.task = task
        rank_zero_info(
            f"ViTReciproCAMCallback: a {task.name} task ({why}); explaining"
            f" {task.explained(self.top_k, width)}. Set task= to change it."
        )
        grid = self._evaluation.check_setup(trainer, self._probe, self._reporter.class_names)
        if not self._history.fits((len(self._probe), *grid)):
            warn(
                "ViTReciproCAMCallback: the restored history does not match the probes"
                " (num_images or image size changed); starting a new history"
            )
            self._history.clear()

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
        if self._probe is None:
            return
        # self.log is not allowed here: the loggers get the final values directly
        self._evaluate(trainer, pl_module, via_module_log=False)
        if self.log_images and trainer.is_global_zero:
            self._reporter.timeline(trainer, self._probe, self.timeline_images())
        if self.report and trainer.is_global_zero:
            steps = self._history.scalars()
            self._reporter.write(trainer, lambda: self._reporter.report(trainer, steps))

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # keep the probes for timeline_images() but release the device memory
        if self._probe is not None:
            self._probe = self._probe.to(torch.device("cpu"))

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, via_module_log: bool) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        probe, evaluation = self._probe, self._evaluation
        if probe is None or evaluation is None or self._history.done(step):
            return
        previous = self._history.last
        draw = None
        if self._alarm_probes is not None and self._alarm is not None:
            rotation, alarm = self._alarm_probes, self._alarm
            draw = lambda: rotation.draw(alarm.focus)
        try:
            outcome = evaluation.run(
                trainer,
                probe,
                None if previous is None else previous.maps,
                None if previous is None else previous.adcc,
                draw,
            )
        except EvaluationSkipped as skip:  # every rank skips together
            warn(skip.message(epoch, step), category=ExplanationSkippedWarning)
            return
        self._history.add(epoch, step, outcome.primary.maps, outcome.values)
        scalars = {f"vitrcam/{k}": v for k, v in outcome.values.items()}
        if via_module_log:
            # logger=False: Lightning would forward step-level values only every
            # log_every_n_steps; the loggers get every evaluation below instead. The values
            # are the same on every rank, so sync_dist's mean leaves them as they are; it
            # keeps Lightning from warning about unsynced epoch-level values under DDP.
            for key, value in scalars.items():
                pl_module.log(key, value, logger=False, sync_dist=True)
        if trainer.is_global_zero:
            self._reporter.evaluation(trainer, outcome, probe, scalars, epoch, step)

    def timeline_images(self) -> list[torch.Tensor]:
        """One ``uint8 [3, H, W]`` picture per probe image: its overlays across evaluations
        (at most ``timeline_columns``, evenly spaced, first and last included); empty before
        the first evaluation."""
        if self._probe is None or not len(self._history):
            return []
        frames, labels = self._history.frames(per_step=self.every_n_steps is not None)
        return self._reporter.timeline_images(self._probe, frames, labels, self.timeline_columns)
