"""Running the steps of a GPU check: time limits, subprocesses, results, summary.

Every step runs its commands through :meth:`CheckContext.run`, which gives each
command the smaller of its own limit and what is left of the whole check's
budget, kills the command's whole process group when it runs over, and
appends everything it printed to one log file. A step that fails or runs
out of time is recorded and the check goes on with the next one.
Standard library only (see the package docstring).
"""
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# A worker process (``.dev_scripts/run_gpu_check.py --worker``) reports each result as one
# line: this prefix, then a JSON object.
RESULT_PREFIX = 'GPUCHECK_RESULT '
SUMMARY_RESERVE_S = 5  # kept back from the budget for writing the summary
MIN_COMMAND_S = 5  # a command that would get less than this is not started
KILL_GRACE_S = 5  # after SIGTERM, before SIGKILL


class NoTimeLeft(Exception):
    """The check's budget has no room for the next command."""


class StepFailed(Exception):
    """A step found a problem; ``figures`` are what it measured before that."""

    def __init__(self, message: str, figures: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.figures = dict(figures or {})


@dataclass
class RepoLayout:
    """Where the check finds the project's tools, configs and tests.

    Paths are relative to ``root``; ``.dev_scripts/run_gpu_check.py`` owns the values.
    """
    root: Path
    check_tool: str
    train_tool: str
    test_tool: str
    dist_train_tool: str
    op_benchmark_tool: str
    synthetic_data_tool: str
    synthetic_config: str
    base_config: str
    tests_dir: str
    wheel_dir: str

    def path(self, relative: str) -> str:
        """Absolute path of ``relative`` (which may already be absolute)."""
        return str(Path(self.root, relative))


@dataclass
class CommandResult:
    """What one command did.

    Attributes:
        returncode (int | None): Exit status; None when it was killed at its limit.
        output (str): stdout and stderr, interleaved.
        seconds (float): Wall time.
        limit_s (float): The limit it ran under.
    """
    returncode: Optional[int]
    output: str
    seconds: float
    limit_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def results(self) -> List[dict]:
        """The worker results (``RESULT_PREFIX`` lines) in printed order."""
        return [json.loads(line[len(RESULT_PREFIX):]) for line in self.output.splitlines()
                if line.startswith(RESULT_PREFIX)]

    def failure(self, what: str, tail_chars: int = 600) -> str:
        """A one-paragraph reason: exit status or time-out, and the output's end."""
        if self.returncode is None:
            status = f'ran past its {self.limit_s:.0f} s limit'
        else:
            status = f'exited with {self.returncode}'
        tail = self.output[-tail_chars:].strip().replace('\n', ' | ')
        return f'{what} {status}: ...{tail}'


@dataclass
class StepResult:
    """Outcome of one step: ``status`` is 'passed', 'failed' or 'skipped'."""
    name: str
    status: str
    seconds: float
    figures: Dict[str, str] = field(default_factory=dict)
    note: str = ''


class CheckContext:
    """State shared by the steps of one check.

    Args:
        layout (RepoLayout): The project's files.
        dry_run (bool): Run on the CPU with tiny sizes.
        work_dir (Path): Scratch folder (data, work dirs, the wheels' target).
        log_path (Path): Everything the commands print goes here.
        budget_s (float): Wall time for the whole check.
        python (str): Interpreter of the tools and workers.
    """

    def __init__(self, layout: RepoLayout, dry_run: bool, work_dir: Path, log_path: Path,
                 budget_s: float, python: str = sys.executable):
        self.layout = layout
        self.dry_run = dry_run
        self.device = 'cpu' if dry_run else 'cuda'
        self.work_dir = Path(work_dir)
        self.site_dir = self.work_dir / 'site'
        self.log_path = Path(log_path)
        self.python = python
        self.budget_s = budget_s
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.info: Dict[str, object] = {}  # facts later steps need (device name, op timings)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text('')

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Environment of a command: the wheels' target dir (not in a dry run:
        its wheels are for Python 3.12) and the repository importable, the
        check's interpreter first on PATH, unbuffered output, and no pip
        constraints (the project's pin a CPU torch for ``.venv``; they mean
        nothing here)."""
        env = dict(os.environ)
        env.pop('PIP_CONSTRAINT', None)
        site = [] if self.dry_run else [str(self.site_dir)]
        paths = [*site, str(self.layout.root), env.get('PYTHONPATH', '')]
        env.update(PYTHONPATH=os.pathsep.join(p for p in paths if p), PYTHONUNBUFFERED='1',
                   # `python` in shell tools (dist_train.sh) is the check's interpreter
                   PATH=os.pathsep.join([str(Path(self.python).parent), env.get('PATH', '')]))
        if self.dry_run:
            # One thread: OpenMP threads that wait for each other make a busy small CPU
            # many times slower (a COCO-shaped step: 1.5 s with one, 9-24 s with two).
            env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
        env.update(extra or {})
        return env

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, text: str) -> None:
        with open(self.log_path, 'a') as f:
            f.write(text if text.endswith('\n') else text + '\n')

    def run(self, label: str, cmd: Sequence[str], limit_s: float, cwd: Optional[str] = None,
            env: Optional[Dict[str, str]] = None) -> CommandResult:
        """Run ``cmd`` for at most ``limit_s`` (and what is left of the budget).

        Raises:
            NoTimeLeft: less than ``MIN_COMMAND_S`` would be left for it.
        """
        limit = min(limit_s, self.time_left() - SUMMARY_RESERVE_S)
        if limit < MIN_COMMAND_S:
            raise NoTimeLeft(f'{label}: {max(limit, 0):.0f} s left of the budget')
        self.log(f'\n==== {label} (limit {limit:.0f} s): {" ".join(map(str, cmd))}')
        start = time.monotonic()
        # Its own session, so that a time-out ends its children (torchrun, pytest) too.
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd or str(self.layout.root),
                                env=env or self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=limit)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            output = _stop(proc)
            returncode = None
        result = CommandResult(returncode, output or '', time.monotonic() - start, limit)
        self.log(result.output)
        self.log(f'==== {label}: {"timed out" if returncode is None else f"exit {returncode}"}'
                 f' after {result.seconds:.1f} s')
        return result

    def worker(self, label: str, name: str, args: Sequence[str], limit_s: float
               ) -> CommandResult:
        """Run ``.dev_scripts/run_gpu_check.py --worker NAME`` on the check's device."""
        cmd = [self.python, self.layout.path(self.layout.check_tool), '--worker', name,
               '--device', self.device, *args]
        return self.run(label, cmd, limit_s)


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM, then SIGKILL, to ``proc``'s process group; returns its output."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.communicate(timeout=wait)[0]
        except subprocess.TimeoutExpired:
            continue
    return proc.communicate()[0]


