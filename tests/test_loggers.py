"""The picture-writer registry of lightning_vitrcam.loggers (no training runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lightning_vitrcam import loggers as vlog
from lightning_vitrcam.render import Picture

PICTURES = [
    Picture("vitrcam/saliency_grid", torch.zeros(3, 4, 6, dtype=torch.uint8)),
    Picture("vitrcam/mean_saliency", torch.full((3, 5, 5), 255, dtype=torch.uint8)),
]


def bare(cls: type) -> Any:
    """An instance without __init__: the lookup reads only the class."""
    return object.__new__(cls)


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_lookup_covers_both_lightning_packages(package: str) -> None:
    loggers = pytest.importorskip(f"{package}.loggers")
    expected = {
        "TensorBoardLogger": vlog._to_tensorboard,
        "WandbLogger": vlog._to_wandb,
        "MLFlowLogger": vlog._to_mlflow,
        "CSVLogger": None,  # no writer: PNG files
    }
    for name, writer in expected.items():
        assert vlog.picture_writer_for(bare(getattr(loggers, name))) is writer, name


def test_subclass_uses_base_writer_and_own_registration_wins() -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    class MyTensorBoard(TensorBoardLogger):
        pass

    assert vlog.picture_writer_for(bare(MyTensorBoard)) is vlog._to_tensorboard

    class MyCSV(CSVLogger):
        pass

    calls: list[tuple[str, int]] = []
    path = f"{MyCSV.__module__}.{MyCSV.__qualname__}"
    vlog.register_picture_writer(path)(
        lambda logger, pictures, step: calls.extend((p.tag, step) for p in pictures)
    )
    try:
        trainer = SimpleNamespace(loggers=[bare(MyCSV)], is_global_zero=True)
        assert vlog.log_pictures(trainer, PICTURES, step=7) == []  # no PNG fallback
        assert calls == [("vitrcam/saliency_grid", 7), ("vitrcam/mean_saliency", 7)]
    finally:
        del vlog._WRITERS[path]


def test_writers_are_looked_up_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # tests/test_callback_ddp.py spies on the public function; the registry must honour that
    from lightning.pytorch.loggers import TensorBoardLogger

    seen: list[int] = []
    monkeypatch.setattr(vlog, "tensorboard_pictures", lambda logger, pics, step: seen.append(step))
    trainer = SimpleNamespace(loggers=[bare(TensorBoardLogger)], is_global_zero=True)
    vlog.log_pictures(trainer, PICTURES, step=3)
    assert seen == [3]


def test_mlflow_writer_uploads_pngs_under_the_picture_names() -> None:
    uploads: list[tuple[str, str, str, bytes]] = []

    class Client:
        def log_artifact(self, run_id: str, local_path: str, artifact_path: str) -> None:
            uploads.append(
                (run_id, Path(local_path).name, artifact_path, Path(local_path).read_bytes())
            )

    logger = SimpleNamespace(experiment=Client(), run_id="run-1")
    vlog.mlflow_pictures(logger, PICTURES, step=4)
    assert [u[:3] for u in uploads] == [
        ("run-1", "step_000004.png", "vitrcam/saliency_grid"),
        ("run-1", "step_000004.png", "vitrcam/mean_saliency"),
    ]
    assert all(u[3].startswith(b"\x89PNG") for u in uploads)


def test_other_loggers_and_no_logger_get_files_only_on_rank_zero(tmp_path: Path) -> None:
    other = SimpleNamespace(log_dir=str(tmp_path / "a"), log_metrics=lambda m, step: None)
    trainer = SimpleNamespace(
        loggers=[other, other], is_global_zero=True, default_root_dir=tmp_path
    )
    written = vlog.log_pictures(trainer, PICTURES, step=2)
    # the same directory once
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "a/vitrcam/mean_saliency/step_000002.png",
        "a/vitrcam/saliency_grid/step_000002.png",
    ]
    rank1 = SimpleNamespace(loggers=[], is_global_zero=False, default_root_dir=tmp_path / "b")
    assert vlog.log_pictures(rank1, PICTURES, step=2) == []
    vlog.log_scalars(rank1, {"vitrcam/adcc": 0.5}, step=2, epoch=0)
    assert not (tmp_path / "b").exists()


def test_import_leaves_optional_packages_unimported() -> None:
    # wandb is left out: timm itself imports it when installed (timm.utils.summary)
    code = (
        "import sys, lightning_vitrcam, lightning_vitrcam.loggers, lightning_vitrcam.cli;"
        "print(sorted(m for m in ('pytorch_lightning', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tensorboard_pictures_read_back_pixel_exact(tmp_path: Path) -> None:
    """The writer encodes PNGs itself (faster than add_image): TensorBoard must decode the
    very pixels, colour and grey, at the step given."""
    import io

    import numpy as np
    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    g = torch.Generator().manual_seed(0)
    colour = torch.randint(0, 256, (3, 7, 11), dtype=torch.uint8, generator=g)
    grey = torch.randint(0, 256, (1, 5, 4), dtype=torch.uint8, generator=g)
    logger = TensorBoardLogger(tmp_path, name="tb")
    vlog.tensorboard_pictures(
        logger, [Picture("vitrcam/rgb", colour), Picture("vitrcam/grey", grey)], step=12
    )
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    for tag, expected in (("vitrcam/rgb", colour), ("vitrcam/grey", grey)):
        (event,) = acc.Images(tag)
        assert event.step == 12 and (event.height, event.width) == tuple(expected.shape[1:])
        decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(event.encoded_image_string))))
        decoded = decoded.permute(2, 0, 1) if decoded.dim() == 3 else decoded[None]
        assert torch.equal(decoded, expected)


def test_tensorboard_pictures_are_all_encoded_before_the_first_is_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorBoard's writer thread checksums each queued event in pure Python, holding the GIL:
    an encode queued behind it waited for that checksum, so every picture is encoded first."""
    from lightning.pytorch.loggers import TensorBoardLogger

    order: list[str] = []
    encode = vlog.to_png
    monkeypatch.setattr(vlog, "to_png", lambda image: order.append("encode") or encode(image))
    logger = TensorBoardLogger(tmp_path, name="tb")
    file_writer = logger.experiment._get_file_writer()
    queue = file_writer.add_summary
    monkeypatch.setattr(
        file_writer, "add_summary", lambda *a, **k: order.append("queue") or queue(*a, **k)
    )
    vlog.tensorboard_pictures(logger, PICTURES, step=3)
    assert order == ["encode", "encode", "queue", "queue"]
