"""Send the callback's pictures and scalars to whatever loggers the trainer has.

One writer per kind of logger: TensorBoard (``add_image`` of the captioned picture), Weights &
Biases (``log_image`` of a picture's ``parts``, e.g. one per probe row, each with its caption:
W&B captions images instead of drawing text into them) and, for every other logger or none at
all, PNG files in the logger's log directory (or ``trainer.default_root_dir``). Scalars go to
every logger's ``log_metrics``; with no logger at all they are appended to
``vitrcam/metrics.jsonl``.
``wandb`` is never imported here: :class:`~lightning.pytorch.loggers.WandbLogger` imports it
itself when it logs.

All functions write only on global rank zero and are no-ops elsewhere.

Example:
    >>> import tempfile, torch, lightning as L
    >>> from lightning_vitrcam.render import Picture
    >>> trainer = L.Trainer(logger=False, default_root_dir=tempfile.mkdtemp())
    >>> pic = Picture("vitrcam/example", torch.zeros(3, 8, 8, dtype=torch.uint8))
    >>> [p.name for p in log_pictures(trainer, [pic], step=3)]
    ['step_000003.png']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers.tensorboard import TensorBoardLogger as _FabricTensorBoard
from lightning.pytorch.loggers import Logger, WandbLogger

from lightning_vitrcam.render import Picture, save_png

__all__ = [
    "file_pictures",
    "log_pictures",
    "log_scalars",
    "output_dir",
    "tensorboard_pictures",
    "wandb_pictures",
]


def _is_global_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def _hwc(image: torch.Tensor) -> Any:
    return image.detach().cpu().permute(1, 2, 0).contiguous().numpy()


def tensorboard_pictures(logger: Any, pictures: Sequence[Picture], step: int) -> None:
    """``add_image`` of every picture (CHW uint8) at ``step``."""
    writer = logger.experiment
    for pic in pictures:
        writer.add_image(pic.tag, pic.image.detach().cpu(), global_step=step, dataformats="CHW")


def wandb_pictures(logger: WandbLogger, pictures: Sequence[Picture], step: int) -> None:
    """``log_image`` of every picture; a picture with ``parts`` logs them with their captions."""
    for pic in pictures:
        images = list(pic.parts) if pic.parts is not None else [pic.image]
        kwargs = {} if pic.captions is None else {"caption": list(pic.captions)}
        logger.log_image(key=pic.tag, images=[_hwc(i) for i in images], step=step, **kwargs)


def _file_name(tag: str) -> str:
    name = tag.split("/", 1)[1] if tag.startswith("vitrcam/") else tag
    return name.replace("/", "_") or "image"


def file_pictures(directory: str | Path, pictures: Sequence[Picture], step: int) -> list[Path]:
    """PNG files ``<directory>/vitrcam/<tag>/step_<step>.png``; returns their paths."""
    root = Path(directory) / "vitrcam"
    return [
        save_png(pic.image, root / _file_name(pic.tag) / f"step_{step:06d}.png") for pic in pictures
    ]


def output_dir(trainer: Any, logger: Logger | None = None) -> Path:
    """Where files for ``logger`` go: its ``log_dir``, else its ``save_dir``, else the trainer's
    ``default_root_dir``."""
    for attr in ("log_dir", "save_dir"):
        value = getattr(logger, attr, None) if logger is not None else None
        if value:
            return Path(value)
    return Path(trainer.default_root_dir)


def log_pictures(trainer: Any, pictures: Sequence[Picture], step: int) -> list[Path]:
    """Send ``pictures`` to every logger of ``trainer``; returns the PNG files written.

    TensorBoard and W&B loggers receive them natively; every other logger, or the trainer
    itself when it has none, gets PNG files (each directory once).
    """
    if not _is_global_zero(trainer) or not pictures:
        return []
    loggers = list(getattr(trainer, "loggers", []) or [])
    written: list[Path] = []
    directories: list[Path] = []
    for logger in loggers:
        if isinstance(logger, _FabricTensorBoard):
            tensorboard_pictures(logger, pictures, step)
        elif isinstance(logger, WandbLogger):
            wandb_pictures(logger, pictures, step)
        else:
            directories.append(output_dir(trainer, logger))
    if not loggers:
        directories.append(output_dir(trainer))
    for directory in dict.fromkeys(directories):
        written.extend(file_pictures(directory, pictures, step))
    return written


def log_scalars(trainer: Any, scalars: Mapping[str, float], step: int, epoch: int) -> None:
    """``log_metrics`` on every logger; with none, one JSON line in
    ``<default_root_dir>/vitrcam/metrics.jsonl``."""
    if not _is_global_zero(trainer) or not scalars:
        return
    loggers = list(getattr(trainer, "loggers", []) or [])
    for logger in loggers:
        logger.log_metrics(dict(scalars), step=step)
    if not loggers:
        path = output_dir(trainer) / "vitrcam" / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"step": step, "epoch": epoch, **scalars}) + "\n")
