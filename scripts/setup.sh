#!/usr/bin/env bash
# Creates .venv in the repository root and installs everything the project needs from its own files:
# torch first (pinned, CPU wheel here), then the rest held to that torch by constraints.txt, then our
# native extension built against it with --no-build-isolation, then the optional SDS extra
# (requirements-sds.txt). Re-running is cheap: a stamp records the hash of the requirement files and of
# the extension sources (not of the build/ folder the build writes beside them: with it, the second run
# rebuilt everything), and only a change reinstalls.
#
# On a machine with an NVIDIA GPU (nvidia-smi works) it also makes sure torch is a CUDA build
# (torch==2.13.0 from PyPI is one, for CUDA 13.0; TORCH_INDEX_URL picks another index, e.g.
# https://download.pytorch.org/whl/cu126 for an older driver) and compiles gsplat's CUDA kernels once,
# with progress shown (internal/rasterize/gsplat_build.py). GS_GPU=0 skips all of that; GS_GPU=1 insists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
GPU=0
case ${GS_GPU:-auto} in
    0) ;;
    1) GPU=1 ;;
    *) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; fi ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
stamp="$VENV/.project-stamp"
hash=$( (cat requirements-first.txt requirements-second.txt requirements-sds.txt constraints.txt \
       $(find submodules -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.py' -o -name '*.toml' \) \
             -not -path '*/build/*' -not -path '*.egg-info/*' | sort);
       if [ $GPU = 1 ]; then echo "gpu ${TORCH_INDEX_URL:-}"; cat internal/rasterize/gsplat_build.py; fi) \
       | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
    echo "[setup] $VENV is up to date"
    exit 0
fi
if [ $GPU = 1 ]; then
    gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
    cap=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1 || true)
    echo "[setup] NVIDIA GPU: ${gpu:-none reported by nvidia-smi} (driver supports CUDA ${cap:-?})"
    # A CPU-only torch already in .venv would satisfy the pin: replace it with a CUDA build.
    if "$VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)' 2>/dev/null; then
        "${PIP[@]}" uninstall -q -y torch
    fi
    echo "[setup] installing torch 2.13.0 with CUDA${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL} (a few GB the first time)"
    "${PIP[@]}" install -q -c constraints.txt ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
    "$VENV/bin/python" -W ignore::UserWarning - <<'PY'  # (torch warns that numpy is not installed yet)
import subprocess, sys, torch
if torch.version.cuda is None:
    sys.exit(f"[setup] pip installed a CPU-only torch ({torch.__version__}): your pip configuration offers one "
             "(see `pip config list`: find-links or index-url). Point it at PyPI or set TORCH_INDEX_URL to a CUDA "
             "index (e.g. https://download.pytorch.org/whl/cu130), then run setup again; or GS_GPU=0 for the CPU only.")
if not torch.cuda.is_available():
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
    except OSError:
        smi = ""
    cap = next((l.split("CUDA Version:")[1].split()[0] for l in smi.splitlines() if "CUDA Version:" in l), "?")
    sys.exit(f"[setup] torch {torch.__version__} is built for CUDA {torch.version.cuda} but cannot use the GPU: the "
             f"driver supports CUDA {cap}. Update the NVIDIA driver (CUDA 13.0 needs 580 or newer), or install a "
             "build for your CUDA: TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 scripts/setup.sh")
PY
fi
echo "[setup] installing requirements-first.txt (torch, build tools)"
"${PIP[@]}" install -q -c constraints.txt -r requirements-first.txt
echo "[setup] installing requirements-second.txt and the native extension (a minute or two)"
"${PIP[@]}" install -q -c constraints.txt --no-build-isolation -r requirements-second.txt
echo "[setup] installing requirements-sds.txt (the optional SDS extra: diffusers, transformers)"
"${PIP[@]}" install -q -c constraints.txt -r requirements-sds.txt
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} was installed; expected 2.13.0"
PY
if [ $GPU = 1 ]; then
    # Compile gsplat's kernels now (minutes, once) rather than inside the first training step.
    "$VENV/bin/python" -m internal.rasterize.gsplat_build
fi
echo "$hash" > "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
