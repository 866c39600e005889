"""The synthetic shapes dataset generator."""
import hashlib
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


def test_default_draw_is_unchanged():
    """The draw without ``size_class_fractions`` is the one of the earlier versions: digests
    of the rendered pixels and objects recorded before the option existed."""
    digest = hashlib.sha256()
    for index in range(20):
        img, objects = synthetic.render_image(np.random.default_rng([0, 0, index]), 128, 5, 8,
                                              64)
        digest.update(img.tobytes())
        digest.update(json.dumps(objects).encode())
    assert digest.hexdigest() == \
        '3840254b69f3334d2cd96ee6b31f2c2ee97133c90127143b7e6fc83d50543f6a'


def test_size_classes_drawn_first_reach_the_target_shares():
    areas = []
    for index in range(80):
        rng = np.random.default_rng([5, 0, index])
        _, objects = synthetic.render_image(rng, 256, 8, 8, 224, (0.41, 0.34, 0.25))
        areas += [obj['area'] for obj in objects]
    summary = synthetic.size_class_summary(areas)
    small, medium, large = summary['fractions']
    # occlusion moves some large objects down a class; every class is well populated
    assert abs(small - 0.41) < 0.07 and abs(medium - 0.34) < 0.07 and 0.12 < large <= 0.27
    assert summary['small'] + summary['medium'] + summary['large'] == len(areas)


def test_large_objects_are_placed_first():
    rng = np.random.default_rng(0)
    for _ in range(20):
        objects = synthetic._place_objects(rng, 256, 6, 8, 224, (0.3, 0.3, 0.4))
        areas = [int(mask.sum()) for _, mask in objects]
        large = [area >= 96**2 for area in areas]
        assert large == sorted(large, reverse=True)  # no large object after a smaller one


@pytest.mark.parametrize('fractions,match', [
    ((0.5, 0.5), '3 non-negative shares'),
    ((0.5, 0.6, -0.1), '3 non-negative shares'),
    ((0.5, 0.3, 0.3), 'summing to 1'),
    ((0.4, 0.3, 0.3), 'gives a .* of COCO size class'),  # 64 px: sides <= 32, nothing large
])
def test_bad_size_class_fractions(tmp_path, fractions, match):
    with pytest.raises(ValueError, match=match):
        generate(tmp_path, size_class_fractions=fractions)


def test_size_class_fractions_are_recorded(tmp_path):
    summary = generate(tmp_path, num_train=4, num_val=0, image_size=256,
                       max_object_fraction=0.875, size_class_fractions=(0.41, 0.34, 0.25))
    content = json.loads((tmp_path / 'train.json').read_text())
    assert content['info']['size_class_fractions'] == [0.41, 0.34, 0.25]
    assert summary['train']['num_objects'] == len(content['annotations'])
    assert sum(summary['train']['fractions']) == pytest.approx(1.0, abs=1e-3)
