"""The monitoring for the Hugging Face ``transformers.Trainer``.

:class:`ViTReciproCAMTrainerCallback` is the Lightning callback for a ``Trainer``: the same
core (:class:`~lightning_vitrcam.monitor.Monitor`), the same scalars, pictures, alarm, evidence
picture and end-of-training report. It needs no argument:

* at ``on_train_begin`` it finds the ViT in the model and builds the explainer (a model that
  cannot be explained, a run that never evaluates, FSDP or DeepSpeed fail here);
* at the first evaluation it draws its probes from the evaluation dataset (the dataloader the
  Trainer hands to ``on_evaluate``; seeded, no RNG moved), reads the class names from
  ``model.config.id2label`` and the normalisation from the image processor given as
  ``processing_class``, and checks the probes against the model (labels that do not fit the
  head, images of the wrong size fail there: ``eval_on_start=True`` moves that before the
  first step);
* after each evaluation (every ``every_n_evaluations``-th) it explains them on the training
  device, in eval mode with every flag, the gradients and the global RNGs restored, under the
  run's ``bf16``/``fp16`` autocast; under DDP each process explains its share;
* at ``on_train_end`` it evaluates once more, logs the timeline and writes
  ``<output_dir>/vitrcam/report.html``.

Scalars and pictures go to the integrations in ``args.report_to`` that take images
(:func:`register_integration`: TensorBoard into the Trainer's own log folder, W&B into the
active run on the ``train/global_step`` axis, MLflow into the run as metrics and PNG
artifacts), from the main process only; with none of those, PNG files and
``vitrcam/metrics.jsonl`` under ``output_dir``. The scalars are also added to the evaluation's
metrics as ``eval_vitrcam/...`` (``metric_for_best_model="vitrcam/adcc"`` works). The
callback's state is saved beside each checkpoint (``vitrcam_state.pt``) and read back when
training resumes from it.

Importing this module imports ``transformers``; the Trainer also needs ``accelerate``
(``pip install "lightning-vitrcam[transformers]"`` installs both).

Example:
    >>> callback = ViTReciproCAMTrainerCallback(num_images=8)  # Trainer(callbacks=[callback])
    >>> callback.num_images, callback.every_n_evaluations
    (8, 1)
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError(
        "lightning_vitrcam.hf needs transformers (and accelerate, which its Trainer needs):"
        ' pip install "lightning-vitrcam[transformers]"'
    ) from err

from lightning_vitrcam._warnings import warn
from lightning_vitrcam.hosts import ForwardPrecision, ProcessHost, distributed_collectives
from lightning_vitrcam.loggers import (
    FilesOnlyLogger,
    MlflowRunLogger,
    SummaryWriterLogger,
    WandbRunLogger,
)
from lightning_vitrcam.metrics import FLAT_LOG_ODDS
from lightning_vitrcam.monitor import Monitor, Options, SettingsView
from lightning_vitrcam.probes import sample_probes
from lightning_vitrcam.shortcut import ShortcutAlarm

__all__ = [
    "STATE_FILE",
    "ViTReciproCAMTrainerCallback",
    "processor_mean_std",
    "register_integration",
    "config_class_names",
]

NAME = "ViTReciproCAMTrainerCallback"
#: the callback's state, saved in each checkpoint folder
STATE_FILE = "vitrcam_state.pt"

# --------------------------------------------------------------------------- integrations
Sink = Callable[[TrainingArguments, Sequence[Any]], Any]
"""``sink(args, trainer_callbacks)``: a logger (Lightning's logger API) for one ``report_to``
integration; ``trainer_callbacks`` are the Trainer's callbacks, where they could be found."""
_SINKS: dict[str, Sink] = {}


def register_integration(name: str) -> Callable[[Sink], Sink]:
    """Register the logger the callback writes to when ``name`` is in ``args.report_to``.

    Example:
        >>> @register_integration("my_tracker")
        ... def my_tracker(args, trainer_callbacks):
        ...     return MyTrackerLogger(args.output_dir)  # log_metrics(metrics, step), ...
    """

    def add(sink: Sink) -> Sink:
        _SINKS[name] = sink
        return sink

    return add


@register_integration("tensorboard")
def _tensorboard(args: TrainingArguments, callbacks: Sequence[Any]) -> SummaryWriterLogger:
    # the Trainer's TensorBoardCallback chose (and made) its log folder at on_train_begin,
    # before this callback's; event files of a second writer in one folder are one run
    found = [getattr(c, "logging_dir", None) for c in callbacks]
    folder = next((f for f in found if f), None)
    folder = folder or os.getenv("TENSORBOARD_LOGGING_DIR")
    folder = folder or os.path.join(args.output_dir or ".", "runs", "vitrcam")
    return SummaryWriterLogger(folder, files_dir=args.output_dir)


@register_integration("wandb")
def _wandb(args: TrainingArguments, callbacks: Sequence[Any]) -> WandbRunLogger:
    # the Trainer's WandbCallback logs every record against train/global_step
    return WandbRunLogger(step_key="train/global_step")


@register_integration("mlflow")
def _mlflow(args: TrainingArguments, callbacks: Sequence[Any]) -> MlflowRunLogger:
    logger = MlflowRunLogger()
    try:
        # remembered now: the Trainer's MLflowCallback ends the run at on_train_end, before
        # this callback writes the timeline and the report
        logger.run_id  # noqa: B018
    except RuntimeError:
        pass  # no run yet: looked up again at the first write
    return logger


def _trainer_callbacks() -> list[Any]:
    """The Trainer's callbacks (the integrations' own loggers among them).

    A ``TrainerCallback`` is handed neither the Trainer nor its ``CallbackHandler``; the
    handler is the ``self`` of the frame that calls the hook. Found nowhere (a hook called by
    hand, another transformers): empty, and the integrations' defaults are used."""
    from transformers.trainer_callback import CallbackHandler

    frame = inspect.currentframe()
    try:
        for _ in range(8):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if isinstance(owner, CallbackHandler):
                return list(owner.callbacks)
    finally:
        del frame
    return []


def _resumed_from() -> str | None:
    """The checkpoint folder ``trainer.train(resume_from_checkpoint=...)`` resumes from (the
    Trainer resolves ``True`` to the last checkpoint), read from the training loop's frame:
    ``args.resume_from_checkpoint`` is not what ``train()`` was given. None where not found."""
    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        for _ in range(8):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            if isinstance(frame.f_locals.get("self"), Trainer):
                found = frame.f_locals.get("resume_from_checkpoint")
                return os.fspath(found) if isinstance(found, str | os.PathLike) else None
    finally:
        del frame
    return None


# --------------------------------------------------------------------------- what the model says
def config_class_names(model: Any) -> list[str] | None:
    """The class names of an HF model's ``config.id2label`` (None for the ``LABEL_i``
    placeholders a config gets when nobody named the classes).

    Example:
        >>> from types import SimpleNamespace as Namespace
        >>> config_class_names(Namespace(config=Namespace(id2label={1: "dog", 0: "cat"})))
        ['cat', 'dog']
    """
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not isinstance(id2label, dict) or not id2label:
        return None
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return None if names == [f"LABEL_{i}" for i in range(len(names))] else names


def processor_mean_std(processor: Any) -> tuple[list[float] | None, list[float] | None]:
    """The normalisation an image processor applies (``image_mean``/``image_std``; a
    processor that does not normalise: 0 and 1), or ``(None, None)``.

    Example:
        >>> from types import SimpleNamespace
        >>> processor_mean_std(SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3))
        ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    """
    for obj in (processor, getattr(processor, "image_processor", None)):
        if obj is None:
            continue
        if getattr(obj, "do_normalize", True) is False:
            return [0.0], [1.0]
        mean, std = getattr(obj, "image_mean", None), getattr(obj, "image_std", None)
        if mean is not None and std is not None:
            return [float(m) for m in mean], [float(s) for s in std]
    return None, None


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _check_run(args: TrainingArguments) -> None:
    """A run the callback cannot work in fails at train start, saying what to change."""
    if args.eval_strategy == "no":
        raise ValueError(
            f"{NAME} explains after each evaluation, but this run never evaluates"
            " (eval_strategy='no'): set TrainingArguments(eval_strategy='steps' or 'epoch')"
            " and pass eval_dataset= to the Trainer"
        )
    sharded = [name for name in ("fsdp", "deepspeed") if getattr(args, name, None)]
    if sharded:
        raise ValueError(
            f"{NAME} does not support {sharded[0]}: the explainer runs the ViT as a whole"
            " model, whose parameters must be whole on every process. Use DDP, or explain"
            " checkpoints afterwards with `lightning-vitrcam audit`."
        )


class ViTReciproCAMTrainerCallback(SettingsView, TrainerCallback):
    """Explain a fixed set of evaluation images with ViT-ReciproCAM while a
    ``transformers.Trainer`` trains a ViT (see the module docstring for what it does when).

    Args:
        every_n_evaluations: explain after every n-th evaluation (and at the end of training).
        num_images, explain, task, top_k, compute_adcc, target_block, kernel, cmap,
        class_names, mean, std, batch_reader, max_batch, model_attr, shortcut_alarm,
        hotspot_threshold, energy_threshold, seed, log_images, report, timeline_columns,
        flat_threshold, channels: as :class:`~lightning_vitrcam.ViTReciproCAMCallback`'s;
            ``class_names`` defaults to the model's ``config.id2label``, ``mean``/``std`` to
            the ``processing_class``'s ``image_mean``/``image_std``.

    Example:
        >>> ViTReciproCAMTrainerCallback(every_n_evaluations=2, explain="both").explain
        'both'
    """

    def __init__(
        self,
        num_images: int = 16,
        every_n_evaluations: int = 1,
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
        batch_reader: Callable[[Any], Any] | None = None,
        max_batch: int = 128,
        model_attr: str | None = None,
        # copied by the monitor, so the default instance is never shared
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
        if not isinstance(every_n_evaluations, int) or every_n_evaluations < 1:
            raise ValueError(
                f"every_n_evaluations must be a positive int, got {every_n_evaluations!r}"
            )
        options = Options.of(locals())
        self.every_n_evaluations = every_n_evaluations
        self._options = copy.deepcopy(options)  # as given, for a new run (see _restart)
        self._monitor = Monitor(options, name=NAME)
        self._host: ProcessHost | None = None
        self._model: nn.Module | None = None
        self._evaluations = 0

    # ------------------------------------------------------------------ properties
    @property
    def host(self) -> ProcessHost | None:
        """Where the callback writes (its loggers), once training has started."""
        return self._host

    def timeline_images(self) -> list[torch.Tensor]:
        """One ``uint8 [3, H, W]`` picture per probe: its overlays across evaluations."""
        return self._monitor.timeline_images(per_step=True)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (saved in each checkpoint folder as :data:`STATE_FILE`)."""
        return self._monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._monitor.load_state_dict(state)

    # ------------------------------------------------------------------ setup
    def _restart(self) -> None:
        """Forget the last run: another ``train()`` from step 0 (``model_init``, a
        hyperparameter trial) is a new run, whose steps would otherwise count as done."""
        if self._host is not None:
            self._host.close()
        self._monitor = Monitor(copy.deepcopy(self._options), name=NAME)
        self._host, self._model, self._evaluations = None, None, 0

    def _setup(self, args: TrainingArguments, model: nn.Module | None) -> ProcessHost:
        if model is None:
            raise ValueError(f"{NAME} needs the Trainer's model; it was handed none")
        if self._host is not None and model is self._model:
            return self._host
        # a new model (another train() call, a hyperparameter trial): new explainer, probes
        self._model, self._monitor.probes = model, None
        vit = self._monitor.build(model, _device(model), "model")
        strategy = distributed_collectives()
        if strategy.world_size != args.world_size:
            raise ValueError(
                f"{NAME}: the Trainer runs {args.world_size} processes but torch.distributed"
                f" joins {strategy.world_size}; the callback explains on one process or under"
                " torch.distributed (DDP)"
            )
        autocast = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
        loggers: list[Any] = []
        if strategy.global_rank == 0:
            callbacks = _trainer_callbacks()
            sinks = [_SINKS[name](args, callbacks) for name in args.report_to if name in _SINKS]
            # the report also lands in output_dir whatever the integrations keep
            loggers = sinks + [FilesOnlyLogger(args.output_dir)] if sinks else []
        self._host = ProcessHost(
            strategy=strategy,
            precision_plugin=ForwardPrecision(autocast, self._monitor.device.type, vit),
            loggers=loggers,
            default_root_dir=args.output_dir or ".",
        )
        return self._host

    def _attach(self, host: ProcessHost, loader: Any, model: Any, processor: Any) -> None:
        if loader is None:
            raise ValueError(
                f"{NAME} draws its probes from the evaluation data, but the Trainer handed no"
                " eval_dataloader to on_evaluate; pass eval_dataset= to the Trainer"
            )
        opts = self._monitor.options
        try:
            probes = sample_probes(loader, opts.num_images, opts.seed,
                                   self._monitor.loaded_indices, opts.batch_reader)  # fmt: skip
        except ValueError as err:
            raise ValueError(f"{NAME}: {err}") from err
        if len(probes) < opts.num_images:
            warn(
                f"{NAME}: the evaluation dataset has {len(probes)} images, fewer than"
                f" num_images={opts.num_images}; all of them are used"
            )
        mean, std = processor_mean_std(processor)
        names = config_class_names(model)
        self._monitor.attach(host, probes, loader, class_names=names, mean=mean, std=std)

    def _restore(self, args: TrainingArguments, state: TrainerState) -> None:
        """A run resumed from a checkpoint picks up the state saved beside it."""
        if state.global_step == 0:
            return
        places = [p for p in (_resumed_from(), args.resume_from_checkpoint) if isinstance(p, str)]
        places.append(os.path.join(args.output_dir or ".", f"checkpoint-{state.global_step}"))
        for place in places:
            path = Path(place, STATE_FILE)
            if path.is_file():
                self._monitor.load_state_dict(torch.load(path, weights_only=True))
                return
        warn(
            f"{NAME}: training resumes at step {state.global_step} but no {STATE_FILE} was"
            f" found in {' or '.join(places)}; the history (drift, timeline, report) starts anew"
        )

    # ------------------------------------------------------------------ hooks
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        _check_run(args)
        if state.global_step == 0 and len(self._monitor.history):
            self._restart()
        self._setup(args, model)
        self._restore(args, state)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        eval_dataloader: Any = None,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        host = self._setup(args, model)  # also for trainer.evaluate() without train()
        if self._monitor.probes is None:
            self._attach(host, eval_dataloader, model, kwargs.get("processing_class"))
        result = self._monitor.last_result
        # one evaluation per step, whatever the number of evaluation datasets
        if not self._monitor.history.done(state.global_step):
            self._evaluations += 1
            due = self._evaluations % self.every_n_evaluations == 0
            result = self._monitor.evaluate(host, state.global_step) if due else None
        if result is not None and result.step == state.global_step and metrics is not None:
            # monitorable: metric_for_best_model="vitrcam/adcc" reads "eval_vitrcam/adcc"
            metrics.update({f"eval_{k}": v for k, v in result.scalars.items()})

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        folder = Path(args.output_dir or ".", f"checkpoint-{state.global_step}")
        if args.should_save and folder.is_dir():
            torch.save(self._monitor.state_dict(), folder / STATE_FILE)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        host = self._host
        if host is None or self._monitor.probes is None:
            return
        self._monitor.evaluate(host, state.global_step)
        self._monitor.finish(host, state.global_step, per_step=True)
        host.close()
