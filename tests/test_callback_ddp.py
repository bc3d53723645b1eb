"""ViTReciproCAMCallback under strategy="ddp": two CPU processes (gloo), run as a script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, os
    import torch
    torch.set_num_threads(1)
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader
    from tests.helpers import Module, Squares
    import lightning_vitrcam.loggers as vlog
    from lightning_vitrcam import ViTReciproCAM, ViTReciproCAMCallback

    out = os.environ["VITRCAM_OUT"]
    sizes = []  # images per explanation call on this rank
    explain = ViTReciproCAM.__call__
    def counting(self, images, targets=None):
        sizes.append(int(images.shape[0]))
        return explain(self, images, targets)
    ViTReciproCAM.__call__ = counting
    writes = []
    original = vlog.tensorboard_pictures
    def spy(logger, pictures, step):
        writes.append([p.tag for p in pictures])
        original(logger, pictures, step)
    vlog.tensorboard_pictures = spy
    import lightning_vitrcam.evaluation as vcb
    from lightning_vitrcam.sharding import sharded_forward
    alarm_sizes = []  # (whole batch, rows this rank ran) per occlusion forward
    def spy_sharded(strategy, forward):
        mine = []
        def counted(batch):
            mine.append(int(batch.shape[0]))
            return forward(batch)
        inner = sharded_forward(strategy, counted)
        def outer(batch):
            out = inner(batch)
            alarm_sizes.append((int(batch.shape[0]), mine.pop()))
            return out
        return outer
    vcb.sharded_forward = spy_sharded

    L.seed_everything(0)
    cb = ViTReciproCAMCallback(num_images=5, explain="both")
    trainer = L.Trainer(
        callbacks=[cb], accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
        limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        log_every_n_steps=1, logger=TensorBoardLogger(out, name="tb", version=0),
        default_root_dir=out,
    )
    trainer.fit(
        Module(),
        DataLoader(Squares(32, seed=1), batch_size=4, shuffle=True),
        DataLoader(Squares(16, seed=2), batch_size=4),
    )
    rank = trainer.global_rank
    summary = {
        "rank": rank,
        "steps": [h["step"] for h in cb.history],
        "maps": [h["maps"].float().sum().item() for h in cb.history],
        "adcc": float(trainer.callback_metrics["vitrcam/adcc"]),
        "writes": writes,
        "sizes": sizes,
        "indices": cb.probes.indices,
        "alarm_sizes": alarm_sizes,
        "alarm_tests": [dataclasses.asdict(t) for t in cb.alarm.last_tests],
        "shortcut_drop": float(trainer.callback_metrics["vitrcam/shortcut_drop"]),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(summary, f)
    if rank == 0:
        last = cb.history[-1]
        torch.save(
            {"weights": trainer.lightning_module.model.state_dict(), "maps": last["maps"]},
            os.path.join(out, "final.pt"),
        )
    """
)


@pytest.mark.timeout(240)
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = dict(
        os.environ,
        VITRCAM_OUT=str(tmp_path),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )
    except subprocess.TimeoutExpired as err:  # never hang CI: a deadlock is a failure
        pytest.fail(f"the DDP run did not finish in time (deadlock?): {err.stderr!r}")
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # both ranks evaluated at the same steps and hold the same gathered maps
    assert ranks[0]["steps"] == ranks[1]["steps"] == [2, 4]
    assert ranks[0]["maps"] == pytest.approx(ranks[1]["maps"], rel=1e-5)
    assert ranks[0]["adcc"] == pytest.approx(ranks[1]["adcc"], rel=1e-5)
    # ... but each explained only its share: 5 probes over 2 ranks, 3 rows each (one padded),
    # after the setup's one-image dry run; the alarm's 16 probes (its own: the whole
    # validation set here) 8 rows each
    for r in ranks:
        pictures = [x for x in r["sizes"][1:] if x != 8]
        assert r["sizes"][0] == 1 and max(pictures) == 3 and 8 in r["sizes"], r["sizes"]

    # the gathered maps and ADCC equal one process explaining all probes with those weights
    from lightning_vitrcam import ViTReciproCAM
    from lightning_vitrcam.metrics import ADCC
    from tests.helpers import Squares, TrainOnly

    final = torch.load(tmp_path / "final.pt")
    vit = TrainOnly().model.eval()
    vit.load_state_dict(final["weights"])
    images = Squares(16, seed=2).x[ranks[0]["indices"]]
    cam = ViTReciproCAM(vit)
    single = cam(images)
    torch.testing.assert_close(final["maps"].float(), single.maps, atol=2e-3, rtol=0)
    metric = ADCC(cam)
    metric.update(images, result=single)
    assert ranks[0]["adcc"] == pytest.approx(float(metric.compute()["adcc"]), rel=1e-4)
    # the alarm's occlusion forwards were split too: each rank ran half of every batch ...
    for r in ranks:
        assert r["alarm_sizes"] and all(
            mine == -(-whole // 2) for whole, mine in r["alarm_sizes"]
        ), r["alarm_sizes"]
    assert ranks[0]["shortcut_drop"] == ranks[1]["shortcut_drop"]
    assert ranks[0]["alarm_tests"] and ranks[0]["alarm_tests"] == ranks[1]["alarm_tests"]
    # ... and the gathered drops equal one process occluding the same places of the same
    # probes (the alarm's own: here every validation image, each check)
    from torch.utils.data import DataLoader

    from lightning_vitrcam.alarm_probes import AlarmProbes
    from lightning_vitrcam.shortcut import occlude_boxes

    images = AlarmProbes(DataLoader(Squares(16, seed=2), batch_size=4), seed=1).draw().images
    single = cam(images)
    targets = single.targets
    regions = [t for t in ranks[0]["alarm_tests"] if t["kind"] == "region"]
    assert len(regions) == len(targets)  # one decisive-region test per probe
    with torch.no_grad():
        p0 = cam.score_fn(vit(images).float()).gather(1, targets[:, None])[:, 0]
        rows = torch.tensor([t["probe"] for t in regions])
        boxes = torch.tensor([t["box"] for t in regions])
        occluded = occlude_boxes(images, rows, boxes, tuple(single.maps.shape[-2:]))
        p = cam.score_fn(vit(occluded).float()).gather(1, targets[rows, None])[:, 0]
        expected = ((p0[rows] - p) / p0[rows].clamp_min(1e-12)).clamp(-1, 1)
        drops = torch.tensor([t["drop"] for t in regions])
        torch.testing.assert_close(drops, expected, atol=1e-4, rtol=0)
    # only rank zero wrote pictures: two evaluations and the timeline
    assert len(ranks[0]["writes"]) == 3 and ranks[1]["writes"] == []

    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    acc.Reload()
    assert {"vitrcam/saliency_grid", "vitrcam/timeline"} <= set(acc.Tags()["images"])
    assert len(acc.Scalars("vitrcam/adcc")) == 2
