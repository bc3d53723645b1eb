#!/usr/bin/env bash
# The GPU checks of lightning-vitrcam in one run of at most 5 minutes on one CUDA GPU:
#   (a) engine: fast vs general path and bf16 autocast vs float32 (benchmarks/gpu_engine_check.py)
#   (b) speed: benchmarks/bench_cam.py, ViT-B/16, batch 32, float32 and bf16 autocast
#   (c) callback overhead on a ViT-B/16 fit under bf16-mixed (benchmarks/gpu_overhead.py)
#   (d) the callback in a strategy="fsdp" fit on one device (benchmarks/fsdp_smoke.py)
# and one table at the end. Run from anywhere:
#
#   bash benchmarks/gpu_check.sh                 # .venv/bin/python if it runs, else python3
#   PYTHON=python3 bash benchmarks/gpu_check.sh
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # dry run of this script: small CPU modes
#
# The repository is put on PYTHONPATH, so an interpreter with torch, lightning, timm,
# torchmetrics, tensorboard and matplotlib is enough (no install of this package needed).
# Each step has its own timeout and the whole run a budget (GPU_CHECK_BUDGET, default 290 s):
# a step that would not fit is skipped. Full logs go to $GPU_CHECK_LOGS (default: $OUT when
# set, else a temporary folder); the screen gets one line per step. Exit status 1 when a step
# failed, timed out or was skipped, or when CUDA is unavailable (checked first, in seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUDGET=${GPU_CHECK_BUDGET:-290}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
LOGS=${GPU_CHECK_LOGS:-${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}}
mkdir -p "$LOGS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
SECONDS=0

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PY=.venv/bin/python
else
    PY=python3
fi

# fail fast, saying why, when there is no usable CUDA device
if ! DEVICE=$DEVICE timeout 60 "$PY" - >"$LOGS/preflight.log" 2>&1 <<'PY'
import os, sys
try:
    import torch
except Exception as err:
    sys.exit(f"cannot import torch: {err}")
if os.environ["DEVICE"] == "cuda" and not torch.cuda.is_available():
    why = "torch has no CUDA build" if torch.version.cuda is None else "no CUDA device visible"
    sys.exit(f"CUDA unavailable: {why} (torch {torch.__version__}, CUDA {torch.version.cuda})")
import lightning, timm, torchmetrics  # noqa: F401,E401 - what every step needs
import lightning_vitrcam  # noqa: F401
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (dry run)"
print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, lightning {lightning.__version__}")
PY
then
    echo "gpu_check: FAIL before any step (python: $PY):" >&2
    tail -5 "$LOGS/preflight.log" >&2
    command -v nvidia-smi >/dev/null && nvidia-smi -L >&2
    exit 1
fi
echo "gpu_check: $(tail -1 "$LOGS/preflight.log"); python $PY; logs in $LOGS"

ROWS=()
FAILED=0
# step NAME TIMEOUT SUMMARY_REGEX COMMAND...: run with the smaller of TIMEOUT and what is left of
# the budget; the table gets the output lines matching SUMMARY_REGEX, joined (else the last line)
step() {
    local name=$1 limit=$2 pattern=$3
    shift 3
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 20 ]; then
        ROWS+=("| $name | skipped | 0 | budget of ${BUDGET}s spent |")
        FAILED=1
        echo "-- $name: skipped (budget spent)"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    local log="$LOGS/$name.log" start=$SECONDS status rc
    timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timeout ${limit}s" ;;
        *) status="exit $rc" ;;
    esac
    [ "$rc" -eq 0 ] || FAILED=1
    local summary
    summary=$(grep -E "$pattern" "$log" | sed 's/^[|] *//; s/ *[|] */ /g; s/  */ /g' | paste -sd ';' -)
    [ -n "$summary" ] || summary=$(grep -v '^[[:space:]]*$' "$log" | tail -1 | tr '|' '/')
    summary=$(printf '%s' "$summary" | cut -c1-200)
    ROWS+=("| $name | $status | $((SECONDS - start)) | $summary |")
    echo "-- $name: $status in $((SECONDS - start))s: $summary"
    if [ "$rc" -ne 0 ]; then grep -v '^[[:space:]]*$' "$log" | tail -5 | sed 's/^/   /'; fi
}

if [ "$DEVICE" = cuda ]; then
    MODE=(--device cuda)
    CAM=(--device cuda --batch 32)
else  # the dry run: every Python part in its small CPU mode
    MODE=(--device cpu --quick)
    CAM=(--device cpu --quick --families timm)
fi
# cheap and decisive first: when the budget runs out, the benchmarks are what is skipped
step engine 75 '^RESULT' "$PY" benchmarks/gpu_engine_check.py "${MODE[@]}"
step fsdp 50 '^RESULT' "$PY" benchmarks/fsdp_smoke.py "${MODE[@]}"
step overhead 75 '^RESULT' "$PY" benchmarks/gpu_overhead.py "${MODE[@]}"
step cam_fp32 60 '[|] fast path [|]' "$PY" benchmarks/bench_cam.py "${CAM[@]}"
step cam_bf16 60 '[|] fast path [|]' "$PY" benchmarks/bench_cam.py "${CAM[@]}" --amp bf16

echo
echo "| step | status | s | result |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo "total ${SECONDS}s; cam rows: family, ms/image of the fast path, x plain forward, literal/this"
exit $FAILED
