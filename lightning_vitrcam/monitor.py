"""The monitoring every entry point shares: probes, alarm probes, evaluation, history, output.

:class:`Monitor` is the one core behind the Lightning callback
(:class:`~lightning_vitrcam.ViTReciproCAMCallback`), the Hugging Face ``Trainer`` callback
(:class:`~lightning_vitrcam.hf.ViTReciproCAMTrainerCallback`) and plain PyTorch loops
(:class:`~lightning_vitrcam.ViTMonitor`). An entry point only knows its framework: when to
evaluate, where the probe images come from and what its host is (a Lightning ``Trainer`` or a
:class:`~lightning_vitrcam.hosts.ProcessHost`: :mod:`~lightning_vitrcam.hosts`). The core does
the rest, in the same order for all three:

1. :meth:`Monitor.build`: find the ViT in the model and build the explainer (a model that
   cannot be explained fails here, before any data is read);
2. :meth:`Monitor.attach`: the probes, the alarm's own probes, the normalisation, the task,
   and one probe explained as a dry run (labels that do not fit the head, images of the wrong
   size or channels, class names of the wrong length fail here, before the first evaluation);
3. :meth:`Monitor.evaluate`: one evaluation (:class:`~lightning_vitrcam.evaluation.
   Evaluation`) on every rank, recorded in the :class:`~lightning_vitrcam.history.History`,
   warned about and written by rank zero (:class:`~lightning_vitrcam.reporting.Reporter`);
   a failure costs one warning, never the run;
4. :meth:`Monitor.finish`: the timeline and ``vitrcam/report.html``.

Its state (:meth:`Monitor.state_dict`) is what every entry point saves for a resume.

Example:
    >>> monitor = Monitor(Options(num_images=4, shortcut_alarm=None), name="ViTMonitor")
    >>> monitor.options.num_images, monitor.history.records, monitor.timeline_images(True)
    (4, [], [])
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_vitrcam._warnings import warn
from lightning_vitrcam.adapters import find_vit
from lightning_vitrcam.alarm_probes import AlarmProbes
from lightning_vitrcam.evaluation import Evaluation, EvaluationSkipped
from lightning_vitrcam.history import History
from lightning_vitrcam.metrics import FLAT_LOG_ODDS
from lightning_vitrcam.normalization import resolve_mean_std
from lightning_vitrcam.probes import Probes
from lightning_vitrcam.render import Style
from lightning_vitrcam.reporting import CALLBACK, ExplanationSkippedWarning, Reporter
from lightning_vitrcam.shortcut import ShortcutAlarm
from lightning_vitrcam.tasks import explained_names

if TYPE_CHECKING:
    from lightning_vitrcam.explainer import ViTReciproCAM

__all__ = ["EvaluationResult", "Monitor", "Options", "SettingsView"]


@dataclass
class Options:
    """The settings every entry point shares, checked once (the Lightning callback's
    arguments of the same names say what each one does).

    Example:
        >>> Options(num_images=0)
        Traceback (most recent call last):
        ...
        ValueError: num_images must be a positive int, got 0
    """

    num_images: int = 16
    explain: Literal["predicted", "label", "both"] = "predicted"
    task: Literal["auto", "multiclass", "binary", "multilabel"] = "auto"
    top_k: int = 3
    compute_adcc: bool = True
    target_block: int = -1
    kernel: Literal["gaussian", "point"] = "gaussian"
    cmap: str = "inferno"
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    batch_reader: Callable[[Any], Any] | None = None
    max_batch: int = 128
    model_attr: str | None = None
    shortcut_alarm: ShortcutAlarm | None = field(default_factory=ShortcutAlarm)
    hotspot_threshold: float | None = None
    energy_threshold: float | None = None
    seed: int = 0
    log_images: bool = True
    report: bool = True
    timeline_columns: int = 8
    flat_threshold: float = FLAT_LOG_ODDS
    channels: list[int] | None = None

    @classmethod
    def of(cls, arguments: dict[str, Any]) -> Options:
        """The options among an entry point's ``arguments`` (its ``locals()``), by name."""
        return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls)})

    def __post_init__(self) -> None:
        for name in ("num_images", "timeline_columns", "max_batch", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, allowed in (
            ("explain", ("predicted", "label", "both")),
            ("task", ("auto", "multiclass", "binary", "multilabel")),
            ("kernel", ("gaussian", "point")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(map(repr, allowed))},"
                    f" got {getattr(self, name)!r}"
                )
        if self.batch_reader is not None and not callable(self.batch_reader):
            raise ValueError(f"batch_reader must be callable, got {self.batch_reader!r}")
        alarm = self.shortcut_alarm
        if alarm is not None and not isinstance(alarm, ShortcutAlarm):
            raise ValueError(f"shortcut_alarm must be a ShortcutAlarm or None, got {alarm!r}")
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
        if self.mean is not None:
            self.mean = [float(m) for m in self.mean]
        if self.std is not None:
            self.std = [float(s) for s in self.std]


#: the names of :class:`Options`, readable as attributes of every entry point
OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options))


