"""Command line of ``.dev_scripts/run_gpu_check.py``: run the steps, print and write the summary."""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .runner import CheckContext, RepoLayout, format_summary, run_steps
from .steps import STEPS

# The whole check's default time limit in seconds (--budget-s).
DEFAULT_BUDGET_S = 530
LOG_LIMIT_BYTES = 15 * 2**20  # the tail of the log copied to $OUT


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    names = [s.name for s in STEPS]
    parser = argparse.ArgumentParser(
        description='Prove the GPU path of mmdeform in one command (see README, "Checking a '
        'GPU machine"). Prints a summary table; writes it to $OUT/gpu_check.md when OUT is set.')
    parser.add_argument('--dry-run', action='store_true',
                        help='on the CPU with tiny sizes: every code path that needs no CUDA')
    parser.add_argument('--steps', nargs='+', choices=names, metavar='STEP',
                        help=f'only these steps, in the usual order ({" ".join(names)})')
    parser.add_argument('--budget-s', type=float, default=DEFAULT_BUDGET_S,
                        help='wall time for the whole check; every step also has its own limit')
    parser.add_argument('--work-dir', default='work_dirs/gpu_check',
                        help='scratch folder (data, work dirs, the wheels\' target dir)')
    parser.add_argument('--out', default=os.environ.get('OUT'),
                        help='folder for gpu_check.md and gpu_check.log (default: $OUT)')
    parser.add_argument('--wheel-python',
                        help='interpreter whose pip installs the wheels (default: this one on '
                        'the GPU, python3 in a dry run)')
    return parser.parse_args(argv)


def main(layout: RepoLayout, argv: Optional[Sequence[str]] = None,
         op_dry_run_args: Sequence[str] = ()) -> int:
    """Run the check (or, with ``--worker``, one worker); returns the exit status:
    0 when every step passed.

    Args:
        layout (RepoLayout): The project's tools, configs, tests and wheel dir.
        argv (Sequence[str], optional): Arguments (default: ``sys.argv[1:]``).
        op_dry_run_args (Sequence[str]): Extra ``benchmark_op.py`` arguments of a
            dry run (e.g. one small shape).
    """
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    if '--worker' in argv:
        from .workloads import run_worker  # torch is imported by workers only
        return run_worker(argv)
    args = parse_args(argv)
    work_dir = Path(args.work_dir).resolve()
    ctx = CheckContext(layout, args.dry_run, work_dir, work_dir / 'gpu_check.log',
                       args.budget_s)
    ctx.info['wheel_python'] = args.wheel_python or ('python3' if args.dry_run else None)
    ctx.info['op_dry_run_args'] = list(op_dry_run_args)
    steps = [s for s in STEPS if not args.steps or s.name in args.steps]
    results = run_steps(ctx, steps)
    summary = format_summary(ctx, results)
    print('\n' + summary, flush=True)
    (work_dir / 'gpu_check.md').write_text(summary)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'gpu_check.md').write_text(summary)
        log = ctx.log_path.read_bytes()
        (out / 'gpu_check.log').write_bytes(log[-LOG_LIMIT_BYTES:])
        print(f'[gpu-check] summary and full log written to {out}', flush=True)
    return 0 if all(r.status == 'passed' for r in results) else 1
