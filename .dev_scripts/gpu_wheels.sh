#!/usr/bin/env bash
# Download into .whl/ the wheels that a GPU machine with only torch, numpy, opencv and
# matplotlib (and no package index) lacks to run mmdeform: mmengine, mmcv-lite, pycocotools
# and those of their dependencies the GPU image does not have. Run it where pip reaches an
# index; `make gpu-check` on the GPU machine installs them with --no-index into a target dir.
#
# Usage: bash .dev_scripts/gpu_wheels.sh [WHEEL_DIR]      (default .whl; PYTHON=python3)
# Target: CPython 3.12, manylinux x86-64 (torch 2.11+cu130 image). Never torch, numpy,
# opencv or matplotlib: the image has them, and a second copy would shadow its own.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WHEEL_DIR=${1:-$ROOT/.whl}
PYTHON=${PYTHON:-python3}
PY_VERSION=3.12
# pip matches each manylinux tag exactly: list the ones the wheels use.
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

# Our own three at the versions of requirements/constraints.txt (one owner of each version).
pinned() {
    local line
    line=$(grep -E "^$1==" "$ROOT/requirements/constraints.txt") ||
        { echo "gpu_wheels.sh: $1 is not pinned in requirements/constraints.txt" >&2; exit 1; }
    echo "$line"
}
PACKAGES=("$(pinned mmengine)" "$(pinned mmcv-lite)" "$(pinned pycocotools)")
# Their requirements that the GPU image lacks (numpy, pyyaml, rich, packaging, pillow,
# matplotlib and opencv-python-headless are there). yapf needs platformdirs; tomli only
# below Python 3.11. `make gpu-check DRY_RUN=1` checks that nothing is missing.
PACKAGES+=(addict termcolor yapf platformdirs)

mkdir -p "$WHEEL_DIR"
rm -f "$WHEEL_DIR"/*.whl
PLATFORM_ARGS=()
for p in "${PLATFORMS[@]}"; do PLATFORM_ARGS+=(--platform "$p"); done
# The project's constraints pin a CPU torch for .venv; they mean nothing for these wheels.
env -u PIP_CONSTRAINT "$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp "${PLATFORM_ARGS[@]}" \
    -d "$WHEEL_DIR" "${PACKAGES[@]}"
echo "gpu_wheels.sh: $(ls "$WHEEL_DIR"/*.whl | wc -l) wheels, $(du -sh "$WHEEL_DIR" | cut -f1)" \
     "in $WHEEL_DIR:"
ls "$WHEEL_DIR"
