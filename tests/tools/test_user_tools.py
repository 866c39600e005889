"""The user tools end to end, as subprocesses, on the tiny config and synthetic images:
infer, visualize_sampling, browse_dataset, analysis/plot_curves, analysis/get_flops,
analysis/benchmark and export."""
import importlib.util
import json
import re

import mmcv
import numpy as np
import pytest
import torch
from conftest import NUM_VAL, run_tool

from mmdeform.analysis import example_inputs, run_onnx
from mmdeform.apis import init_detector

CLASSES = ['circle', 'square', 'triangle', 'cross']


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def checkpoint(tiny_config, tmp_path_factory):
    """Random tiny weights saved as an mmengine checkpoint with class names."""
    torch.manual_seed(0)
    model = init_detector(tiny_config)
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': tuple(CLASSES)}}}, path)
    return str(path)


def read_png(path):
    assert path.suffix == '.png', path
    img = mmcv.imread(str(path))
    assert img is not None and img.ndim == 3 and img.shape[2] == 3, path
    return img


def test_infer(tiny_config, synthetic_workspace, checkpoint, tmp_path):
    val_dir = synthetic_workspace / 'data' / 'synthetic' / 'val'
    out = run_tool('infer.py', [str(val_dir), tiny_config, checkpoint, '--out-dir',
                                str(tmp_path), '--score-thr', '0', '--batch-size', '2'],
                   cwd=synthetic_workspace)
    assert f'infer: {NUM_VAL} image(s)' in out
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['classes'] == CLASSES and results['score_thr'] == 0
    assert len(results['results']) == NUM_VAL
    for result in results['results']:
        assert set(result) == {'file', 'height', 'width', 'boxes_xyxy', 'scores', 'labels',
                               'class_names'}
        assert len(result['boxes_xyxy']) == len(result['scores']) == 10  # test_cfg.max_per_img
        assert all(len(box) == 4 for box in result['boxes_xyxy'])
        assert result['scores'] == sorted(result['scores'], reverse=True)
        assert result['class_names'] == [CLASSES[label] for label in result['labels']]
        name = result['file'].rsplit('/', 1)[-1].rsplit('.', 1)[0]
        drawn = read_png(tmp_path / f'{name}.png')
        assert drawn.shape[:2] == (result['height'], result['width']) == (64, 64)


def test_visualize_sampling(tiny_config, synthetic_workspace, checkpoint, tmp_path):
    image = sorted((synthetic_workspace / 'data' / 'synthetic' / 'val').iterdir())[0]
    run_tool('visualize_sampling.py', [str(image), tiny_config, checkpoint, '--out-dir',
                                       str(tmp_path), '--topk', '2', '--encoder-point', '10',
                                       '20', '--layout', 'levels'],
             cwd=synthetic_workspace)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f'{image.stem}_decoder.png',
                                                          f'{image.stem}_encoder.png']
    for path in tmp_path.iterdir():
        read_png(path)


def test_browse_dataset(tiny_config, synthetic_workspace, tmp_path):
    out = run_tool('browse_dataset.py', [tiny_config, '--output-dir', str(tmp_path),
                                         '--num', '3', '--phase', 'train'],
                   cwd=synthetic_workspace)
    assert 'browse_dataset: 3 image(s)' in out
    files = sorted(tmp_path.iterdir())
    assert [p.name[:5] for p in files] == ['0000_', '0001_', '0002_']
    for path in files:
        # RandomChoiceResize to (56, 96) or (64, 96), keep_ratio: 64x64 -> 56x56 or 64x64
        assert read_png(path).shape[:2] in {(56, 56), (64, 64)}


def test_plot_curves(tmp_path):
    vis_data = tmp_path / 'work' / '20240101_000000' / 'vis_data'
    vis_data.mkdir(parents=True)
    lines = [dict(loss=2.0 - 0.1 * i, loss_cls=1.0, lr=1e-4, step=i + 1) for i in range(8)]
    lines += [{'coco/bbox_mAP': 0.1, 'coco/bbox_mAP_50': 0.3, 'step': 4},
              {'coco/bbox_mAP': 0.2, 'coco/bbox_mAP_50': 0.4, 'step': 8}]
    (vis_data / 'scalars.json').write_text('\n'.join(json.dumps(line) for line in lines))
    out = run_tool('analysis/plot_curves.py', [str(tmp_path / 'work')], cwd=tmp_path)
    assert "'loss': 8" in out and "'coco/bbox_mAP': 2" in out
    read_png(tmp_path / 'work' / 'curves.png')


def test_get_flops(tiny_config, tmp_path):
    out = run_tool('analysis/get_flops.py', [tiny_config, '--shape', '64', '96'], cwd=tmp_path)
    params = sum(p.numel() for p in init_detector(tiny_config).parameters())
    assert f'params: {params / 1e6:.2f} M' in out
    # 30 encoder tokens + 10 queries, M=4, L=2, P=2, D=8, 10 FLOPs per sample and channel
    op_line = re.search(r'mmdeform\.ms_deform_attn_forward\s+([\d.]+) G', out)
    assert op_line and float(op_line.group(1)) == pytest.approx(10 * 40 * 4 * 2 * 2 * 8 / 1e9,
                                                                abs=0.005)
    assert re.search(r'FLOPs:\s+[\d.]+ G', out)


def test_benchmark(tiny_config, tmp_path):
    out = run_tool('analysis/benchmark.py', [tiny_config, '--shape', '64', '64',
                                             '--batch-sizes', '1', '2', '--warmup', '1',
                                             '--iters', '2', '--amp', 'bf16'], cwd=tmp_path)
    rows = re.findall(r'^\s+(\d)\s+([\d.]+)\s+([\d.]+)\s+2$', out, flags=re.MULTILINE)
    assert [int(r[0]) for r in rows] == [1, 2] and all(float(r[1]) > 0 for r in rows)
    assert 'amp=bf16' in out


def test_export(tiny_config, checkpoint, tmp_path):
    """The program always; the ONNX file when onnx is installed (optional dependency),
    checked with onnxruntime when that is installed too (CI installs both)."""
    has_onnx = importlib.util.find_spec('onnx') is not None
    formats = ['program', 'onnx'] if has_onnx else ['program']
    out = run_tool('export.py', [tiny_config, checkpoint, '--out-dir', str(tmp_path),
                                 '--shape', '64', '96', '--format', *formats], cwd=tmp_path)
    assert 'torch.export program' in out
    name = 'deformable-detr_tiny_synthetic'
    model = init_detector(tiny_config, checkpoint)
    inputs = example_inputs((64, 96), seed=1)
    with torch.no_grad():
        expected = model(inputs, None, mode='tensor')

    program = torch.export.load(str(tmp_path / f'{name}.pt2'))
    targets = {str(node.target) for node in program.graph.nodes}
    assert 'mmdeform.ms_deform_attn_forward.default' in targets
    for got, want in zip(program.module()(inputs), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    if not has_onnx:
        pytest.skip('onnx is not installed (optional): ONNX export not tested')
    import onnx
    assert 'ONNX (opset 17)' in out
    onnx_model = onnx.load(str(tmp_path / f'{name}.onnx'))
    onnx.checker.check_model(onnx_model)
    op_types = {node.op_type for node in onnx_model.graph.node}
    assert 'GridSample' in op_types
    assert {node.domain for node in onnx_model.graph.node} <= {'', 'ai.onnx'}
    pytest.importorskip('onnxruntime', reason='onnxruntime is an optional dependency')
    for got, want in zip(run_onnx(str(tmp_path / f'{name}.onnx'), inputs.numpy()), expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)
