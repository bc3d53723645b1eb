"""ViTReciproCAMCallback with Lightning's MLFlowLogger on a local store, read back through the
MLflow client after a short real fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from torch.utils.data import DataLoader

from lightning_vitrcam import ViTReciproCAMCallback
from tests.helpers import Module, Squares

pytest.importorskip("mlflow")
pytestmark = pytest.mark.filterwarnings("ignore::lightning_vitrcam.PossibleShortcutWarning")


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_mlflow_run_gets_metrics_and_png_artifacts(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow import MlflowClient

    if store == "sqlite":  # mlflow 3's recommended embedded store
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        logger = MLFlowLogger("vitrcam", tracking_uri=uri, artifact_location=str(tmp_path / "art"))
    else:  # Lightning's default (file:./mlruns) needs this opt-in since mlflow 3.x
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = f"file:{tmp_path / 'mlruns'}"
        logger = MLFlowLogger("vitrcam", tracking_uri=uri)
    root = tmp_path / "root"
    trainer = L.Trainer(
        callbacks=[ViTReciproCAMCallback(num_images=3)],
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
    trainer.fit(
        Module(),
        DataLoader(Squares(16, seed=1), batch_size=8, shuffle=True),
        DataLoader(Squares(8, seed=2), batch_size=8),
    )

    client = MlflowClient(uri)
    run_id = logger.run_id
    # scalars: run metrics under their own names, step = global step
    assert [m.step for m in client.get_metric_history(run_id, "vitrcam/adcc")] == [2, 4]
    assert len(client.get_metric_history(run_id, "vitrcam/hotspot_ratio")) == 2
    # pictures: PNG artifacts named like the PNG files of other loggers
    folders = {a.path for a in client.list_artifacts(run_id, "vitrcam")}
    pictures = {"vitrcam/saliency_grid", "vitrcam/mean_saliency", "vitrcam/timeline"}
    assert folders == pictures | {"vitrcam/report.html", "vitrcam/report.json"}  # + the report
    grids = [a.path for a in client.list_artifacts(run_id, "vitrcam/saliency_grid")]
    assert grids == [
        "vitrcam/saliency_grid/step_000002.png",
        "vitrcam/saliency_grid/step_000004.png",
    ]
    local = client.download_artifacts(run_id, grids[-1], str(tmp_path / "download"))
    assert Path(local).read_bytes()[:4] == b"\x89PNG"
    # no PNG-file fallback (it used to go to the store's save_dir or default_root_dir)
    assert not (root / "vitrcam").exists() and not (tmp_path / "mlruns" / "vitrcam").exists()
