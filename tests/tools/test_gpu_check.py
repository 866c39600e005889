""".dev_scripts/run_gpu_check.py (``make gpu-check``): its dry run, wheel checks and time limits.

CI has no GPU and no ``.whl/`` (git-ignored): the wheels here are small ones
built by the test, and the dry run runs every step's command line on the CPU
with the tiny config as the "base" model and a one-file test folder; ``make
gpu-check DRY_RUN=1`` runs the same steps with the real wheels, tests and
configs.
"""
import base64
import dataclasses
import hashlib
import importlib.util
import re
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO
from gpu_check import runner
from gpu_check.cli import main
from gpu_check.steps import STEPS, parse_markdown_table, pytest_counts
from gpu_check.wheels import check_wheels, find_wheels, install_command

# the check's own entry point lives with it in .dev_scripts/, the tools it runs in tools/
TOOL_PATHS = {'gpu_check': REPO / '.dev_scripts' / 'run_gpu_check.py'}


def load_tool(name):
    path = TOOL_PATHS.get(name, REPO / 'tools' / f'{name}.py')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_wheel(folder: Path, name: str, version: str = '1.0', requires=(),
               tag: str = 'py3-none-any') -> Path:
    """A minimal valid wheel of an empty package ``name``."""
    module, dist = name.replace('-', '_'), f"{name.replace('-', '_')}-{version}"
    files = {
        f'{module}/__init__.py': f'VERSION = {version!r}\n',
        f'{dist}.dist-info/METADATA': (f'Metadata-Version: 2.1\nName: {name}\nVersion: '
                                       f'{version}\n'
                                       + ''.join(f'Requires-Dist: {r}\n' for r in requires)),
        f'{dist}.dist-info/WHEEL': (f'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: '
                                    f'true\nTag: {tag}\n'),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=')
        record.append(f'{path},sha256={digest.decode()},{len(text.encode())}')
    files[f'{dist}.dist-info/RECORD'] = '\n'.join(record + [f'{dist}.dist-info/RECORD,,']) + '\n'
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'{dist}-{tag}.whl'
    with zipfile.ZipFile(path, 'w') as zf:
        for name_in_zip, text in files.items():
            zf.writestr(name_in_zip, text)
    return path


def summary_rows(out: Path) -> dict:
    rows = parse_markdown_table((out / 'gpu_check.md').read_text())
    return {row['step']: row for row in rows}


def test_layout_names_existing_files():
    """The check reaches tools and configs by these names: a rename must show up here."""
    layout = load_tool('gpu_check').LAYOUT
    for field in dataclasses.fields(layout):
        if field.name not in ('root', 'wheel_dir'):
            assert Path(layout.path(getattr(layout, field.name))).exists(), field.name
    for flag in ('--shapes', '--deterministic', '--min-seconds', '--repeats'):
        assert flag in (REPO / layout.op_benchmark_tool).read_text()


def test_wheel_checks_find_what_pip_would_not(tmp_path):
    good = [make_wheel(tmp_path / 'good', 'pkg-a', requires=['pkg-b>=1', 'numpy',
                                                             'tomli; python_version < "3.11"',
                                                             'extra-only; extra == "all"']),
            make_wheel(tmp_path / 'good', 'pkg-b', requires=['opencv-python>=3'])]
    assert check_wheels(find_wheels(tmp_path / 'good')) == []
    make_wheel(tmp_path / 'bad', 'pkg-a', requires=['not-carried'])
    make_wheel(tmp_path / 'bad', 'pkg-c', '1.0')
    make_wheel(tmp_path / 'bad', 'pkg-c', '2.0')
    make_wheel(tmp_path / 'bad', 'torch', '2.13.0')
    make_wheel(tmp_path / 'bad', 'pkg-d', tag='cp311-cp311-manylinux_2_17_x86_64')
    problems = '\n'.join(check_wheels(find_wheels(tmp_path / 'bad')))
    assert 'requires not-carried' in problems
    assert 'pkg-c: several versions' in problems
    assert 'torch: the GPU image has its own' in problems
    assert 'pkg_d-1.0-cp311' in problems and 'does not install on CPython 3.12' in problems
    assert check_wheels([]) == ['no wheels']
    with pytest.raises(FileNotFoundError, match='gpu_wheels.sh'):
        find_wheels(tmp_path / 'absent')
    cmd = install_command('python3', find_wheels(tmp_path / 'good'), tmp_path / 'site')
    assert cmd[cmd.index('--python-version') + 1] == '3.12' and str(good[0]) in cmd


def test_op_table_contract(capsys):
    """The check reads benchmark_op.py's table by its header names."""
    bench = load_tool('benchmark_op')
    row = dict(case='encoder 800x1067', lq=18000, fwd_repeats=20, fwdbwd_repeats=20,
               compiled_fwd=1e-3, reference_fwd=9e-3, compiled_fwdbwd=4e-3,
               reference_fwdbwd=3.6e-2, compiled_mem=2**21, reference_mem=2**24,
               bytes_fwd=1, bytes_fwdbwd=2, bytes_returned=2**20)
    capsys.readouterr()
    bench.print_table([row], torch.device('cpu'))
    printed = capsys.readouterr().out
    assert bench.SHAPES['cuda']['encoder 800x1067']['levels'] == [(100, 134), (50, 67),
                                                                   (25, 34), (13, 17)]
    (parsed, ) = parse_markdown_table(printed)
    assert parsed['shape'] == 'encoder 800x1067'
    assert parsed['fwd compiled'] == '1.00 ms' and parsed['fwd+bwd speed-up'] == '9.0x'
    assert parsed['peak mem compiled'] == '2.0 MiB'


def test_pytest_counts():
    assert pytest_counts('x\n3 passed, 1 failed, 33 skipped in 2.1s\n') == dict(
        passed=3, failed=1, skipped=33)
    assert pytest_counts('no summary') == {}


def test_command_over_its_limit_is_killed_with_its_children(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, 'MIN_COMMAND_S', 0.5)
    layout = load_tool('gpu_check').LAYOUT
    ctx = runner.CheckContext(layout, True, tmp_path, tmp_path / 'log', budget_s=60)
    start = time.monotonic()
    result = ctx.run('sleeper', ['bash', '-c', 'echo started; sleep 30 & sleep 30'], 1)
    assert time.monotonic() - start < 10
    assert result.returncode is None and 'started' in result.output
    assert 'ran past its 1 s limit' in result.failure('sleeper')
    ctx.deadline = time.monotonic() + runner.SUMMARY_RESERVE_S  # budget spent
    with pytest.raises(runner.NoTimeLeft):
        ctx.run('late', ['true'], 10)


def test_dry_run_end_to_end(tiny_config, tmp_path, capsys):
    """Every step's command line in a dry run, so that a step that cannot start
    (a refused option, a moved tool) fails here and not on a lent GPU."""
    make_wheel(tmp_path / 'whl', 'pkg-a', requires=['numpy'])
    tests_dir = tmp_path / 'tests'
    tests_dir.mkdir()
    (tests_dir / 'test_device.py').write_text(
        'import pytest\n\ndef test_on_cpu():\n    assert sum([1, 2]) == 3\n\n\n'
        "@pytest.mark.skip(reason='needs cuda')\ndef test_on_gpu():\n    pass\n")
    tool = load_tool('gpu_check')
    layout = dataclasses.replace(tool.LAYOUT, wheel_dir=str(tmp_path / 'whl'),
                                 tests_dir=str(tests_dir), base_config=tiny_config)
    out = tmp_path / 'out'
    status = main(layout, ['--dry-run', '--work-dir', str(tmp_path / 'work'), '--out', str(out),
                           '--wheel-python', sys.executable],
                  op_dry_run_args=tool.OP_DRY_RUN_ARGS)
    printed = capsys.readouterr().out
    rows = summary_rows(out)
    assert status == 0, printed[-3000:]
    assert list(rows) == [s.name for s in STEPS]
    assert all(r['status'] == 'passed' for r in rows.values())
    assert (tmp_path / 'work' / 'site' / 'pkg_a' / '__init__.py').is_file()
    assert 'passed: 1; skipped: 1' in rows['cuda-tests']['figures']
    shape = tool.OP_DRY_RUN_ARGS[-1]
    assert re.search(rf'{re.escape(shape)}: fwd [\d.]+ ms', rows['op-fp32']['figures'])
    assert "op-fp32's run" in rows['op-fp16']['note']
    assert re.search(r'fwd\+bwd [\d.]+ ms = [\d.]+x the default',
                     rows['op-deterministic']['figures'])
    for precision in ('fp16', 'bf16'):  # bf16: --amp --cfg-options optim_wrapper.dtype=...
        assert re.search(r'iters: 2; loss: [\d.]+ -> [\d.]+', rows[f'train-{precision}']['figures'])
    assert re.search(r'mAP: [\d.]+', rows['test-fp16']['figures'])
    assert re.search(r'fp32 \(float32\): \d+ ms/iter.*amp \(bfloat16\)',
                     rows['coco-step']['figures'])
    assert 'processes: 1; iters: 2' in rows['dist']['figures']
    for variant in ('fp32', 'bf16', 'compile'):
        assert re.search(rf'{variant}: [\d.]+ images/s', rows['inference']['figures'])
    log = (out / 'gpu_check.log').read_text()
    assert '==== inference' in log and log.count('benchmark_op.py') == 2


def test_a_failed_step_does_not_stop_the_check(tmp_path, capsys):
    make_wheel(tmp_path / 'whl', 'pkg-a', requires=['not-carried'])
    layout = dataclasses.replace(load_tool('gpu_check').LAYOUT, wheel_dir=str(tmp_path / 'whl'))
    out = tmp_path / 'out'
    status = main(layout, ['--dry-run', '--steps', 'wheels', 'synthetic-data', '--work-dir',
                           str(tmp_path / 'work'), '--out', str(out)])
    rows = summary_rows(out)
    assert status == 1
    assert rows['wheels']['status'] == 'failed' and 'not-carried' in rows['wheels']['note']
    assert rows['synthetic-data']['status'] == 'passed'
    assert [s.name for s in STEPS][:2] == ['device', 'wheels']
    assert 'wheels: FAILED' in capsys.readouterr().out
