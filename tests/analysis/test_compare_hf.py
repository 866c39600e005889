"""tools/analysis/compare_hf.py: a smoke run on a tiny model, and the table format."""
import subprocess
import sys
from pathlib import Path

import pytest

from mmdeform.analysis.compare_hf import (
    format_comparison,
    hf_resnet,
    match_trainable,
    trainable_count,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_format_comparison_reports_medians_and_ratio():
    table = format_comparison({'infer 8x8': {'transformers': [0.3, 0.1, 0.2],
                                             'ours': [0.05, 0.1, 0.9]}}, 'header')
    assert table.splitlines()[0] == 'header'
    assert table.splitlines()[-1] == '| infer 8x8 | 200 | 100 | 0.50 |'


def test_tiny_run():
    pytest.importorskip('transformers')
    out = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'analysis' /
                                              'compare_hf.py'), '--tiny', '--rounds', '1',
                          '--variant', 'refine-twostage'],
                         check=True, cwd=REPO_ROOT, capture_output=True, text=True).stdout
    rows = [line for line in out.splitlines() if line.startswith('| infer') or
            line.startswith('| train')]
    assert [row.split('|')[1].strip() for row in rows] == ['infer 96x128', 'train 96x128']
    for row in rows:
        assert float(row.split('|')[4]) > 0
    assert ' M trainable weights in both' in out


def test_both_models_train_the_same_weights():
    transformers = pytest.importorskip('transformers')
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'compare_hf_tool', REPO_ROOT / 'tools' / 'analysis' / 'compare_hf.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ours, hf = tool.build_pair(transformers, 'base', tiny=True)
    # transformers' own rule freezes its whole ResNet ('stage.1' vs 'stages.1')
    assert trainable_count(hf) < trainable_count(ours)
    count = match_trainable(ours, hf)
    assert count == trainable_count(ours) == trainable_count(hf)
    frozen = [n for n, p in hf_resnet(hf).named_parameters() if not p.requires_grad]
    assert frozen and all('stages.0.' in n or 'embedder' in n for n in frozen)
    hf_resnet(hf).embedder.requires_grad_(True)
    with pytest.raises(RuntimeError, match='unequal work'):
        match_trainable(ours, hf)
