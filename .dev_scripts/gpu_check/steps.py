"""The steps of ``make gpu-check``, in the order they run.

device -> wheels -> build -> cuda-tests -> op-fp32 / op-bf16 / op-fp16 /
op-deterministic -> synthetic-data -> train-fp16 / train-bf16 -> test-fp16 ->
coco-step -> dist -> inference. Each is a function of the
:class:`~.runner.CheckContext` that returns (figures, note) or raises
:class:`~.runner.StepFailed`. Tools and workers run as subprocesses through
their command lines; the sizes of both modes are in :data:`GPU_SIZES` and
:data:`DRY_SIZES`.
"""
import json
import math
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from .runner import CheckContext, Step, StepFailed
from .wheels import check_wheels, find_wheels, install_command

Figures = Dict[str, str]


@dataclass(frozen=True)
class Sizes:
    """How much each step does in one mode (GPU check or CPU dry run)."""
    synthetic_train: int  # images of the synthetic training set
    synthetic_val: int
    train_iters: int  # iterations of each synthetic training run (batch 8)
    log_interval: int
    op_args: Tuple[str, ...]  # benchmark_op.py arguments besides device and dtype
    coco_image: Tuple[int, int]  # (H, W) of the COCO-shaped training step
    coco_iters: Tuple[int, int]  # (warm-up, timed)
    infer_image: Tuple[int, int]
    infer_iters: Tuple[int, int]
    compile_backend: str
    dist_processes: int
    dist_iters: int


# ~300 iterations of 8 images per precision; 800x1067 training, 800x1333 inference.
GPU_SIZES = Sizes(1000, 100, 300, 10, ('--repeats', '20', '--min-seconds', '0.5'), (800, 1067),
                  (3, 10), (800, 1333), (3, 20), 'inductor', 1, 20)
# Tiny; inductor's compilation alone would take minutes on 2 CPU cores: dynamo only.
DRY_SIZES = Sizes(16, 4, 2, 1, ('--repeats', '1', '--min-seconds', '0'), (64, 96), (1, 1),
                  (64, 96), (1, 1), 'eager', 1, 2)
# Which tests use CUDA: a test file under tests_dir that mentions it (this check's own test
# runs the dry run and is left out).
CUDA_TEST_PATTERN = re.compile(r'\bcuda\b')
OWN_TEST = 'test_gpu_check.py'


def sizes(ctx: CheckContext) -> Sizes:
    return DRY_SIZES if ctx.dry_run else GPU_SIZES


def _last_result(result, what: str) -> dict:
    found = result.results()
    if not result.ok or not found:
        raise StepFailed(result.failure(what))
    return found[-1]


def step_device(ctx: CheckContext) -> Tuple[Figures, str]:
    info = _last_result(ctx.worker('device', 'device-info', [], 120), 'device-info worker')
    ctx.info['capability'] = info['capability']
    nvcc = 'not found'
    if shutil.which('nvcc'):
        out = subprocess.run(['nvcc', '--version'], capture_output=True, text=True).stdout
        nvcc = (re.findall(r'release ([\d.]+)', out) or ['?'])[0]
    device = info['name'] + (f", compute capability {info['capability']}, "
                             f"{info['multiprocessors']} SMs, {info['memory_gib']} GiB"
                             if info['capability'] else '')
    ctx.info['device_line'] = (f"{device}; torch {info['torch']} (CUDA {info['cuda']}), nvcc "
                               f"{nvcc}, Python {info['python']}, {info['cpus']} CPUs")
    return dict(device=device, torch=info['torch'], nvcc=nvcc), ''


