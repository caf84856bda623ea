#!/usr/bin/env bash
# Creates .venv in the repository root and installs everything the project needs from its own files:
# torch first (pinned, CPU wheel here), then the rest held to that torch by constraints.txt, then our
# native extension built against it with --no-build-isolation, then the optional SDS extra
# (requirements-sds.txt). Re-running is cheap: a stamp records the hash of the requirement files and of
# the extension sources, and only a change reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
stamp="$VENV/.project-stamp"
hash=$(cat requirements-first.txt requirements-second.txt requirements-sds.txt constraints.txt \
       $(find submodules -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.py' -o -name '*.toml' \) | sort) \
       | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
    echo "[setup] $VENV is up to date"
    exit 0
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
echo "$hash" > "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
