"""Send the callback's pictures and scalars to whatever loggers the trainer has.

Scalars go to every logger's ``log_metrics`` (TensorBoard, W&B, MLflow, CSV, ... all accept
``vitrcam/...`` names); with no logger at all they are appended to ``vitrcam/metrics.jsonl``.

Pictures need a writer per kind of logger, chosen by a registry lookup of the logger's class
path over its MRO (:func:`register_picture_writer`, :func:`picture_writer_for`), so that
subclasses share their base's writer and both ``lightning.pytorch`` and the standalone
``pytorch_lightning`` loggers are covered without importing either's optional back ends:

* TensorBoard: ``add_image`` of the captioned picture;
* Weights & Biases: ``log_image`` of a picture's ``parts`` (e.g. one per probe row), each with
  its caption, since W&B captions images instead of drawing text into them;
* MLflow: a PNG run artifact ``vitrcam/<name>/step_<step>.png`` per picture;
* every other logger, or none at all: PNG files ``vitrcam/<name>/step_<step>.png`` in the
  logger's log directory (or ``trainer.default_root_dir``).

Files (the end-of-training report) go to MLflow as run artifacts and everywhere else into the
logger's directory (:func:`register_file_writer`).

Outside Lightning the same writers serve three loggers with Lightning's logger API:
:class:`SummaryWriterLogger` (a ``torch.utils.tensorboard.SummaryWriter``),
:class:`WandbRunLogger` (the active W&B run) and :class:`MlflowRunLogger` (an MLflow run), which
the Hugging Face callback and :class:`~lightning_vitrcam.ViTMonitor` use.

``wandb`` and ``mlflow`` are never imported here: their loggers import them when they log. All
functions take a host (a Lightning ``Trainer`` or a :class:`~lightning_vitrcam.hosts.
ProcessHost`), write only on global rank zero and are no-ops elsewhere.

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
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_vitrcam.render import Picture, save_png, to_png

__all__ = [
    "FileWriter",
    "FilesOnlyLogger",
    "MlflowRunLogger",
    "PictureWriter",
    "SummaryWriterLogger",
    "WandbRunLogger",
    "artifact_folder",
    "file_pictures",
    "file_writer_for",
    "flush",
    "log_files",
    "log_pictures",
    "log_scalars",
    "mlflow_pictures",
    "output_dir",
    "picture_writer_for",
    "register_file_writer",
    "register_picture_writer",
    "tensorboard_pictures",
    "wandb_pictures",
]

PictureWriter = Callable[[Any, Sequence[Picture], int], None]
"""``writer(logger, pictures, step)``: sends ``pictures`` to ``logger`` at ``step``."""
FileWriter = Callable[[Any, Sequence[Path], str], "list[Path] | None"]
"""``writer(logger, files, folder)``: gives ``logger`` the ``files`` under ``folder``; returns
the local copies it made, if any."""


def _is_global_zero(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def _hwc(image: torch.Tensor) -> Any:
    return image.detach().cpu().permute(1, 2, 0).contiguous().numpy()


def artifact_folder(tag: str) -> str:
    """Folder of a picture's files, the same for PNG files and MLflow artifacts.

    Example:
        >>> artifact_folder("vitrcam/saliency_grid"), artifact_folder("my/tag")
        ('vitrcam/saliency_grid', 'vitrcam/my_tag')
    """
    name = tag.split("/", 1)[1] if tag.startswith("vitrcam/") else tag
    return "vitrcam/" + (name.replace("/", "_") or "image")


def _png_name(step: int) -> str:
    return f"step_{step:06d}.png"


# ----------------------------------------------------------------------------- writers
def tensorboard_pictures(logger: Any, pictures: Sequence[Picture], step: int) -> None:
    """Every picture (CHW uint8) as an image summary at ``step``, PNG-encoded by
    :func:`~lightning_vitrcam.render.to_png` (faster than ``add_image``'s own encoding; see
    ``docs/performance.md``)."""
    writer = logger.experiment
    file_writer = getattr(writer, "_get_file_writer", None)
    if file_writer is None:  # a writer without torch's (or tensorboardX's) file writer
        for pic in pictures:
            writer.add_image(pic.tag, pic.image.detach().cpu(), step, dataformats="CHW")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    # every picture is encoded before the first is queued: the writer thread checksums each
    # event in pure Python holding the GIL, and an encode running beside it would wait
    encoded = [(pic, to_png(pic.image)) for pic in pictures]
    for pic, png in encoded:
        channels, height, width = pic.image.shape
        image = Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=png
        )
        # the route add_image itself takes (torch 2.x and tensorboardX SummaryWriter)
        file_writer().add_summary(Summary(value=[Summary.Value(tag=pic.tag, image=image)]), step)


def wandb_pictures(logger: Any, pictures: Sequence[Picture], step: int) -> None:
    """``log_image`` of every picture; a picture with ``parts`` logs them with their captions."""
    for pic in pictures:
        images = list(pic.parts) if pic.parts is not None else [pic.image]
        kwargs = {} if pic.captions is None else {"caption": list(pic.captions)}
        logger.log_image(key=pic.tag, images=[_hwc(i) for i in images], step=step, **kwargs)


def mlflow_pictures(logger: Any, pictures: Sequence[Picture], step: int) -> None:
    """Every picture as the PNG run artifact ``vitrcam/<name>/step_<step>.png`` of the
    logger's run (``logger.experiment`` is an ``MlflowClient``)."""
    client, run_id = logger.experiment, logger.run_id
    # log_artifact uploads a local file; the temporary copy keeps nothing behind in the
    # working directory, whatever artifact store (local, S3, ...) the run uses
    with tempfile.TemporaryDirectory(prefix="vitrcam-") as tmp:
        for pic in pictures:
            folder = artifact_folder(pic.tag)
            path = save_png(pic.image, Path(tmp, folder, _png_name(step)))
            client.log_artifact(run_id, str(path), folder)


