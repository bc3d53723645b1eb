"""The wheel builds, passes twine check, installs (not editable) into a fresh venv and imports
from there: ``scripts/check_dist.sh --quick`` (about 10 s; the full script, with the sdist and
an isolated build, runs in CI)."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_dist.sh"


@pytest.mark.timeout(300)
def test_wheel_installs_and_imports_in_a_fresh_venv() -> None:
    if not SCRIPT.exists() or shutil.which("bash") is None:
        pytest.skip("needs the source tree's scripts/check_dist.sh and bash")
    for module in ("build", "twine", "setuptools"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module} (pip install -e '.[dev]')")
    # --quick builds in this interpreter's environment: pyproject.toml needs setuptools>=77
    if int(md.version("setuptools").split(".")[0]) < 77:
        pytest.skip("needs setuptools>=77 in this environment")
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--quick"], env=env, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "check_dist: OK" in proc.stdout
    assert "wheel: lightning_vitrcam" in proc.stdout
