#!/usr/bin/env bash
# Build the sdist and the wheel, check them with twine and install each one (not editable) into
# a fresh venv, then import it from outside the repository.
#
#   bash scripts/check_dist.sh            # uses .venv/bin/python (build, twine installed)
#   bash scripts/check_dist.sh --quick    # the wheel only, built without network (tests run this)
#   PYTHON=/path/to/python bash scripts/check_dist.sh
#
# Offline and cheap: the package is installed with --no-deps --no-index, and the fresh venv
# sees the project venv's site-packages (torch, lightning, ...) through a .pth file appended to
# its sys.path, so nothing is downloaded. Only the build step's isolated environment fetches
# setuptools from the package index. A .pth line adds a folder but does not run the .pth
# files in it, so the editable install of .venv stays inactive: the import must come from the
# fresh venv, which the script checks. --quick builds in the project venv (no isolated build
# environment, so nothing at all is fetched) and installs only the wheel.
set -euo pipefail
QUICK=0
case "${1:-}" in --quick) QUICK=1 ;; "") ;; *) echo "usage: $0 [--quick]" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vitrcam-dist.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1
fail() { echo "check_dist: FAIL: $*" >&2; exit 1; }
SECONDS=0

# 1. build (sdist, then the wheel from the sdist: proves the sdist builds) and twine check
isolation=$([ $QUICK = 1 ] && echo --no-isolation || true)
"$PY" -m build $isolation --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 ||
    { tail -40 "$WORK/build.log"; fail "build"; }
SDIST=$(ls "$WORK"/dist/*.tar.gz)
WHEEL=$(ls "$WORK"/dist/*.whl)
"$PY" -m twine check --strict "$SDIST" "$WHEEL"
echo "built $(basename "$SDIST") $(basename "$WHEEL") in ${SECONDS}s"

# 2. contents: what a source build needs is in the sdist, no working-tree junk in either
tar tzf "$SDIST" | sed 's|^[^/]*/||' | sort >"$WORK/sdist.txt"
"$PY" -m zipfile -l "$WHEEL" | awk 'NR > 1 {print $1}' | sort >"$WORK/wheel.txt"
for need in README.md pyproject.toml PKG-INFO lightning_vitrcam/__init__.py \
    lightning_vitrcam/pl.py lightning_vitrcam/adapters/__init__.py lightning_vitrcam/demo/__init__.py \
    tests/helpers.py tests/conftest.py configs/shortcut_demo.yaml examples/minimal.py; do
    grep -qx "$need" "$WORK/sdist.txt" || fail "sdist lacks $need"
done
if [ -e LICENSE ]; then grep -qx LICENSE "$WORK/sdist.txt" || fail "sdist lacks LICENSE"; fi
for need in lightning_vitrcam/__init__.py lightning_vitrcam/adapters/__init__.py \
    lightning_vitrcam/demo/__init__.py lightning_vitrcam/pl.py; do
    grep -qx "$need" "$WORK/wheel.txt" || fail "wheel lacks $need"
done
junk='(^|/)(\.venv|\.ci-venv|lightning_logs|runs|wandb|mlruns|vitrcam_out|__pycache__|\.pytest_cache|\.ruff_cache|\.git)(/|$)|\.pyc$|tfevents|\.ckpt$'
if grep -E "$junk" "$WORK/sdist.txt" "$WORK/wheel.txt"; then fail "junk in the distributions (above)"; fi
if grep -E '^tests/' "$WORK/wheel.txt"; then fail "tests/ in the wheel"; fi
echo "contents ok: sdist $(wc -l <"$WORK/sdist.txt") files, wheel $(wc -l <"$WORK/wheel.txt") files"

# 3. install each into a fresh venv and import it from outside the repository
DEPS=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dists=("$WHEEL")
[ $QUICK = 1 ] || dists+=("$SDIST")
for dist in "${dists[@]}"; do
    kind=$([ "$dist" = "$WHEEL" ] && echo wheel || echo sdist)
    venv="$WORK/venv-$kind"
    "$PY" -m venv --without-pip "$venv"
    purelib=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$DEPS" >"$purelib/_vitrcam_check_deps.pth"
    # the sdist builds with the project venv's setuptools (no isolated env: nothing to fetch)
    "$PY" -m pip --python "$venv/bin/python" install -q --no-deps --no-index \
        --no-build-isolation "$dist" || fail "pip install $kind"
    (cd "$WORK" && env -u PYTHONPATH "$venv/bin/python" - "$venv" "$kind" <<'PY'
import importlib.metadata as md
import sys
from pathlib import Path

venv, kind = Path(sys.argv[1]).resolve(), sys.argv[2]
import lightning_vitrcam
from lightning_vitrcam import ViTReciproCAM, ViTReciproCAMCallback  # noqa: F401
import lightning_vitrcam.adapters, lightning_vitrcam.demo, lightning_vitrcam.pl  # noqa: E401,F401

where = Path(lightning_vitrcam.__file__).resolve()
assert venv in where.parents, f"imported from {where}, not from the fresh venv {venv}"
meta = md.metadata("lightning-vitrcam")
assert meta["Version"] == lightning_vitrcam.__version__, (meta["Version"], lightning_vitrcam.__version__)
extras = set(meta.get_all("Provides-Extra") or [])
assert {"wandb", "mlflow", "transformers"} <= extras, extras
scripts = {e.name for e in md.entry_points(group="console_scripts")}
assert "lightning-vitrcam" in scripts, "console script missing"
print(f"{kind}: lightning_vitrcam {lightning_vitrcam.__version__} from {where.parent}, extras {sorted(extras)}")
PY
    ) || fail "import from the $kind"
done
# the console script starts (once: it is the same entry point in both)
[ $QUICK = 1 ] || "$WORK/venv-wheel/bin/lightning-vitrcam" --help >/dev/null 2>&1 ||
    fail "console script lightning-vitrcam --help"
echo "check_dist: OK in ${SECONDS}s"
