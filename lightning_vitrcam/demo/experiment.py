"""A shortcut experiment: train the demo ViT with the callback and record what it showed.

Example:
    >>> rows = [EpochSignals(0, 0.97, 0.25, 9.2, 0.15, 0.83, True, shortcut_drop=0.71)]
    >>> print(signals_table({"shortcut": rows}).splitlines()[-1])
    | shortcut | 0 | 0.97 | 0.25 | 0.71 | 9.2 | 0.15 | 0.83 | yes |
    >>> first_warning(rows)
    0
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lightning_vitrcam.callback import ViTReciproCAMCallback
from lightning_vitrcam.demo.data import ShapesDataModule
from lightning_vitrcam.demo.model import ViTClassifier
from lightning_vitrcam.shortcut import PossibleShortcutWarning

__all__ = ["EpochSignals", "first_warning", "shortcut_experiment", "signals_table"]


@dataclass
class EpochSignals:
    """What one epoch of :func:`shortcut_experiment` showed (None: not logged that epoch,
    e.g. map signals when every map was flat)."""

    epoch: int
    val_acc: float
    patch_free_acc: float
    hotspot_ratio: float | None
    energy_in_mask: float | None
    adcc: float | None
    warned: bool
    shortcut_drop: float | None = None
    flat_maps: float | None = None
    message: str | None = None
    #: the places the alarm tested at this evaluation (``ShortcutAlarm.last_tests`` as dicts)
    alarm_tests: list[dict[str, Any]] | None = None
    #: whether the alarm ran its occlusion search at this evaluation (it does not when a map's
    #: or remembered place is already confirmed)
    alarm_searched: bool | None = None
    #: ["not learned"] where the alarm tested nothing because the predictions did not yet
    #: agree with the probes' labels enough
    held_back: list[str] | None = None
    #: whether this check itself confirmed a finding (the warning also depends on the checks
    #: before it): other release rules can be counted from these offline
    confirmed: bool | None = None
    #: accuracy on the data module's swap split (cue-free images given another class's cue,
    #: labelled with that class: the share the cue moves), where it has one
    swap_acc: float | None = None


class _SignalRecorder(Callback):
    """Collects the per-epoch signals once validation and the ReciproCAM callback are done."""

    def __init__(self, datamodule: Any, checkpoints: str | None = None) -> None:
        self.datamodule = datamodule
        self.checkpoints = checkpoints
        self.rows: list[EpochSignals] = []
        self.caught: list[warnings.WarningMessage] = []
        self._seen = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if "vitrcam/flat_maps" not in metrics:
            return

        def value(key: str) -> float | None:
            return float(metrics[key]) if key in metrics else None

        swap = getattr(self.datamodule, "swap_dataloader", None)
        if self.checkpoints is not None:
            import os

            import torch

            os.makedirs(self.checkpoints, exist_ok=True)
            state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
            torch.save(state, os.path.join(self.checkpoints, f"epoch{trainer.current_epoch}.pt"))
        monitor = next(c for c in trainer.callbacks if isinstance(c, ViTReciproCAMCallback))
        alarm = monitor.alarm
        shortcut = [w for w in self.caught if issubclass(w.category, PossibleShortcutWarning)]
        new = shortcut[self._seen :]
        self.rows.append(
            EpochSignals(
                epoch=trainer.current_epoch,
                val_acc=float(metrics["val/acc"]),
                patch_free_acc=pl_module.evaluate_accuracy(self.datamodule.patch_free_dataloader()),
                hotspot_ratio=value("vitrcam/hotspot_ratio"),
                energy_in_mask=value("vitrcam/energy_in_mask"),
                adcc=value("vitrcam/adcc"),
                warned=bool(new),
                shortcut_drop=value("vitrcam/shortcut_drop"),
                flat_maps=value("vitrcam/flat_maps"),
                message=str(new[-1].message) if new else None,
                alarm_tests=[asdict(t) for t in alarm.last_tests] if alarm else None,
                alarm_searched=alarm.searched if alarm else None,
                held_back=None if alarm is None else ([] if alarm.learned else ["not learned"]),
                confirmed=None if alarm is None else bool(alarm.last_verdict.suspects),
                swap_acc=None if swap is None else pl_module.evaluate_accuracy(swap()),
            )
        )
        self._seen = len(shortcut)


def shortcut_experiment(
    shortcut_p: float,
    epochs: int = 4,
    *,
    shortcut_corner: str = "top_left",
    label_smoothing: float = 0.1,
    num_train: int = 3000,
    num_val: int = 500,
    num_patch_free: int = 500,
    model_name: str = "vit_tiny_patch16_224",
    model_kwargs: dict[str, Any] | None = None,
    callback_kwargs: dict[str, Any] | None = None,
    root_dir: str = "lightning_logs",
    name: str | None = None,
    seed: int = 0,
    datamodule: Any = None,
    logger: bool = True,
    task: str = "multiclass",
    checkpoints: str | None = None,
) -> list[EpochSignals]:
    """Train the demo ViT with the callback and record, per epoch, validation accuracy,
    accuracy on patch-free images, the callback's signals and whether it warned "possible
    shortcut" (and what it said). TensorBoard logs go to ``root_dir/name`` (``logger=False``:
    none). ``datamodule`` replaces the demo's shapes data (it must offer
    ``patch_free_dataloader()``; ``shortcut_p``, ``shortcut_corner`` and the sizes are then
    ignored). ``task="binary"`` trains a one-logit head (the data must have 2 classes).
    ``checkpoints``: a folder where the module's weights are saved after each evaluation
    (``epoch{n}.pt``), to study the alarm on them later.
    ``tests/test_demo.py`` runs it with tiny settings; real runs use the defaults.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    L.seed_everything(seed, verbose=False)
    data = datamodule or ShapesDataModule(
        num_train=num_train,
        num_val=num_val,
        num_patch_free=num_patch_free,
        shortcut_p=shortcut_p,
        shortcut_corner=shortcut_corner,  # type: ignore[arg-type]
        seed=seed,
    )
    recorder = _SignalRecorder(data, checkpoints)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(root_dir, name=name or f"shortcut_p={shortcut_p}")
        if logger
        else False,
        callbacks=[ViTReciproCAMCallback(**(callback_kwargs or {})), recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root_dir,
    )
    model = ViTClassifier(
        model_name=model_name,
        model_kwargs=model_kwargs,
        num_classes=len(data.class_names),
        label_smoothing=label_smoothing,
        task=task,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PossibleShortcutWarning)
        recorder.caught = caught
        trainer.fit(model, datamodule=data)
    return recorder.rows


def signals_table(runs: Mapping[str, Sequence[EpochSignals]]) -> str:
    """A markdown table of :func:`shortcut_experiment` results, one row per run and epoch."""

    def fmt(v: float | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "| run | epoch | val acc | patch-free acc | shortcut drop | hotspot ratio"
        " | energy in object | ADCC | warned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, rows in runs.items():
        for r in rows:
            lines.append(
                f"| {run} | {r.epoch} | {r.val_acc:.2f} | {r.patch_free_acc:.2f} |"
                f" {fmt(r.shortcut_drop)} | {fmt(r.hotspot_ratio, '.1f')} |"
                f" {fmt(r.energy_in_mask)} | {fmt(r.adcc)} | {'yes' if r.warned else 'no'} |"
            )
    return "\n".join(lines)


def first_warning(rows: Sequence[EpochSignals]) -> int | None:
    """The first epoch at which the callback warned, or None."""
    return next((r.epoch for r in rows if r.warned), None)