def step_wheels(ctx: CheckContext) -> Tuple[Figures, str]:
    try:
        wheels = find_wheels(Path(ctx.layout.path(ctx.layout.wheel_dir)))
    except FileNotFoundError as err:
        raise StepFailed(str(err)) from None
    problems = check_wheels(wheels)
    if problems:
        raise StepFailed('; '.join(problems))
    python = ctx.info.get('wheel_python') or ctx.python
    result = ctx.run('wheels', install_command(python, wheels, ctx.site_dir), 120)
    if not result.ok:
        raise StepFailed(result.failure('pip install'))
    missing = [w.path.name for w in wheels
               if not list(ctx.site_dir.glob(f'{w.path.name.split("-")[0]}-*.dist-info'))]
    if missing:
        raise StepFailed(f'pip left no dist-info of {missing} in {ctx.site_dir}')
    figures = dict(wheels=str(len(wheels)),
                   MiB=f'{sum(w.path.stat().st_size for w in wheels) / 2**20:.1f}',
                   install=f'{result.seconds:.1f} s')
    note = (f'installed with {python} into {ctx.site_dir} for CPython 3.12 (not put on the '
            'path in a dry run)' if ctx.dry_run else '')
    return figures, note


def step_build(ctx: CheckContext) -> Tuple[Figures, str]:
    figures, note = {}, ''
    if ctx.dry_run:
        note = 'dry run: no CUDA build (needs CUDA); checked the existing build loads'
    else:
        arch = ctx.info.get('capability')
        if not arch:
            raise StepFailed('no compute capability (the device step failed)')
        jobs = str(os.cpu_count())
        env = ctx.env(dict(MMDEFORM_WITH_CUDA='1', TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=jobs))
        cmd = [ctx.python, '-m', 'pip', 'install', '--no-build-isolation', '--no-deps',
               '--no-index', '--disable-pip-version-check', '-e', str(ctx.layout.root)]
        result = ctx.run('build', cmd, 300, env=env)
        figures.update(build=f'{result.seconds:.0f} s', arch=arch, MAX_JOBS=jobs)
        if not result.ok:
            raise StepFailed(result.failure('pip install -e . (CUDA build)', 1500), figures)
    info = _last_result(ctx.worker('backend', 'backend', [], 120), 'backend worker')
    figures.update(backend=info['backend'],
                   max_diff_vs_reference=f"{info['max_abs_difference']:.1e}")
    if info['backend'] != 'compiled' or not info['max_abs_difference'] < 1e-4:
        raise StepFailed(f'{ctx.device}: backend {info["backend"]}, largest difference from '
                         f'the reference {info["max_abs_difference"]}', figures)
    return figures, note


def cuda_test_files(tests_dir: Path) -> List[Path]:
    """Test files under ``tests_dir`` that mention CUDA (not this check's own)."""
    return [p for p in sorted(Path(tests_dir).rglob('test_*.py'))
            if p.name != OWN_TEST and CUDA_TEST_PATTERN.search(p.read_text())]


def pytest_counts(output: str) -> Dict[str, int]:
    """{'passed': n, 'failed': n, ...} from pytest's last summary line."""
    lines = [line for line in output.splitlines()
             if re.search(r'\d+ (passed|failed|skipped|errors?)\b', line)]
    if not lines:
        return {}
    return {word: int(n) for n, word in re.findall(r'(\d+) ([a-z]+)', lines[-1])}


def step_cuda_tests(ctx: CheckContext) -> Tuple[Figures, str]:
    files = cuda_test_files(Path(ctx.layout.path(ctx.layout.tests_dir)))
    if not files:
        raise StepFailed(f'no test file under {ctx.layout.tests_dir} mentions cuda')
    cmd = [ctx.python, '-m', 'pytest', '-q', '-rfEs', '-p', 'no:cacheprovider', *map(str, files)]
    result = ctx.run('cuda-tests', cmd, 200)
    counts = pytest_counts(result.output)
    figures = dict(files=str(len(files)), **{k: str(v) for k, v in counts.items()})
    failed = [line for line in result.output.splitlines() if line.startswith(('FAILED', 'ERROR'))]
    if not result.ok:
        raise StepFailed(result.failure('pytest') if not failed else '; '.join(failed)[:1500],
                         figures)
    skipped_for_cuda = [line for line in result.output.splitlines()
                        if line.startswith('SKIPPED') and 'CUDA' in line]
    if not ctx.dry_run and skipped_for_cuda:
        raise StepFailed(f'{len(skipped_for_cuda)} skipped for want of CUDA: '
                         + '; '.join(skipped_for_cuda)[:1000], figures)
    return figures, ('dry run: the CUDA tests skip' if ctx.dry_run else '')