def file_pictures(directory: str | Path, pictures: Sequence[Picture], step: int) -> list[Path]:
    """PNG files ``<directory>/vitrcam/<name>/step_<step>.png``; returns their paths."""
    return [
        save_png(pic.image, Path(directory, artifact_folder(pic.tag), _png_name(step)))
        for pic in pictures
    ]


# ----------------------------------------------------------------------------- registry
_WRITERS: dict[str, PictureWriter] = {}
_FILE_WRITERS: dict[str, FileWriter] = {}


def _nearest(table: Mapping[str, Any], logger: Any) -> Any:
    for klass in type(logger).__mro__:
        found = table.get(f"{klass.__module__}.{klass.__qualname__}")
        if found is not None:
            return found
    return None


def register_picture_writer(*class_paths: str) -> Callable[[PictureWriter], PictureWriter]:
    """Register a picture writer for logger classes given by their ``module.QualName`` path.

    Paths (not classes) keep optional libraries unimported; a subclass of a registered class
    uses its writer unless it has its own. Loggers with no writer get PNG files.

    Example:
        >>> @register_picture_writer("my_lib.loggers.MyLogger")
        ... def my_pictures(logger, pictures, step):
        ...     for pic in pictures:
        ...         logger.save_image(pic.tag, pic.image, step)
    """

    def add(writer: PictureWriter) -> PictureWriter:
        for path in class_paths:
            _WRITERS[path] = writer
        return writer

    return add


def picture_writer_for(logger: Any) -> PictureWriter | None:
    """The writer registered for the nearest class in ``type(logger).__mro__``, or None.

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
        >>> picture_writer_for(TensorBoardLogger("tb")).__name__
        '_to_tensorboard'
        >>> picture_writer_for(CSVLogger("csv")) is None
        True
    """
    return _nearest(_WRITERS, logger)


def register_file_writer(*class_paths: str) -> Callable[[FileWriter], FileWriter]:
    """Register how logger classes (by ``module.QualName`` path) take files such as the
    report; loggers with none get copies in their log directory.

    Example:
        >>> @register_file_writer("my_lib.loggers.MyLogger")
        ... def my_files(logger, files, folder):
        ...     for f in files:
        ...         logger.upload(f, folder)
    """

    def add(writer: FileWriter) -> FileWriter:
        for path in class_paths:
            _FILE_WRITERS[path] = writer
        return writer

    return add


def file_writer_for(logger: Any) -> FileWriter | None:
    """The file writer registered for the nearest class of ``logger``, or None (copies).

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> file_writer_for(MlflowRunLogger(run_id="r")).__name__, file_writer_for(CSVLogger("c"))
        ('_files_to_mlflow', None)
    """
    return _nearest(_FILE_WRITERS, logger)


# The registered writers call the public functions through the module namespace at call time,
# so wrapping one of them (e.g. a test spying on tensorboard_pictures) takes effect.
@register_picture_writer(
    # lightning.pytorch's and pytorch_lightning's TensorBoardLogger subclass these
    "lightning.fabric.loggers.tensorboard.TensorBoardLogger",
    "lightning_fabric.loggers.tensorboard.TensorBoardLogger",
    "lightning_vitrcam.loggers.SummaryWriterLogger",
)
def _to_tensorboard(logger: Any, pictures: Sequence[Picture], step: int) -> None:
    tensorboard_pictures(logger, pictures, step)


