"""mmdeform works as a non-editable install: nothing in the package needs the checkout.

A real ``pip install .`` compiles the extension again (about 110 s on the
2-core CI machine), too slow for the suite. This test makes the same package
tree more cheaply: setuptools' ``build_py`` copies exactly the Python files a
wheel would hold (``setup.py``'s package list) into a temporary folder, and
the extension already built by ``make build`` is copied beside them (the file
a wheel would hold, compiled from the same sources). The copy is imported in
a subprocess whose working directory and ``sys.path`` do not contain the
checkout; it must find its compiled op, build a detector from a config that
is passed in, and run it.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmdeform.ops import extension_available

REPO = Path(__file__).resolve().parents[1]

CHECK = '''
import sys
from pathlib import Path

import torch

import mmdeform
from mmdeform import analysis, apis, datasets, engine, evaluation, models, visualization
from mmdeform.analysis import op_benchmark
from mmdeform.apis import init_detector
from mmdeform.ops import get_backend, ms_deform_attn, ms_deform_attn_reference

site = Path(sys.argv[1]).resolve()
package = Path(mmdeform.__file__).resolve().parent
assert package == site / 'mmdeform', f'imported {package}, not the install in {site}'
assert get_backend(torch.device('cpu')) == 'compiled', 'the compiled op did not load'
torch.manual_seed(0)
value = torch.rand(1, 12 + 2, 2, 4, dtype=torch.float64)
shapes, starts = torch.tensor([[3, 4], [1, 2]]), torch.tensor([0, 12])
locations = torch.rand(1, 5, 2, 2, 3, 2, dtype=torch.float64)
weights = torch.rand(1, 5, 2, 2, 3, dtype=torch.float64)
torch.testing.assert_close(ms_deform_attn(value, shapes, starts, locations, weights),
                           ms_deform_attn_reference(value, shapes, starts, locations, weights))
model = init_detector(sys.argv[2]).eval()
with torch.no_grad():
    logits, boxes = model(torch.randn(1, 3, 64, 96), None, mode='tensor')
assert logits.shape[:2] == (1, 1) and boxes.shape[-1] == 4, (logits.shape, boxes.shape)
print('install ok', package)
'''


@pytest.mark.skipif(not extension_available(), reason='needs the built extension (make build)')
def test_non_editable_install_needs_no_checkout(tiny_config, tmp_path):
    site = tmp_path / 'site'
    subprocess.run([sys.executable, 'setup.py', '-q', 'build_py', '--build-lib', str(site)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    extension = Path(importlib.util.find_spec('mmdeform._C').origin)
    shutil.copy2(extension, site / 'mmdeform' / extension.name)

    # the package never locates files relative to itself (configs are passed in)
    sources = {path: path.read_text() for path in (site / 'mmdeform').rglob('*.py')}
    assert len(sources) > 50
    for path, text in sources.items():
        assert str(REPO) not in text, f'{path} holds the checkout path'
        assert '__file__' not in text, f'{path} locates files relative to the package'
    assert not (site / 'configs').exists() and not (site / 'projects').exists()

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE='1', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', CHECK, str(site), str(tiny_config)],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"install ok {site / 'mmdeform'}" in proc.stdout