def parse_markdown_table(output: str) -> List[Dict[str, str]]:
    """Rows of the first markdown table in ``output`` as {header: cell}."""
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith('|')]
    if len(lines) < 2:
        return []
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    return [dict(zip(header, (c.strip() for c in line.strip('|').split('|'))))
            for line in lines[1:] if not set(line) <= set('|-: ')]


def _ms(cell: str) -> float:
    return float(cell.split()[0])


def _run_op_benchmark(ctx: CheckContext, label: str, cmd: List[str]):
    """``ctx.run(cmd)``, once per command line: in a dry run the float16 and
    bfloat16 steps run op-fp32's very command, and take its result."""
    done = ctx.info.setdefault('op_commands', {})
    key = tuple(map(str, cmd))
    if key not in done:
        done[key] = ctx.run(label, cmd, 120)
    return done[key]


def make_op_step(dtype: str, deterministic: bool = False):
    """A step running ``benchmark_op.py`` in ``dtype`` (float32 in a dry run: torch
    2.13's CPU grid_sample, the reference, crashes in half precision)."""
    def step(ctx: CheckContext) -> Tuple[Figures, str]:
        run_dtype = 'float32' if ctx.dry_run else dtype
        cmd = [ctx.python, ctx.layout.path(ctx.layout.op_benchmark_tool), '--device',
               ctx.device, '--dtype', run_dtype, *sizes(ctx).op_args]
        cmd += ctx.info.get('op_dry_run_args', []) if ctx.dry_run else []
        result = _run_op_benchmark(ctx, f'op {dtype}',
                                   cmd + (['--deterministic'] if deterministic else []))
        rows = parse_markdown_table(result.output)
        if not result.ok or not rows:
            raise StepFailed(result.failure('benchmark_op.py'))
        figures = {}
        default = ctx.info.get('op_rows_float32', {})
        for row in rows:
            text = (f"fwd {row['fwd compiled']} ({row['fwd speed-up']} vs ref), fwd+bwd "
                    f"{row['fwd+bwd compiled']} ({row['fwd+bwd speed-up']}), peak "
                    f"{row['peak mem compiled']} / ref {row['peak mem reference']}")
            if deterministic and row['shape'] in default:
                ratio = _ms(row['fwd+bwd compiled']) / _ms(default[row['shape']])
                text = f'fwd+bwd {row["fwd+bwd compiled"]} = {ratio:.2f}x the default'
            figures[row['shape']] = text
        if dtype == 'float32' and not deterministic:
            ctx.info['op_rows_float32'] = {r['shape']: r['fwd+bwd compiled'] for r in rows}
        note = (f"dry run: {run_dtype} on the CPU (op-fp32's run)"
                if ctx.dry_run and run_dtype != dtype else '')
        return figures, note
    return step


def _workspace(ctx: CheckContext) -> Path:
    """The folder the synthetic config runs in (it reads ./data/synthetic/)."""
    return ctx.work_dir / 'synthetic'


def step_synthetic_data(ctx: CheckContext) -> Tuple[Figures, str]:
    s = sizes(ctx)
    out = _workspace(ctx) / 'data' / 'synthetic'
    cmd = [ctx.python, ctx.layout.path(ctx.layout.synthetic_data_tool), str(out), '--num-train',
           str(s.synthetic_train), '--num-val', str(s.synthetic_val)]
    result = ctx.run('synthetic data', cmd, 90)
    if not result.ok:
        raise StepFailed(result.failure('make_synthetic_coco.py'))
    return dict(train=str(s.synthetic_train), val=str(s.synthetic_val)), ''


def read_scalars(work_dir: Path) -> Tuple[List[dict], List[dict]]:
    """(training lines, validation lines) of the latest run's ``scalars.json``."""
    logs = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    if not logs:
        raise StepFailed(f'no */vis_data/scalars.json in {work_dir}')
    lines = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
    return ([x for x in lines if 'loss' in x], [x for x in lines if 'coco/bbox_mAP' in x])