@register_picture_writer(
    "lightning.pytorch.loggers.wandb.WandbLogger",
    "pytorch_lightning.loggers.wandb.WandbLogger",
    "lightning_vitrcam.loggers.WandbRunLogger",
)
def _to_wandb(logger: Any, pictures: Sequence[Picture], step: int) -> None:
    wandb_pictures(logger, pictures, step)


_MLFLOW = (
    "lightning.pytorch.loggers.mlflow.MLFlowLogger",
    "pytorch_lightning.loggers.mlflow.MLFlowLogger",
    "lightning_vitrcam.loggers.MlflowRunLogger",
)


@register_picture_writer(*_MLFLOW)
def _to_mlflow(logger: Any, pictures: Sequence[Picture], step: int) -> None:
    mlflow_pictures(logger, pictures, step)


@register_file_writer(*_MLFLOW)
def _files_to_mlflow(logger: Any, files: Sequence[Path], folder: str) -> None:
    for f in files:
        logger.experiment.log_artifact(logger.run_id, str(f), folder)


def _copy(files: Sequence[Path], target: Path) -> list[Path]:
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(f, target / Path(f).name)) for f in files]


@register_picture_writer("lightning_vitrcam.loggers.FilesOnlyLogger")
def _no_pictures(logger: Any, pictures: Sequence[Picture], step: int) -> None:
    pass


@register_file_writer("lightning_vitrcam.loggers.FilesOnlyLogger")
def _files_only(logger: Any, files: Sequence[Path], folder: str) -> list[Path]:
    return [] if logger.files_dir is None else _copy(files, Path(logger.files_dir, folder))


# ----------------------------------------------------------------------------- loggers
class FilesOnlyLogger:
    """A logger that takes files only (the report, copied into ``<files_dir>/vitrcam``;
    ``files_dir=None``: nowhere) and keeps no scalars or pictures: it gives a host a place
    for its report beside loggers that keep none, or stands for "write nothing".

    Example:
        >>> FilesOnlyLogger().log_metrics({"vitrcam/adcc": 0.5}, step=1)  # kept nowhere
    """

    def __init__(self, files_dir: str | Path | None = None) -> None:
        self.files_dir = None if files_dir is None else str(files_dir)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass


class SummaryWriterLogger:
    """Lightning's logger API over a ``torch.utils.tensorboard.SummaryWriter``: the one given,
    or one created at ``log_dir`` on first use (so that only the process that logs writes an
    event file). ``files_dir``: where files such as the report go (default ``log_dir``).

    Example:
        >>> import tempfile
        >>> logger = SummaryWriterLogger(tempfile.mkdtemp())
        >>> logger.log_metrics({"vitrcam/adcc": 0.5}, step=3); logger.close()
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        writer: Any = None,
        files_dir: str | Path | None = None,
    ) -> None:
        if writer is None and log_dir is None:
            raise ValueError("SummaryWriterLogger needs a log_dir or a SummaryWriter")
        self._writer, self._own = writer, writer is None
        self.log_dir = str(log_dir if log_dir is not None else writer.get_logdir())
        self.files_dir = str(files_dir) if files_dir is not None else self.log_dir

    @property
    def experiment(self) -> Any:
        """The SummaryWriter."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.experiment.add_scalar(key, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush; close the writer when this logger created it (one given stays open)."""
        if self._writer is None:
            return
        if self._own:
            self._writer.close()
            self._writer = None
        else:
            self._writer.flush()


class WandbRunLogger:
    """Lightning's logger API over a W&B run: ``run``, else the active run (``wandb.run``,
    looked up at each call). Every record carries ``step_key`` (the Hugging Face Trainer's
    ``train/global_step``, Lightning's ``trainer/global_step``) and the ``vitrcam/`` charts
    use it as their x-axis.

    Example:
        >>> WandbRunLogger(step_key="train/global_step").step_key
        'train/global_step'
    """

    def __init__(self, run: Any = None, step_key: str = "trainer/global_step") -> None:
        self._run, self.step_key = run, step_key
        self._defined: set[int] = set()

    @property
    def files_dir(self) -> str:
        """The run's files folder: files put there (the report) are uploaded with the run."""
        return str(self.experiment.dir)

    @property
    def experiment(self) -> Any:
        """The W&B run."""
        run = self._run
        if run is None:
            import wandb

            run = wandb.run
        if run is None:
            raise RuntimeError("no active W&B run: call wandb.init() first (or pass run=)")
        if id(run) not in self._defined:
            self._defined.add(id(run))
            run.define_metric(self.step_key)
            run.define_metric("vitrcam/*", step_metric=self.step_key)
        return run

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        record = dict(metrics)
        if step is not None:
            record[self.step_key] = step
        self.experiment.log(record)

    def log_image(
        self, key: str, images: list[Any], step: int | None = None, **kwargs: Any
    ) -> None:
        """``wandb.Image`` of each image (HWC arrays), with per-image ``caption``."""
        import wandb

        each = [{k: v[i] for k, v in kwargs.items()} for i in range(len(images))]
        shown = [wandb.Image(x, **kw) for x, kw in zip(images, each, strict=True)]
        self.log_metrics({key: shown}, step)


