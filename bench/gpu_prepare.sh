#!/usr/bin/env bash
# Prepare bench/gpu_check.sh for a GPU machine without network: run HERE (a machine with PyPI and
# ../shared/data), then carry the folder it fills, .gpu_check/, to the GPU machine with the working tree.
#
#   bash bench/gpu_prepare.sh            # -> .gpu_check/wheels/*.whl and .gpu_check/data/{lego, garden, ply}
#
# Wheels: the Python packages our code needs that the GPU image lacks or may hold at another version
# (gsplat, lightning, jsonargparse and its [signatures] extras), at the versions this checkout's .venv runs,
# all pure Python (py3-none-any), fetched without dependencies for CPython 3.12 / manylinux x86_64.
# Data: the scenes the check trains and tests on. The whole travelling tree must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu_check
LIMIT_MIB=64
SHARED=${GS_SHARED_DATA:-../shared/data}
VENV_PY=.venv/bin/python
# name in requirements/pip freeze -> carried; everything else the image has (KINDS.md's package list)
PACKAGES=(gsplat lightning jsonargparse docstring-parser typeshed-client importlib-resources)
[ -x "$VENV_PY" ] || { echo "error: $VENV_PY not found: run make setup first (the wheels follow its versions)" >&2; exit 1; }
[ -d "$SHARED/nerf_synthetic_lego_400" ] || { echo "error: $SHARED/nerf_synthetic_lego_400 not found (set GS_SHARED_DATA)" >&2; exit 1; }

freeze=$("$VENV_PY" -m pip --disable-pip-version-check freeze 2>/dev/null)
pins=()
for name in "${PACKAGES[@]}"; do
    pin=$(grep -i -E "^${name//-/[-_]}==" <<<"$freeze" || true)
    if [ -z "$pin" ]; then
        case $name in importlib-resources) continue ;; esac  # only some versions of typeshed-client need it
        echo "error: $name is not installed in .venv (make setup)" >&2; exit 1
    fi
    pins+=("$pin")
done
rm -rf "$DEST/wheels" && mkdir -p "$DEST/wheels" "$DEST/data"
echo "[prepare] downloading ${pins[*]}"
python3 -m pip --disable-pip-version-check download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST/wheels" "${pins[@]}"
for whl in "$DEST"/wheels/*.whl; do
    case $whl in *-py3-none-any.whl|*-py2.py3-none-any.whl) ;; *) echo "error: $whl is not pure Python" >&2; exit 1 ;; esac
done
echo "[prepare] copying data from $SHARED"
rm -rf "$DEST/data" && mkdir -p "$DEST/data/gaussians_ply"
cp -r "$SHARED/nerf_synthetic_lego_400" "$SHARED/gsplat_test_garden" "$DEST/data/"
cp "$SHARED/gaussians_ply/gshairlod_donut_iter30000_fused_sh0.ply" "$DEST/data/gaussians_ply/"
chmod -R u+w "$DEST"

# What travels: tracked and untracked-not-ignored files, plus this folder (carried).
tree_bytes=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
carry_bytes=$(du -sb "$DEST" | cut -f1)
total_mib=$(( (tree_bytes + carry_bytes) / 1048576 ))
ls -l "$DEST/wheels"
echo "[prepare] $DEST: $((carry_bytes / 1048576)) MiB; working tree $((tree_bytes / 1048576)) MiB; together ${total_mib} MiB of ${LIMIT_MIB}"
[ "$total_mib" -lt "$LIMIT_MIB" ] || { echo "error: over the ${LIMIT_MIB} MiB that can travel" >&2; exit 1; }
git check-ignore -q "$DEST" || { echo "error: $DEST is not ignored by git (.gitignore)" >&2; exit 1; }
echo "[prepare] done: run bench/gpu_check.sh on the GPU machine with carry [\"$DEST\"]"