def _train_options(iters: int, log_interval: int) -> List[str]:
    return [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'default_hooks.checkpoint.interval={iters}',
            f'default_hooks.logger.interval={log_interval}',
            f'log_processor.window_size={log_interval}']


def make_train_step(precision: str):
    """A step training the synthetic config with ``--amp`` in ``precision``
    ('fp16': mmengine's default AMP dtype on CUDA; 'bf16'), validating at the end."""
    def step(ctx: CheckContext) -> Tuple[Figures, str]:
        s = sizes(ctx)
        work_dir = ctx.work_dir / f'train-{precision}'
        options = _train_options(s.train_iters, s.log_interval)
        options += ['optim_wrapper.dtype=bfloat16'] if precision == 'bf16' else []
        cmd = [ctx.python, ctx.layout.path(ctx.layout.train_tool),
               ctx.layout.path(ctx.layout.synthetic_config), '--amp', '--work-dir',
               str(work_dir), '--cfg-options', *options]
        result = ctx.run(f'train {precision}', cmd, 180, cwd=str(_workspace(ctx)))
        if not result.ok:
            raise StepFailed(result.failure('train.py'))
        train, val = read_scalars(work_dir)
        losses = [x['loss'] for x in train]
        times = sorted(x['time'] for x in train if 'time' in x)
        figures = dict(iters=str(train[-1]['iter']) if train else '0',
                       loss=' -> '.join(f'{v:.3f}' for v in losses[:1] + losses[-1:]),
                       s_per_iter=f'{times[len(times) // 2]:.3f}' if times else '?',
                       mAP=f"{val[-1]['coco/bbox_mAP']:.3f}" if val else 'none')
        ctx.info[f'checkpoint_{precision}'] = str(work_dir / f'iter_{s.train_iters}.pth')
        ctx.info[f'mAP_{precision}'] = figures['mAP']
        if not losses or not all(math.isfinite(v) for v in losses):
            raise StepFailed(f'losses not all finite: {losses}', figures)
        if not val:
            raise StepFailed('no validation result in the log', figures)
        if ctx.dry_run:
            return figures, 'dry run: falling losses not judged'
        k = max(1, len(losses) // 4)
        if not sum(losses[-k:]) / k < sum(losses[:k]) / k:
            raise StepFailed(f'losses do not fall: first {losses[:k]}, last {losses[-k:]}',
                             figures)
        return figures, ''
    return step


def step_test(ctx: CheckContext) -> Tuple[Figures, str]:
    checkpoint = ctx.info.get('checkpoint_fp16')
    if not checkpoint or not Path(checkpoint).is_file():
        raise StepFailed(f'no checkpoint of train-fp16 ({checkpoint})')
    cmd = [ctx.python, ctx.layout.path(ctx.layout.test_tool),
           ctx.layout.path(ctx.layout.synthetic_config), checkpoint, '--work-dir',
           str(ctx.work_dir / 'test-fp16')]
    result = ctx.run('test fp16', cmd, 90, cwd=str(_workspace(ctx)))
    found = re.findall(r'coco/bbox_mAP: (-?[\d.]+)', result.output)
    if not result.ok or not found:
        raise StepFailed(result.failure('test.py'))
    mAP, at_training = float(found[-1]), ctx.info.get('mAP_fp16')
    note = '' if at_training in (None, 'none') or abs(mAP - float(at_training)) < 1e-3 else (
        f'differs from the validation at the end of training ({at_training})')
    return dict(mAP=f'{mAP:.3f}'), note


def step_coco_train_step(ctx: CheckContext) -> Tuple[Figures, str]:
    s = sizes(ctx)
    args = ['--config', ctx.layout.path(ctx.layout.base_config), '--image-size',
            *map(str, s.coco_image), '--batch-size', '2', '--warmup', str(s.coco_iters[0]),
            '--iters', str(s.coco_iters[1]), '--precisions', 'fp32', 'amp']
    result = ctx.worker('coco step', 'coco-train-step', args, 180)
    figures = {}
    for r in result.results():
        memory = '' if r['peak_memory_mib'] is None else f", peak {r['peak_memory_mib']:.0f} MiB"
        figures[f"{r['precision']} ({r['dtype'].replace('torch.', '')})"] = (
            f"{r['ms_per_iter']:.0f} ms/iter{memory}, loss {r['last_loss']:.2f}")
        if not r['losses_finite']:
            raise StepFailed(f"{r['precision']}: a loss is not finite", figures)
    if not result.ok or len(figures) < 2:
        raise StepFailed(result.failure('coco-train-step worker'), figures)
    return figures, f'base config, batch 2 at {s.coco_image[0]}x{s.coco_image[1]}, random boxes'


def step_inference(ctx: CheckContext) -> Tuple[Figures, str]:
    s = sizes(ctx)
    args = ['--config', ctx.layout.path(ctx.layout.base_config), '--image-size',
            *map(str, s.infer_image), '--warmup', str(s.infer_iters[0]), '--iters',
            str(s.infer_iters[1]), '--compile-backend', s.compile_backend]
    result = ctx.worker('inference', 'inference', args, 240)
    figures = {}
    for r in result.results():
        figures[r['variant']] = r.get('error') or (
            f"{r['images_per_s']:.1f} images/s ({r['latency_ms']:.1f} ms"
            + (f", {r['wall_s']:.0f} s with compilation" if r['variant'] == 'compile' else '')
            + ')')
    if not result.ok or len(figures) < 3:
        raise StepFailed(result.failure('inference worker'), figures)
    return figures, (f'batch 1 at {s.infer_image[0]}x{s.infer_image[1]}, torch.compile '
                     f'backend {s.compile_backend}')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def step_dist(ctx: CheckContext) -> Tuple[Figures, str]:
    s = sizes(ctx)
    work_dir = ctx.work_dir / 'dist'
    cmd = ['bash', ctx.layout.path(ctx.layout.dist_train_tool),
           ctx.layout.path(ctx.layout.synthetic_config), str(s.dist_processes), '--work-dir',
           str(work_dir), '--cfg-options', *_train_options(s.dist_iters, 1)]
    env = ctx.env(dict(PORT=str(_free_port())))
    result = ctx.run('dist', cmd, 150, cwd=str(_workspace(ctx)), env=env)
    if not result.ok:
        raise StepFailed(result.failure('dist_train.sh'))
    train, val = read_scalars(work_dir)
    if not train or not val:
        raise StepFailed(f'dist_train.sh logged {len(train)} losses, {len(val)} validations')
    figures = dict(processes=str(s.dist_processes), iters=str(train[-1]['iter']),
                   mAP=f"{val[-1]['coco/bbox_mAP']:.3f}")
    return figures, ('one process per GPU: two processes cannot share one GPU (mmengine sets '
                     'device LOCAL_RANK, NCCL refuses a GPU twice)' if not ctx.dry_run else '')


STEPS = [
    Step('device', step_device, 'torch, CUDA and the GPU'),
    Step('wheels', step_wheels, 'check and install the carried wheels into a target dir'),
    Step('build', step_build, 'build mmdeform._C with CUDA for this GPU, all cores'),
    Step('cuda-tests', step_cuda_tests, 'the tests that use CUDA'),
    Step('op-fp32', make_op_step('float32'), 'op benchmark, float32'),
    Step('op-bf16', make_op_step('bfloat16'), 'op benchmark, bfloat16'),
    Step('op-fp16', make_op_step('float16'), 'op benchmark, float16'),
    Step('op-deterministic', make_op_step('float32', deterministic=True),
         'op benchmark, deterministic backward'),
    Step('synthetic-data', step_synthetic_data, 'the synthetic shapes dataset'),
    Step('train-fp16', make_train_step('fp16'), 'synthetic config, --amp (float16)'),
    Step('train-bf16', make_train_step('bf16'), 'synthetic config, --amp bfloat16'),
    Step('test-fp16', step_test, 'tools/test.py on the fp16 checkpoint'),
    Step('coco-step', step_coco_train_step, 'COCO-shaped training step, fp32 and AMP'),
    Step('dist', step_dist, 'tools/dist_train.sh'),
    # Last: torch.compile's compilation is what most likely runs long.
    Step('inference', step_inference, 'inference images/s: fp32, bf16, torch.compile'),
]