class SettingsView:
    """What every entry point shows of its monitor (in ``self._monitor``): its settings (the
    :class:`Options`) as its own attributes (``callback.num_images``), and the alarm, the
    explainer, the probes, the drawing style and the history."""

    _monitor: Monitor

    @property
    def alarm(self) -> ShortcutAlarm | None:
        """The shortcut alarm; its ``last_tests`` hold the last evaluation's evidence."""
        return self._monitor.alarm

    @property
    def explainer(self) -> ViTReciproCAM | None:
        """The explainer, once the model is known (None before)."""
        evaluation = self._monitor.evaluation
        return None if evaluation is None else evaluation.cam

    @property
    def probes(self) -> Probes | None:
        """The probe images, labels and masks, once drawn (None before)."""
        return self._monitor.probes

    @property
    def style(self) -> Style:
        """How pictures are drawn (the normalisation resolved once the probes are drawn)."""
        return self._monitor.reporter.style

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per evaluation so far: ``step``, ``epoch``, ``maps`` (CPU), ``adcc``,
        ``values``."""
        return self._monitor.history.state_dict()

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails; __dict__ avoids recursing before __init__ ran
        monitor = self.__dict__.get("_monitor")
        if monitor is not None and name in OPTION_NAMES:
            return getattr(monitor.options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True)
class EvaluationResult:
    """What one evaluation found: the scalars as logged (``vitrcam/...``), the ``possible
    shortcut`` warning (None: nothing found) and, for an evaluation that failed and was
    skipped, why (then no scalars)."""

    step: int
    epoch: int | None
    scalars: dict[str, float]
    warning: str | None = None
    skipped: str | None = None


def _owned(err: Exception, name: str) -> ValueError:
    """``err`` as a ValueError that names the entry point the user called."""
    text = str(err)
    if text.startswith(CALLBACK):
        text = text[len(CALLBACK) :].lstrip(":")
    return ValueError(f"{name}: {text.strip()}" if not text.startswith(name) else text)


class Monitor:
    """The monitoring of one run (see the module docstring).

    Args:
        options: the settings.
        name: the entry point the messages name (``"ViTReciproCAMCallback"``, ...).
    """

    def __init__(self, options: Options, name: str = CALLBACK) -> None:
        self.options, self.name = options, name
        # a copy: the default instance (and one passed to two monitors) is never shared
        self.alarm = copy.deepcopy(options.shortcut_alarm)
        self.evaluation: Evaluation | None = None
        self.vit: nn.Module | None = None
        self.device = torch.device("cpu")
        self.probes: Probes | None = None
        self.alarm_probes: AlarmProbes | None = None
        self.reporter = Reporter(
            style=Style(cmap=options.cmap, channels=options.channels),
            hotspot_threshold=options.hotspot_threshold,
            energy_threshold=options.energy_threshold,
            log_images=options.log_images,
            flat_threshold=options.flat_threshold,
            target_block=options.target_block,
            name=name,
        )
        self.history = History()
        #: the probe indices a restored state asks for (used where the probes are drawn)
        self.loaded_indices: list[int] | None = None
        self._loaded_alarm_probes: dict[str, Any] = {}
        #: the result of the last evaluation that ran
        self.last_result: EvaluationResult | None = None

    @property
    def max_batch(self) -> int:
        """The batch bound now in use (halved after an out-of-memory error)."""
        if self.evaluation is None:
            return self.options.max_batch
        return self.evaluation.max_batch

    # ------------------------------------------------------------------ setup
    def build(self, module: nn.Module, device: torch.device | str, where: str) -> nn.Module:
        """Find the ViT in ``module`` (``where``: how the user calls it, e.g. ``pl_module``)
        and build the explainer on ``device``; returns the ViT. A ``ValueError`` says what to
        change when there is none or it cannot be explained."""
        opts = self.options
        try:
            name, vit = find_vit(module, opts.model_attr)
        except ValueError as err:
            raise _owned(err, self.name) from err
        self.device = torch.device(device)
        try:
            self.evaluation = Evaluation(
                vit,
                target_block=opts.target_block,
                kernel=opts.kernel,
                explain=opts.explain,
                draw_predicted=opts.log_images,
                compute_adcc=opts.compute_adcc,
                max_batch=opts.max_batch,
                flat_threshold=opts.flat_threshold,
                alarm=self.alarm,
                device=self.device,
                top_k=opts.top_k,
            )
        except ValueError as err:
            found = f"{where}.{name}" if name else type(module).__name__
            raise ValueError(
                f"{self.name} cannot explain {found} ({type(vit).__name__}): {err}."
                " Point model_attr at the Vision Transformer to explain."
            ) from err
        self.vit = vit
        return vit

    def attach(
        self,
        host: Any,
        probes: Probes,
        alarm_loader: Any = None,
        class_names: list[str] | None = None,
        mean: Any = None,
        std: Any = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """The probes (and ``alarm_loader``, the loader the alarm draws its own probes from)
        checked against the model on ``host``: one probe explained as a dry run. ``class_names``,
        ``mean`` and ``std`` are what the data says where the options say nothing; ``labels``
        every label of the data where they are known (the alarm's pool's are checked too).
        Every mismatch raises a ``ValueError`` here, before the first evaluation."""
        evaluation, opts = self.evaluation, self.options
        if evaluation is None:
            raise RuntimeError("Monitor.build() must run before Monitor.attach()")
        if opts.class_names is None and class_names is not None:
            # data that names its classes saves the user from repeating them
            opts.class_names = [str(c) for c in class_names]
        probes = probes.to(self.device)
        try:
            if self.alarm is not None and self.alarm.probes and alarm_loader is not None:
                # the alarm's own probes, stratified by label (seeded apart from the pictures')
                self.alarm_probes = AlarmProbes(
                    alarm_loader, self.alarm.probes, self.alarm.per_class, opts.seed + 1,
                    reader=opts.batch_reader,
                )  # fmt: skip
                self.alarm_probes.load_state_dict(self._loaded_alarm_probes)
            channels = probes.images.shape[1]
            mean, std = resolve_mean_std(
                self.vit, opts.mean or mean, opts.std or std, channels=channels
            )
            self.reporter.style = self.reporter.style.but(mean=mean, std=std)
            task, why, width = self._dry_run(host, probes)
            self.reporter.class_names = explained_names(task, opts.class_names, width)
            self.reporter.task = task
            grid = evaluation.check_setup(host, probes, self.reporter.class_names)
            pool = None if self.alarm_probes is None else self.alarm_probes.labels
            for known in (labels, pool):
                if known is not None:  # a bad label outside the probes fails now, not later
                    task.labels(torch.as_tensor(known), width)
        except ValueError as err:
            raise _owned(err, self.name) from err
        rank_zero_info(
            f"{self.name}: a {task.name} task ({why}); explaining"
            f" {task.explained(opts.top_k, width)}. Set task= to change it."
        )
        if not self.history.fits((len(probes), *grid)):
            warn(
                f"{self.name}: the restored history does not match the probes"
                " (num_images or image size changed); starting a new history"
            )
            self.history.clear()
        self.probes = probes

    def _dry_run(self, host: Any, probes: Probes) -> Any:
        assert self.evaluation is not None
        try:
            return self.evaluation.resolve_task(host, probes, self.options.task)
        except (RuntimeError, AssertionError, TypeError, IndexError) as err:
            # the model's own failure on the probes: most often their size or channels
            raise ValueError(
                f"the model cannot run on the probe images ({tuple(probes.images.shape)},"
                f" {probes.images.dtype}): {type(err).__name__}: {err}; check that the images"
                " have the size and channels the model takes"
            ) from err

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, host: Any, step: int, epoch: int | None = None) -> EvaluationResult | None:
        """One evaluation on every rank of ``host``; rank zero warns and writes. None when
        there is nothing to do (not attached, or this step was evaluated already)."""
        probe, evaluation = self.probes, self.evaluation
        if probe is None or evaluation is None or self.history.done(step):
            return None
        previous = self.history.last
        draw = None
        if self.alarm_probes is not None and self.alarm is not None:
            rotation, alarm = self.alarm_probes, self.alarm
            draw = lambda: rotation.draw(alarm.focus)
        try:
            outcome = evaluation.run(
                host,
                probe,
                None if previous is None else previous.maps,
                None if previous is None else previous.adcc,
                draw,
            )
        except EvaluationSkipped as skip:  # every rank skips together
            message = skip.message(epoch, step, self.name)
            warn(message, category=ExplanationSkippedWarning)
            return EvaluationResult(step, epoch, {}, None, message)
        self.history.add(epoch, step, outcome.primary.maps, outcome.values)
        scalars = {f"vitrcam/{k}": v for k, v in outcome.values.items()}
        message = self.reporter.message(outcome, epoch, step)
        if host.is_global_zero:
            self.reporter.evaluation(host, outcome, probe, scalars, epoch, step, message)
        self.last_result = EvaluationResult(step, epoch, scalars, message)
        return self.last_result

    def finish(self, host: Any, step: int, per_step: bool = True) -> list[Path]:
        """Rank zero: the timeline picture and (with ``report``) ``vitrcam/report.html`` and
        ``report.json``; returns the report files written locally."""
        if self.probes is None or not host.is_global_zero:
            return []
        if self.options.log_images:
            self.reporter.timeline(host, self.probes, self.timeline_images(per_step), step)
        if not self.options.report:
            return []
        steps = self.history.scalars()
        return self.reporter.write(host, lambda: self.reporter.report(host, steps)) or []

    def timeline_images(self, per_step: bool) -> list[torch.Tensor]:
        """One ``uint8 [3, H, W]`` picture per probe: its overlays across evaluations (at
        most ``timeline_columns``, evenly spaced, first and last included), labelled by step
        (``per_step``) or epoch; empty before the first evaluation."""
        if self.probes is None or not len(self.history):
            return []
        frames, labels = self.history.frames(per_step=per_step)
        columns = self.options.timeline_columns
        return self.reporter.timeline_images(self.probes, frames, labels, columns)

    def release(self) -> None:
        """Keep the probes (for :meth:`timeline_images`) but free the device memory."""
        if self.probes is not None:
            self.probes = self.probes.to(torch.device("cpu"))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The probe selection, the evaluation history (plain types and CPU tensors), the
        alarm's memory and its probes' rotation."""
        indices = None if self.probes is None else self.probes.indices
        alarm = None if self.alarm is None else self.alarm.state_dict()
        rotation = None if self.alarm_probes is None else self.alarm_probes.state_dict()
        return {
            "indices": indices,
            "history": self.history.state_dict(),
            "alarm": alarm,
            "alarm_probes": rotation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state: before :meth:`attach` (the entry point draws
        the probes at ``loaded_indices``) or after it (a history of other probes is dropped
        with a warning)."""
        self.loaded_indices = state.get("indices")
        self.history.load_state_dict(state.get("history", []))
        if self.alarm is not None and state.get("alarm"):
            self.alarm.load_state_dict(state["alarm"])
        self._loaded_alarm_probes = state.get("alarm_probes") or {}
        if self.alarm_probes is not None:
            self.alarm_probes.load_state_dict(self._loaded_alarm_probes)
        probes = self.probes
        if probes is not None and self.loaded_indices not in (None, probes.indices):
            warn(
                f"{self.name}: the restored state was recorded on other probe images (another"
                " seed, num_images or data); starting a new history"
            )
            self.history.clear()
