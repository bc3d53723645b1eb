"""Every example runs (tiny settings) and prints/writes what it promises."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _main(name: str):
    return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"]


def test_quickstart(capsys):
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    assert "fast path: True" in capsys.readouterr().out


def test_minimal(tmp_path, capsys):
    trainer = _main("minimal.py")(["--epochs", "1", "--num-train", "64", "--root", str(tmp_path)])
    assert trainer.current_epoch == 1
    assert "vitrcam/hotspot_ratio" in trainer.callback_metrics
    assert list(tmp_path.rglob("events.out.tfevents*"))
    assert "vitrcam/adcc" in capsys.readouterr().out


def test_shortcut_detection(tmp_path, capsys):
    runs = _main("shortcut_detection.py")(
        ["--epochs", "1", "--num-train", "64", "--num-val", "32", "--tiny", "--root", str(tmp_path)]
    )
    assert set(runs) == {"clean", "shortcut"}
    for rows in runs.values():
        assert len(rows) == 1 and 0.0 <= rows[0].patch_free_acc <= 1.0
        assert rows[0].hotspot_ratio >= 1.0 and rows[0].energy_in_mask is not None
    out = capsys.readouterr().out
    assert "| clean | 0 |" in out and "| shortcut | 0 |" in out


def test_custom_model(tmp_path, capsys):
    result = _main("custom_model.py")(["--steps", "30", "--out", str(tmp_path)])
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert 0.0 <= result["energy_in_mask"] <= 1.0
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["generic_difference"] < 1e-5  # zero-config fast path == generic route
    assert "fast path: True" in capsys.readouterr().out


def test_plain_loop(tmp_path, capsys):
    out = tmp_path / "plain"
    monitor = _main("plain_loop.py")(
        ["--epochs", "2", "--num-train", "32", "--num-val", "16", "--size", "32", "--out", str(out)]
    )
    assert [r["step"] for r in monitor.history] == [1, 2]  # one evaluation per epoch
    assert monitor.report_path == out / "vitrcam" / "report.html" and monitor.report_path.is_file()
    assert list(out.glob("events.out.tfevents*"))
    printed = capsys.readouterr().out
    assert "step 2: adcc " in printed and "possible shortcut: False" in printed
    assert f"report: {monitor.report_path}" in printed


def test_hf_trainer(tmp_path, capsys):
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    trainer = _main("hf_trainer.py")(
        ["--steps", "2", "--eval-steps", "2", "--num-train", "16", "--num-eval", "8",
         "--size", "32", "--out", str(out)]
    )  # fmt: skip
    assert trainer.state.global_step == 2
    assert (out / "vitrcam" / "report.html").is_file()
    assert list((out / "runs").rglob("events.out.tfevents*"))  # the Trainer's TensorBoard
    from lightning_vitrcam.hf import ViTReciproCAMTrainerCallback

    (callback,) = [
        c for c in trainer.callback_handler.callbacks if isinstance(c, ViTReciproCAMTrainerCallback)
    ]
    assert [r["step"] for r in callback.history] == [2]
    assert "'eval_vitrcam/adcc'" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name",
    ["minimal.py", "shortcut_detection.py", "custom_model.py", "plain_loop.py", "hf_trainer.py"],
)
def test_examples_have_docstring_usage(name):
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""') and f"python examples/{name}" in text
