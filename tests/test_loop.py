"""ViTMonitor: the monitoring from a plain PyTorch loop (tiny timm ViTs, 32px, CPU)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from lightning_vitrcam import EvaluationResult, ShortcutAlarm, ViTMonitor
from tests.helpers import Squares, make_vit, rigged_corner_vit

CHEAP = dict(num_images=4, compute_adcc=False, shortcut_alarm=None)


def dropout_vit() -> nn.Module:
    """A tiny sensitive ViT (maps that are not flat) with dropout on, in training mode."""
    return make_vit(num_classes=4, drop_rate=0.2, proj_drop_rate=0.2, attn_drop_rate=0.1).train()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    squares = Squares(16, seed=1)
    return squares.x, squares.y


def _train(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], monitor: ViTMonitor | None
) -> list[EvaluationResult]:
    """Four SGD steps on random batches (the global RNG picks them, dropout draws from it),
    evaluating every second step."""
    x, y = data
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(5)
    found = []
    for step in range(1, 5):
        i = torch.randint(0, len(x), (8,))
        loss = F.cross_entropy(model(x[i]), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if monitor is not None and step % 2 == 0:
            found.append(monitor.evaluate(step=step))
            assert model.training
    return found


@pytest.fixture(scope="module")
def watched(
    tmp_path_factory: pytest.TempPathFactory, data: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, Any]:
    """A loop without the monitor and the same loop with it (default alarm, ADCC on)."""
    log_dir = tmp_path_factory.mktemp("loop")
    plain = dropout_vit()
    _train(plain, data, None)
    model = dropout_vit()
    monitor = ViTMonitor(model, *data, log_dir=log_dir, num_images=4)
    found = _train(model, data, monitor)
    report = monitor.close()
    return dict(plain=plain, model=model, monitor=monitor, found=found, report=report,
                log_dir=log_dir)  # fmt: skip


def test_a_loop_with_the_monitor_trains_the_same_weights(watched: dict[str, Any]) -> None:
    plain, model = watched["plain"].state_dict(), watched["model"].state_dict()
    assert not torch.equal(plain["head.weight"], dropout_vit().state_dict()["head.weight"])
    changed = [k for k in plain if not torch.equal(plain[k], model[k])]
    assert not changed, changed


def test_evaluate_returns_the_scalars(watched: dict[str, Any]) -> None:
    found = watched["found"]
    assert [r.step for r in found] == [2, 4]
    for result in found:
        assert isinstance(result, EvaluationResult) and result.skipped is None
        assert {"vitrcam/adcc", "vitrcam/hotspot_ratio"} <= set(result.scalars)
        assert all(isinstance(v, float) for v in result.scalars.values())
    assert "vitrcam/map_drift" in found[1].scalars  # the second evaluation compares
    # an untrained model has not learned a shortcut: nothing to warn about
    assert found[0].warning is None


def test_tensorboard_event_files_under_log_dir(watched: dict[str, Any]) -> None:
    log_dir = watched["log_dir"]
    assert list(log_dir.glob("events.out.tfevents*"))
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("vitrcam/adcc")] == [2, 4]
    values = [e.value for e in acc.Scalars("vitrcam/adcc")]
    assert values == pytest.approx([r.scalars["vitrcam/adcc"] for r in watched["found"]])
    images = set(acc.Tags()["images"])
    assert {"vitrcam/saliency_grid", "vitrcam/mean_saliency", "vitrcam/timeline"} <= images


def test_close_writes_the_report(watched: dict[str, Any]) -> None:
    report = watched["report"]
    assert report == watched["log_dir"] / "vitrcam" / "report.html"
    assert report.stat().st_size > 1000 and (report.parent / "report.json").is_file()
    assert watched["monitor"].report_path == report


def test_flags_and_every_rng_restored(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = dropout_vit()
    monitor = ViTMonitor(model, *data, num_images=4)
    model.blocks[0].eval()  # a mixed state comes back as it was
    torch.manual_seed(3), random.seed(3), np.random.seed(3)  # noqa: NPY002 (the global one)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()  # noqa: NPY002
    result = monitor.evaluate(step=1)
    assert result.scalars and result.skipped is None
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])  # noqa: NPY002
    assert model.training and not model.blocks[0].training and model.blocks[1].training
    assert all(p.grad is None for p in model.parameters())


def test_nothing_written_without_log_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    monkeypatch.chdir(tmp_path)
    monitor = ViTMonitor(make_vit(num_classes=4), *data, **CHEAP)
    assert monitor.evaluate(step=1).scalars
    assert monitor.close() is None
    assert list(tmp_path.iterdir()) == []


def test_the_shortcut_warning_is_returned(tmp_path: Path) -> None:
    """A model that reads only the top-left corner's colour: evaluate() says so."""
    from lightning_vitrcam.demo import SQUARE_COLOURS

    model = rigged_corner_vit((SQUARE_COLOURS - SQUARE_COLOURS.mean(1, keepdim=True)) * 3)
    val = Squares(32, 3, corner=True)  # a Dataset of dicts, as the callback reads batches
    monitor = ViTMonitor(model, val, num_images=16, log_images=False, compute_adcc=False)
    first = monitor.evaluate(step=6)  # confirmed once: not raised yet
    assert first.warning is None and first.scalars["vitrcam/shortcut_streak"] == 1.0
    with pytest.warns(UserWarning, match="possible shortcut"):
        result = monitor.evaluate(step=7)  # confirmed again on fresh pairs: raised
    assert result.warning is not None and "possible shortcut" in result.warning
    assert "row 0, column 0" in result.warning
    assert result.scalars["vitrcam/shortcut_learned"] == 1.0
    # a check that confirms nothing (here: no kind of evidence left to run) repeats the
    # raised finding once, saying so; a second one in a row drops it
    monitor._monitor.alarm.kinds = {}
    with pytest.warns(UserWarning, match="held from an earlier check"):
        held = monitor.evaluate(step=8)
    assert held.warning is not None and "row 0, column 0" in held.warning
    assert monitor.evaluate(step=9).warning is None


