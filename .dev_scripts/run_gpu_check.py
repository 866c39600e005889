"""Prove the GPU path in one command: ``make gpu-check`` (dry run: ``make gpu-check DRY_RUN=1``).

Usage: python .dev_scripts/run_gpu_check.py [--dry-run] [--steps STEP ...] [--budget-s S]
       [--work-dir DIR] [--out DIR] [--wheel-python PY]

Installs the wheels of .whl/ (.dev_scripts/gpu_wheels.sh), builds mmdeform._C with CUDA,
runs the CUDA tests, the op benchmark, AMP training, a COCO-shaped training step,
inference speed and the distributed launcher, each under its own time limit,
and ends with a summary table (also $OUT/gpu_check.md). The steps are in
.dev_scripts/gpu_check/; this file only says where the project's pieces are. It
needs nothing but the standard library to start: run it with PYTHONPATH=<repo>.
"""
import sys
from pathlib import Path

from gpu_check.cli import main
from gpu_check.runner import RepoLayout

ROOT = Path(__file__).resolve().parents[1]
# The tools and configs the check runs, by their command lines (relative to ROOT).
TRAIN_TOOL = 'tools/train.py'
TEST_TOOL = 'tools/test.py'
DIST_TRAIN_TOOL = 'tools/dist_train.sh'
OP_BENCHMARK_TOOL = 'tools/benchmark_op.py'
SYNTHETIC_DATA_TOOL = 'tools/make_synthetic_coco.py'
SYNTHETIC_CONFIG = ('projects/synthetic_ablations/configs/'
                    'deformable-detr-refine-twostage_r18_1xb8-800i_synthetic.py')
BASE_CONFIG = 'configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
TESTS_DIR = 'tests'
WHEEL_DIR = '.whl'
# A dry run benchmarks one small CPU shape of benchmark_op.py.
OP_DRY_RUN_ARGS = ('--shapes', 'decoder 512x512 (Lq=300)')

LAYOUT = RepoLayout(root=ROOT, check_tool='.dev_scripts/run_gpu_check.py', train_tool=TRAIN_TOOL,
                    test_tool=TEST_TOOL, dist_train_tool=DIST_TRAIN_TOOL,
                    op_benchmark_tool=OP_BENCHMARK_TOOL, synthetic_data_tool=SYNTHETIC_DATA_TOOL,
                    synthetic_config=SYNTHETIC_CONFIG, base_config=BASE_CONFIG,
                    tests_dir=TESTS_DIR, wheel_dir=WHEEL_DIR)

if __name__ == '__main__':
    sys.exit(main(LAYOUT, op_dry_run_args=OP_DRY_RUN_ARGS))
