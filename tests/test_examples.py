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


@pytest.mark.parametrize("name", ["minimal.py", "shortcut_detection.py", "custom_model.py"])
def test_examples_have_docstring_usage(name):
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""') and f"python examples/{name}" in text
