"""The monitoring for plain PyTorch loops (timm's ``train.py``, hand-written loops).

:class:`ViTMonitor` is the Lightning callback without Lightning: give it the model and
validation images once, call :meth:`ViTMonitor.evaluate` whenever you want an evaluation and
:meth:`ViTMonitor.close` at the end. Each evaluation is the callback's (same core:
:class:`~lightning_vitrcam.monitor.Monitor`), with the model's training flags and the global
RNGs restored, and writes what the callback writes: TensorBoard event files under ``log_dir``
and/or whatever ``loggers`` are given (Lightning's loggers work without a Trainer, a
``SummaryWriter``, :class:`~lightning_vitrcam.loggers.WandbRunLogger`,
:class:`~lightning_vitrcam.loggers.MlflowRunLogger`).

Example:
    >>> import timm, torch
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
    ...                         num_classes=3, depth=1, embed_dim=32, num_heads=2)
    >>> monitor = ViTMonitor(vit, torch.randn(6, 3, 32, 32), torch.arange(6) % 3,
    ...                      num_images=2, shortcut_alarm=None, compute_adcc=False)
    >>> result = monitor.evaluate(step=10)
    >>> result.step, "vitrcam/hotspot_ratio" in result.scalars, vit.training
    (10, True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_vitrcam._warnings import warn
from lightning_vitrcam.hosts import ForwardPrecision, ProcessHost, distributed_collectives
from lightning_vitrcam.loggers import FilesOnlyLogger, SummaryWriterLogger
from lightning_vitrcam.metrics import FLAT_LOG_ODDS
from lightning_vitrcam.monitor import EvaluationResult, Monitor, Options, SettingsView
from lightning_vitrcam.probes import Probes, sample_probes
from lightning_vitrcam.shortcut import ShortcutAlarm

__all__ = ["ViTMonitor"]

NAME = "ViTMonitor"


class _Tensors(Dataset):
    """Images (with labels and masks) as a dataset of dicts; ``labels`` is the label
    metadata the alarm's stratified probes read without reading any image."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor | None, masks: torch.Tensor | None
    ) -> None:
        self.images, self.labels, self.masks = images, labels, masks

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i]}
        if self.labels is not None:
            item["label"] = self.labels[i]
        if self.masks is not None:
            item["mask"] = self.masks[i]
        return item


