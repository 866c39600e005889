"""The synthetic shapes dataset generator."""
import json

import cv2
import numpy as np
import pytest

from mmdeform.datasets import SYNTHETIC_CLASSES, CocoDataset, make_synthetic_coco, synthetic
from tools.make_synthetic_coco import main


def generate(out_dir, **kwargs):
    args = dict(num_train=6, num_val=3, image_size=64, seed=0, progress=False)
    args.update(kwargs)
    return make_synthetic_coco(str(out_dir), **args)


def test_layout_and_loadable(tmp_path):
    summary = generate(tmp_path)
    assert summary['train']['num_images'] == 6 and summary['val']['num_images'] == 3
    for split, count in (('train', 6), ('val', 3)):
        dataset = CocoDataset(ann_file=str(tmp_path / f'{split}.json'),
                              metainfo=dict(classes=SYNTHETIC_CLASSES),
                              data_prefix=dict(img_path=str(tmp_path / split)))
        assert len(dataset) == count
        info = dataset.get_data_info(0)
        img = cv2.imread(info['img_path'])
        assert img.shape == (64, 64, 3)
        assert 1 <= len(info['instances']) <= 5
    content = json.loads((tmp_path / 'train.json').read_text())
    assert [c['name'] for c in content['categories']] == list(SYNTHETIC_CLASSES)
    assert summary['train']['num_objects'] == len(content['annotations'])


def test_same_seed_is_byte_identical(tmp_path):
    generate(tmp_path / 'a')
    generate(tmp_path / 'b')
    generate(tmp_path / 'c', seed=1)
    for name in ('train.json', 'val.json', 'train/000001.png', 'val/000003.png'):
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    assert (tmp_path / 'a' / 'train.json').read_bytes() != \
        (tmp_path / 'c' / 'train.json').read_bytes()
    # train and val differ
    assert (tmp_path / 'a' / 'train/000001.png').read_bytes() != \
        (tmp_path / 'a' / 'val/000001.png').read_bytes()


def test_boxes_are_tight_to_the_shapes(monkeypatch):
    """Without noise and with one object per image, the pixels of the object's
    colour have exactly the annotated box and area."""
    monkeypatch.setattr(synthetic, '_NOISE_STD', 0.0)
    for seed in range(40):
        img, (annotation,) = synthetic.render_image(np.random.default_rng(seed), 96, 1, 8, 48)
        x, y, w, h = annotation['bbox']
        colours, counts = np.unique(img[y:y + h, x:x + w].reshape(-1, 3), axis=0,
                                    return_counts=True)
        ys, xs = np.nonzero((img == colours[counts.argmax()]).all(-1))
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == \
            annotation['bbox']
        assert len(xs) == annotation['area']


def test_boxes_inside_image_and_filled(tmp_path):
    generate(tmp_path, num_train=20, num_val=0, image_size=96)
    content = json.loads((tmp_path / 'train.json').read_text())
    for annotation in content['annotations']:
        x, y, w, h = annotation['bbox']
        assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96 and w >= 4 and h >= 4
        # visible parts of filled shapes cover at least a fifth of their box
        assert w * h / 5 <= annotation['area'] <= w * h


def test_size_distribution_has_small_and_medium_objects(tmp_path):
    summary = generate(tmp_path, num_train=60, num_val=0, image_size=128)['train']
    assert summary['small'] >= 0.3 * summary['num_objects']
    assert summary['medium'] >= 0.2 * summary['num_objects']
    content = json.loads((tmp_path / 'train.json').read_text())
    labels = {a['category_id'] for a in content['annotations']}
    assert labels == {1, 2, 3, 4}


def test_command_line(tmp_path, capsys):
    summary = main([str(tmp_path / 'cli'), '--num-train', '2', '--num-val', '1',
                    '--image-size', '48', '--seed', '3', '--ext', 'jpg'])
    assert (tmp_path / 'cli' / 'train' / '000002.jpg').exists()
    assert summary['val']['num_images'] == 1
    assert 'wrote' in capsys.readouterr().out


@pytest.mark.parametrize('kwargs', [dict(ext='gif'), dict(min_object_size=40),
                                    dict(max_objects=0)])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate(tmp_path, **kwargs)


def test_objects_contrast_with_background(tmp_path):
    generate(tmp_path, num_train=10, num_val=0)
    content = json.loads((tmp_path / 'train.json').read_text())
    for image in content['images']:
        img = cv2.imread(str(tmp_path / 'train' / image['file_name'])).astype(np.float32)
        assert img.std() > 5  # noise and gradient make a textured background