class MlflowRunLogger:
    """Lightning's logger API over an MLflow run: ``run_id``, else the run active when the
    logger is first used (remembered, so that it is still written to after the integration
    that started it has ended it), at ``tracking_uri`` (default: MLflow's).

    Example:
        >>> MlflowRunLogger(run_id="0123").run_id
        '0123'
    """

    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None) -> None:
        self._run_id, self.tracking_uri = run_id, tracking_uri
        self._client: Any = None

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            import mlflow

            active = mlflow.active_run()
            if active is None:
                raise RuntimeError("no active MLflow run: call mlflow.start_run() or pass run_id=")
            self._run_id = active.info.run_id
            self.tracking_uri = self.tracking_uri or mlflow.get_tracking_uri()
        return self._run_id

    @property
    def experiment(self) -> Any:
        """An ``MlflowClient`` of the run's tracking server."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self._run_id is None:
                self.run_id  # noqa: B018 - the active run also says which tracking server

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        run_id = self.run_id
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step or 0) for k, v in metrics.items()]
        self.experiment.log_batch(run_id, metrics=batch)


# ----------------------------------------------------------------------------- entry points
def output_dir(trainer: Any, logger: Any | None = None) -> Path:
    """Where files for ``logger`` go: its ``files_dir``, ``log_dir`` or ``save_dir``, else the
    host's ``default_root_dir``."""
    for attr in ("files_dir", "log_dir", "save_dir"):
        value = getattr(logger, attr, None) if logger is not None else None
        if value:
            return Path(value)
    return Path(trainer.default_root_dir)


def log_pictures(trainer: Any, pictures: Sequence[Picture], step: int) -> list[Path]:
    """Send ``pictures`` to every logger of ``trainer``; returns the PNG files written.

    Each logger gets its registered writer (:func:`picture_writer_for`); every other logger,
    or the trainer itself when it has none, gets PNG files (each directory once).
    """
    if not _is_global_zero(trainer) or not pictures:
        return []
    loggers = list(getattr(trainer, "loggers", []) or [])
    directories: list[Path] = []
    for logger in loggers:
        writer = picture_writer_for(logger)
        if writer is not None:
            writer(logger, pictures, step)
        else:
            directories.append(output_dir(trainer, logger))
    if not loggers:
        directories.append(output_dir(trainer))
    written: list[Path] = []
    for directory in dict.fromkeys(directories):
        written.extend(file_pictures(directory, pictures, step))
    return written


def log_files(trainer: Any, files: Sequence[Path], folder: str = "vitrcam") -> list[Path]:
    """Files (e.g. the report) for every logger: a logger with a file writer (MLflow: run
    artifacts under ``folder``) gets them through it, every other logger (or none) copies in
    ``<its log dir>/<folder>``; returns the local copies."""
    if not _is_global_zero(trainer) or not files:
        return []
    loggers = list(getattr(trainer, "loggers", []) or [])
    directories: list[Path] = []
    written: list[Path] = []
    for logger in loggers:
        writer = file_writer_for(logger)
        if writer is not None:
            written.extend(writer(logger, files, folder) or [])
        else:
            directories.append(output_dir(trainer, logger))
    if not loggers:
        directories.append(output_dir(trainer))
    for directory in dict.fromkeys(directories):
        if Path(directory, folder) not in {w.parent for w in written}:
            written.extend(_copy(files, Path(directory, folder)))
    return written


def flush(trainer: Any) -> None:
    """Flush the loggers that buffer (a SummaryWriter's event file), so that what an
    evaluation wrote can be read at once."""
    if not _is_global_zero(trainer):
        return
    for logger in list(getattr(trainer, "loggers", []) or []):
        if callable(getattr(logger, "flush", None)):
            logger.flush()


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