def _checked_tensors(
    images: torch.Tensor, labels: Any, masks: Any
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if images.dim() != 4 or not images.is_floating_point() or images.shape[0] == 0:
        raise ValueError(
            f"{NAME} needs the validation images as a float [N, C, H, W] tensor (normalised as"
            f" the model takes them), got {images.dtype} {tuple(images.shape)}"
        )
    n = images.shape[0]
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape[:1] != (n,) or labels.dim() > 2:
            raise ValueError(
                f"{NAME}: labels must be [N={n}] class indices (or 0/1) or [N, K] multi-hot, one"
                f" row per image, got {tuple(labels.shape)}"
            )
    if masks is not None:
        masks = torch.as_tensor(masks)
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3 or masks.shape[0] != n:
            raise ValueError(
                f"{NAME}: masks must be [N={n}, H, W] object masks, got {tuple(masks.shape)}"
            )
    return images, labels, masks


def _as_logger(logger: Any) -> Any:
    """A SummaryWriter (torch's or tensorboardX's) gets Lightning's logger API; anything else
    is taken as a logger."""
    if not hasattr(logger, "log_metrics") and callable(getattr(logger, "get_logdir", None)):
        return SummaryWriterLogger(writer=logger)
    if not callable(getattr(logger, "log_metrics", None)):
        raise ValueError(
            f"{NAME}: loggers must be loggers with log_metrics (Lightning's, WandbRunLogger,"
            f" MlflowRunLogger) or SummaryWriters, got {type(logger).__name__}"
        )
    return logger


class ViTMonitor(SettingsView):
    """Explain a fixed set of validation images with ViT-ReciproCAM from a plain PyTorch loop.

    A seeded sample of ``num_images`` of ``images`` (the probes) is explained at every
    :meth:`evaluate` on the model's device, with no gradients, the model's training flags and
    the global RNGs restored: a loop with the monitor trains the same weights as without it.
    Scalars go under ``vitrcam/`` and pictures (``vitrcam/saliency_grid``,
    ``vitrcam/mean_saliency``, the alarm's ``vitrcam/shortcut_evidence``, at :meth:`close`
    ``vitrcam/timeline``) to TensorBoard under ``log_dir`` and to ``loggers``; :meth:`close`
    writes ``vitrcam/report.html`` (and ``report.json``) under ``log_dir`` (and to each
    logger: MLflow as run artifacts). Without ``log_dir`` and ``loggers`` nothing is written:
    :meth:`evaluate` returns what it found and warns. Every problem with the input raises a
    ``ValueError`` here, before training; after that a failing evaluation costs one warning.

    Under ``torch.distributed`` (e.g. ``torchrun``; build the monitor on every process with
    the same images) each process explains its share of the probes and only rank zero writes.

    Args:
        model: the model (or a module holding it; DDP and ``torch.compile`` wrappers are
            removed); ``model_attr`` names the ViT where there are several.
        images: validation images: a float ``[N, C, H, W]`` tensor normalised as the model
            takes them, a ``DataLoader`` or a ``Dataset`` (batches read as the callback reads
            them: tuples, dicts with ``image``/``pixel_values``/``label``/``labels``/``mask``,
            or ``batch_reader``). The alarm draws its own probes from all of them.
        labels: with a tensor of images: ``[N]`` class indices (or 0/1) or ``[N, K]``
            multi-hot.
        log_dir: TensorBoard event files and the report go here.
        masks: with a tensor of images: ``[N, H, W]`` object masks (localisation signals and
            the background test).
        loggers: more loggers, each gets what TensorBoard gets: Lightning's loggers (no
            Trainer needed), a ``SummaryWriter``,
            :class:`~lightning_vitrcam.loggers.WandbRunLogger` (the active W&B run),
            :class:`~lightning_vitrcam.loggers.MlflowRunLogger` (an MLflow run).
        autocast: explain under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``),
            as a mixed-precision loop runs its model; None: as the model is.
        num_images, explain, task, top_k, compute_adcc, target_block, kernel, cmap,
        class_names, mean, std, batch_reader, max_batch, model_attr, shortcut_alarm,
        hotspot_threshold, energy_threshold, seed, log_images, report, timeline_columns,
        flat_threshold, channels: as :class:`~lightning_vitrcam.ViTReciproCAMCallback`'s.

    Example:
        >>> import tempfile, timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
        ...                         num_classes=3, depth=1, embed_dim=32, num_heads=2)
        >>> with ViTMonitor(vit, torch.randn(4, 3, 32, 32), log_dir=tempfile.mkdtemp(),
        ...                 num_images=2, shortcut_alarm=None, log_images=False) as monitor:
        ...     found = monitor.evaluate(step=1)
        >>> monitor.report_path.name, found.warning
        ('report.html', None)
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor | DataLoader | Dataset,
        labels: torch.Tensor | Sequence[int] | None = None,
        log_dir: str | Path | None = None,
        *,
        masks: torch.Tensor | None = None,
        loggers: Sequence[Any] = (),
        autocast: torch.dtype | None = None,
        num_images: int = 16,
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
        options = Options.of(locals())
        self._monitor = monitor = Monitor(options, name=NAME)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{NAME}: model must be a torch.nn.Module, got {type(model)}")
        vit = monitor.build(model, _device_of(model), "model")
        self.log_dir = None if log_dir is None else Path(log_dir)
        sinks = [] if log_dir is None else [SummaryWriterLogger(log_dir)]
        sinks += [_as_logger(x) for x in loggers]
        self._writes = bool(sinks)
        self.host = ProcessHost(
            strategy=distributed_collectives(),
            precision_plugin=ForwardPrecision(autocast, monitor.device.type, vit),
            # nowhere to write: a logger that keeps nothing (with no logger at all the host
            # would write PNG and JSONL files into the working directory)
            loggers=sinks or [FilesOnlyLogger(None)],
            default_root_dir=log_dir if log_dir is not None else ".",
        )
        self._loader, all_labels = self._source(images, labels, masks, max_batch)
        probes = self._draw(None)
        monitor.attach(self.host, probes, self._loader, labels=all_labels)
        #: the report written by the last :meth:`close` (None before, or when none was)
        self.report_path: Path | None = None

    def _source(
        self, images: Any, labels: Any, masks: Any, batch: int
    ) -> tuple[DataLoader, torch.Tensor | None]:
        if isinstance(images, torch.Tensor):
            images, labels, masks = _checked_tensors(images, labels, masks)
            return DataLoader(_Tensors(images, labels, masks), batch_size=batch), labels
        if labels is not None or masks is not None:
            raise ValueError(
                f"{NAME}: labels= and masks= go with a tensor of images; a DataLoader or"
                " Dataset carries its own (read as the callback reads batches)"
            )
        if isinstance(images, DataLoader):
            return images, None
        if isinstance(images, Dataset):
            return DataLoader(images, batch_size=batch), None
        raise ValueError(
            f"{NAME}: images must be a float [N, C, H, W] tensor, a DataLoader or a Dataset,"
            f" got {type(images).__name__}"
        )

    def _draw(self, indices: list[int] | None) -> Probes:
        opts = self._monitor.options
        try:
            probes = sample_probes(self._loader, opts.num_images, opts.seed, indices,
                                   opts.batch_reader)  # fmt: skip
        except ValueError as err:
            raise ValueError(f"{NAME}: {err}") from err
        if len(probes) < opts.num_images:
            warn(
                f"{NAME}: the validation data has {len(probes)} images, fewer than"
                f" num_images={opts.num_images}; all of them are used"
            )
        return probes

    # ------------------------------------------------------------------ work
    def evaluate(self, step: int, epoch: int | None = None) -> EvaluationResult:
        """Explain the probes with the model's current weights and write the results;
        returns what the evaluation found (its scalars, the ``possible shortcut`` warning or
        None; for an evaluation that failed and was skipped, why). A step evaluated before
        returns that evaluation's result again."""
        result = self._monitor.evaluate(self.host, int(step), epoch)
        if result is not None:
            return result
        last = self._monitor.last_result
        if last is not None and last.step == step:
            return last
        record = self._monitor.history.last
        assert record is not None and record.step == step  # a restored state's last step
        scalars = {f"vitrcam/{k}": v for k, v in record.values.items()}
        return EvaluationResult(record.step, record.epoch, scalars)

    def timeline_images(self) -> list[torch.Tensor]:
        """One ``uint8 [3, H, W]`` picture per probe: its overlays across evaluations."""
        return self._monitor.timeline_images(per_step=True)

    def close(self) -> Path | None:
        """Write the timeline and ``vitrcam/report.html`` (with ``report``), flush and close
        the TensorBoard writer; returns the report's path (None when nothing is written).
        The monitor can go on evaluating afterwards (a new event file is started)."""
        last = self._monitor.history.last
        written = self._monitor.finish(self.host, 0 if last is None else last.step)
        self.host.close()
        html = [p for p in written if p.suffix == ".html"]
        self.report_path = html[0] if html and self._writes else None
        return self.report_path

    def __enter__(self) -> ViTMonitor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What a resumed loop needs (plain types and CPU tensors): save it with the model's
        checkpoint."""
        return self._monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s state: the history (drift, the timeline and
        the report go on), the alarm's memory and its probes' rotation."""
        self._monitor.load_state_dict(state)


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
