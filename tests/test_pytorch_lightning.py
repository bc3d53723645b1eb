"""lightning_vitrcam.pl.ViTReciproCAMCallback in a standalone ``pytorch_lightning.Trainer``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tests.helpers import Squares, make_vit

pl = pytest.importorskip("pytorch_lightning")
pytestmark = pytest.mark.filterwarnings("ignore::lightning_vitrcam.PossibleShortcutWarning")

SCALARS = {"vitrcam/adcc", "vitrcam/hotspot_ratio", "vitrcam/map_drift", "vitrcam/energy_in_mask"}
PICTURES = {"vitrcam/saliency_grid", "vitrcam/mean_saliency", "vitrcam/timeline"}


class PLModule(pl.LightningModule):
    """tests.helpers.Module for pytorch_lightning (whose modules are distinct classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = make_vit(num_classes=4, depth=1).train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["image"]), batch["label"]))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class PLData(pl.LightningDataModule):
    class_names = ["r", "g", "b", "y"]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Squares(16, seed=1), batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Squares(8, seed=2), batch_size=8)


def trainer(root: Path, callback: Any, logger: Any) -> Any:
    return pl.Trainer(
        callbacks=[callback],
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )


def test_the_lightning_callback_itself_works_in_a_pytorch_lightning_trainer(tmp_path) -> None:
    # it once failed with "Expected a parent": Lightning's is_overridden rejects pl modules
    from lightning_vitrcam import ViTReciproCAMCallback

    cb = ViTReciproCAMCallback(num_images=2, log_images=False)
    trainer(tmp_path, cb, False).fit(PLModule(), datamodule=PLData())
    assert [h["epoch"] for h in cb.history] == [0, 1]


def test_datamodule_run_logs_pictures_and_scalars_to_tensorboard(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_vitrcam.pl import ViTReciproCAMCallback

    callback = ViTReciproCAMCallback(num_images=3, explain="both")
    assert isinstance(callback, pl.Callback)
    tb = TensorBoardLogger(tmp_path, name="tb")
    run = trainer(tmp_path, callback, tb)
    run.fit(PLModule(), datamodule=PLData())

    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert PICTURES <= set(acc.Tags()["images"])
    assert SCALARS <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("vitrcam/adcc")] == [2, 4]
    assert "vitrcam/adcc" in run.callback_metrics  # pl_module.log works too
    assert callback.class_names == PLData.class_names
    assert not (tmp_path / "vitrcam").exists()  # TensorBoard needs no PNG fallback


def test_fit_loaders_and_csv_logger_get_png_files_and_scalars(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger

    from lightning_vitrcam.pl import ViTReciproCAMCallback

    callback = ViTReciproCAMCallback(num_images=2, every_n_steps=3)
    csv_logger = CSVLogger(tmp_path, name="csv")
    trainer(tmp_path, callback, csv_logger).fit(
        PLModule(),
        DataLoader(Squares(16, seed=1), batch_size=8),
        DataLoader(Squares(8, seed=2), batch_size=8),
    )
    assert [h["step"] for h in callback.history] == [3, 4]  # every 3 steps, then the end
    folder = Path(csv_logger.log_dir, "vitrcam")
    assert {p.parent.name for p in folder.rglob("*.png")} == {p.split("/")[1] for p in PICTURES}
    with open(Path(csv_logger.log_dir, "metrics.csv")) as f:
        assert SCALARS - {"vitrcam/map_drift"} <= set(next(csv.reader(f)))


def test_pytorch_lightning_cli_accepts_the_class_path() -> None:
    from pytorch_lightning.cli import LightningCLI

    args = [
        "--trainer.callbacks+=lightning_vitrcam.pl.ViTReciproCAMCallback",
        "--trainer.callbacks.num_images=4",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    cli = LightningCLI(
        PLModule, run=False, args=args, save_config_callback=None, seed_everything_default=False
    )
    found = [c for c in cli.trainer.callbacks if type(c).__name__ == "ViTReciproCAMCallback"]
    assert [(type(c).__module__, c.num_images) for c in found] == [("lightning_vitrcam.pl", 4)]