StepFunction = Callable[[CheckContext], Tuple[Dict[str, str], str]]


@dataclass
class Step:
    """One step: ``func(ctx)`` returns (figures, note) or raises StepFailed."""
    name: str
    func: StepFunction
    title: str


def run_steps(ctx: CheckContext, steps: Sequence[Step]) -> List[StepResult]:
    """Run ``steps`` in order, each whatever happened to the ones before."""
    results = []
    for step in steps:
        print(f'[gpu-check] {step.name}: {step.title} ...', flush=True)
        start = time.monotonic()
        figures, note = {}, ''
        try:
            figures, note = step.func(ctx)
            status = 'passed'
        except NoTimeLeft as err:
            status, note = 'skipped', f'no time left ({err})'
        except StepFailed as err:
            status, note, figures = 'failed', str(err), err.figures
        except Exception as err:  # a bug in the step itself: report it and go on
            status, note = 'failed', f'{type(err).__name__}: {err}'
            ctx.log(traceback.format_exc())
        result = StepResult(step.name, status, time.monotonic() - start, figures, note)
        ctx.info.setdefault('figures', {})[step.name] = figures
        print(f'[gpu-check] {step.name}: {status.upper()} in {result.seconds:.1f} s'
              + (f' ({note[:300]})' if note else ''), flush=True)
        results.append(result)
    return results


def format_summary(ctx: CheckContext, results: Sequence[StepResult]) -> str:
    """The summary as markdown: a header line, a table of the steps, the figures."""
    counts = {s: sum(r.status == s for r in results) for s in ('passed', 'failed', 'skipped')}
    elapsed = time.monotonic() - ctx.start
    lines = ['# mmdeform GPU check' + (' (DRY RUN on the CPU)' if ctx.dry_run else ''), '',
             f"Device: {ctx.info.get('device_line', 'unknown (the device step failed)')}",
             f'Total {elapsed:.0f} s of a {ctx.budget_s:.0f} s budget: '
             + ', '.join(f'{n} {s}' for s, n in counts.items()), '',
             '| step | status | s | figures | note |', '|---|---|---|---|---|']
    for r in results:
        figures = '; '.join(f'{k}: {v}' for k, v in r.figures.items())
        note = r.note.replace('|', '/').replace('\n', ' ')
        lines.append(f'| {r.name} | {r.status} | {r.seconds:.0f} | {figures} | {note} |')
    return '\n'.join(lines) + '\n'