def test_state_dict_round_trip_resumes(
    tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model = make_vit(num_classes=4)
    first = ViTMonitor(model, *data, log_dir=tmp_path / "a", num_images=4)
    first.evaluate(step=1)
    with torch.no_grad():
        model.head.weight.mul_(2)
    first.evaluate(step=2)
    path = tmp_path / "monitor.pt"
    torch.save(first.state_dict(), path)  # plain types and CPU tensors
    state = torch.load(path, weights_only=True)

    # a new process: the same model and images, the state loaded, the loop goes on
    resumed = ViTMonitor(model, *data, log_dir=tmp_path / "b", num_images=4)
    resumed.load_state_dict(state)
    assert [r["step"] for r in resumed.history] == [1, 2]
    assert resumed.probes.indices == first.probes.indices
    # the alarm's memory and its probes' rotation come back too
    assert resumed.state_dict()["alarm"] == state["alarm"]
    assert resumed.state_dict()["alarm_probes"] == state["alarm_probes"] == {"checks": 2}
    again = resumed.evaluate(step=2)  # a step evaluated before: its result, not a new one
    assert again.scalars == first.evaluate(step=2).scalars
    third = resumed.evaluate(step=3)
    assert [r["step"] for r in resumed.history] == [1, 2, 3]
    assert "vitrcam/map_drift" in third.scalars  # compared with the restored step 2
    assert resumed.close() == tmp_path / "b" / "vitrcam" / "report.html"
    report = json.loads((tmp_path / "b" / "vitrcam" / "report.json").read_text())
    assert [row["step"] for row in report["history"]] == [1, 2, 3]  # the whole run


def test_a_dataloader_of_tuples_and_a_summary_writer(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    loader = DataLoader(Squares(8, layout="tuple"), batch_size=4)
    monitor = ViTMonitor(make_vit(num_classes=4), loader, loggers=[writer], **CHEAP)
    assert monitor.evaluate(step=5).scalars
    assert monitor.close() == tmp_path / "vitrcam" / "report.html"
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("vitrcam/hotspot_ratio")] == [5]


@pytest.mark.parametrize(
    "case, match",
    [
        ("label_outside_head", r"labels \[.*7.*\] are not class indices in \[0, 4\)"),
        ("label_rows", r"labels must be \[N=16\].*got \(3,\)"),
        ("image_size", "takes 32x32 images but got 48x48"),
        ("channels", "cannot run on the probe images .*channels"),
        ("uint8", "float \\[N, C, H, W\\] tensor"),
        ("class_names", "class_names has 2 names but the model predicts 4 classes"),
        ("no_vit", "ViTMonitor: no Vision Transformer found in Sequential"),
        ("not_explainable", "ViTMonitor cannot explain model.head .*model_attr"),
        ("not_a_module", "model must be a torch.nn.Module"),
        ("labels_with_loader", "labels= and masks= go with a tensor of images"),
    ],
)
def test_bad_input_raises_before_training(
    case: str, match: str, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    model: Any = make_vit(num_classes=4)
    kwargs: dict[str, Any] = dict(CHEAP)
    images: Any = x
    if case == "label_outside_head":
        y = y.clone()
        y[-1] = 7  # outside the probes too: every label is checked
        kwargs["num_images"] = 1
    elif case == "label_rows":
        y = y[:3]
    elif case == "image_size":
        images = F.interpolate(x, size=48)
    elif case == "channels":
        images = x[:, :1]
    elif case == "uint8":
        images = x.to(torch.uint8)
    elif case == "class_names":
        kwargs["class_names"] = ["a", "b"]
    elif case == "no_vit":
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    elif case == "not_explainable":
        kwargs["model_attr"] = "head"
    elif case == "not_a_module":
        model = lambda t: t  # noqa: E731
    elif case == "labels_with_loader":
        images = DataLoader(Squares(4), batch_size=2)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match=match):
        ViTMonitor(model, images, y, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)


def test_the_alarm_setting_is_copied(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    alarm = ShortcutAlarm()
    monitor = ViTMonitor(make_vit(num_classes=4), *data, num_images=2, shortcut_alarm=alarm)
    assert monitor.alarm is not alarm and monitor.num_images == 2
