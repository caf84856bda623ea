#!/usr/bin/env bash
# The GPU check (issue 13), for a machine with an NVIDIA GPU, the image's python3 (torch with CUDA, nvcc) and
# no network. Prepare it first where PyPI and ../shared/data are reachable: bash bench/gpu_prepare.sh (fills
# .gpu_check/ with the missing wheels and the scenes; carry that folder with the working tree).
#
#   bash bench/gpu_check.sh                        # every phase, within $GPU_CHECK_BUDGET seconds (default 570)
#   bash bench/gpu_check.sh --phases lego,step     # some phases (a second call on the same machine reuses the build)
#   bash bench/gpu_check.sh --cpu-dry-run          # here, without a GPU: the plumbing, CPU backends, tiny runs
#
# Phases: build (gsplat's kernels, TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16), tests (tests/test_gsplat.py),
# lego (lego 400 px, 7k steps through bench/quality.py: fit + test PSNR), step (bench/gpu_step.py on lego's
# checkpoint: ms/step at ~112k Gaussians beside gsplat's own forward+backward), demo (scripts/demo.py).
# A phase that would not fit in the time left is skipped and named in the summary. Everything lands in
# $OUT (default ./gpu_check_out): gpu_check.log, summary.md (also printed last), results.jsonl,
# test_gsplat.xml, lego_contact_sheet.png.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=0
PHASES=build,tests,lego,step,demo
while [ $# -gt 0 ]; do
    case $1 in
        --cpu-dry-run) DRY=1 ;;
        --phases) PHASES=$2; shift ;;
        *) echo "usage: $0 [--cpu-dry-run] [--phases build,tests,lego,step,demo]" >&2; exit 2 ;;
    esac
    shift
done
OUT=${OUT:-$REPO/gpu_check_out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}   # kept between calls on one machine: the build is reused
BUDGET=${GPU_CHECK_BUDGET:-570}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
exec > >(tee "$OUT/gpu_check.log") 2>&1
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
want() { [[ ",$PHASES," == *",$1,"* ]]; }
record() { echo "$1" >> "$RESULTS"; }   # one JSON object per line, read by bench/gpu_summary.py
skip() { echo "[gpu_check] SKIP $1: $2"; record "{\"phase\": \"$1\", \"skipped\": \"$2\"}"; }
phase_done() { record "{\"phase\": \"$1\", \"rc\": $2, \"seconds\": $3}"; }
echo "[gpu_check] $(date -u +%FT%TZ) phases=$PHASES budget=${BUDGET}s dry_run=$DRY out=$OUT work=$WORK"

# ---- environment: data, carried wheels, the image's versions
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-16}
for d in "${GS_SHARED_DATA:-}" "$REPO/.gpu_check/data" "$REPO/shared/data" "$REPO/../shared/data"; do
    if [ -n "$d" ] && [ -d "$d/nerf_synthetic_lego_400" ]; then export GS_SHARED_DATA=$(cd "$d" && pwd); break; fi
done
echo "[gpu_check] data: ${GS_SHARED_DATA:-NOT FOUND (lego and garden phases will fail; run bench/gpu_prepare.sh and carry .gpu_check)}"
if ls "$REPO"/.gpu_check/wheels/*.whl >/dev/null 2>&1; then
    rm -rf "$WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        "$REPO"/.gpu_check/wheels/*.whl || { echo "[gpu_check] installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "[gpu_check] no carried wheels in .gpu_check/wheels: using what $PY has"
fi
# torch's JIT runs `ninja` from PATH on every load of gsplat's kernels: the interpreter's own bin/ has it.
export PATH="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$WORK/torch_extensions}  # same flags and cache in every phase
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
command -v nvcc >/dev/null && nvcc --version | tail -2
echo "[gpu_check] nvcc: $(command -v nvcc || echo none), ninja: $(command -v ninja || echo none), CUDA_HOME=${CUDA_HOME:-}"
"$PY" - "$RESULTS" <<'PY' || { echo "[gpu_check] the environment cannot import our code"; exit 1; }
import importlib.metadata as md, json, os, sys
import torch
vers = {}
for name in ("torch", "lightning", "pytorch-lightning", "jsonargparse", "gsplat", "numpy", "torchmetrics", "jaxtyping"):
    try:
        vers[name] = md.version(name)
    except md.PackageNotFoundError:
        vers[name] = None
import internal, internal.cli  # noqa: F401  (our code imports with these versions)
rec = {"phase": "env", "python": sys.version.split()[0], "versions": vers, "cuda": torch.version.cuda,
       "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "cpus": os.cpu_count()}
print(json.dumps(rec))
open(sys.argv[1], "a").write(json.dumps(rec) + "\n")
PY
if [ $DRY = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "[gpu_check] torch sees no CUDA GPU here; use --cpu-dry-run on a machine without one"; exit 1
fi

run_phase() {  # run_phase NAME NEEDED_SECONDS COMMAND...: runs under `timeout` of the time left
    local name=$1 need=$2; shift 2
    want "$name" || return 0
    local t=$(left)
    if [ "$t" -lt "$need" ]; then skip "$name" "needs ~${need}s, ${t}s left"; return 0; fi
    echo "[gpu_check] ==== $name ($(( t - 15 ))s allowed)"
    local s=$(date +%s)
    timeout --signal=INT --kill-after=10 $(( t - 15 )) "$@"
    local rc=$?
    phase_done "$name" $rc $(( $(date +%s) - s ))
    [ $rc = 124 ] && echo "[gpu_check] $name ran out of time"
    return 0
}

LEGO_STEPS=7000; DEMO_ARGS=(); DEV_ARGS=(--trainer.accelerator gpu --trainer.devices 1 --model.renderer.init_args.backend gsplat)
if [ $DRY = 1 ]; then  # tiny runs on the CPU: the same commands, arguments and files
    LEGO_STEPS=20; DEMO_ARGS=(--steps 20)
    DEV_ARGS=(--trainer.accelerator cpu --model.renderer.init_args.backend auto --data.params.blender.random_points 5000)
fi
EXP=$WORK/outputs/bench-lego400-$LEGO_STEPS

[ $DRY = 0 ] && run_phase build 240 "$PY" -m internal.rasterize.gsplat_build
run_phase tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider --durations=8 tests/test_gsplat.py \
    --junitxml="$OUT/test_gsplat.xml"
run_phase lego 150 "$PY" bench/quality.py lego400 --steps $LEGO_STEPS --output "$WORK/outputs" --json "$RESULTS" \
    "${DEV_ARGS[@]}"
[ -f "$EXP/contact_sheet_test.png" ] && cp "$EXP/contact_sheet_test.png" "$OUT/lego_contact_sheet.png"
if [ $DRY = 0 ]; then
    run_phase step 60 "$PY" bench/gpu_step.py "$EXP" --json "$RESULTS"
else  # the same script, timed on the CPU with a CPU backend standing in for gsplat
    run_phase step 60 "$PY" bench/gpu_step.py "$EXP" --json "$RESULTS" --cpu-dry-run --warmup 2 --steps 3 --repeats 2
fi
run_phase demo 90 "$PY" scripts/demo.py --data "$WORK/demo_data" --output "$WORK/outputs" "${DEMO_ARGS[@]}" \
    --trainer.enable_progress_bar false "${DEV_ARGS[@]}"
"$PY" bench/gpu_summary.py "$RESULTS" --junit "$OUT/test_gsplat.xml" --demo "$WORK/outputs/demo" \
    --elapsed $(( $(date +%s) - T0 )) | tee "$OUT/summary.md"
