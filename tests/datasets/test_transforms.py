"""Loading, cropping and packing transforms, and the paper's pipelines."""
import cv2
import numpy as np
import pytest
import torch
from coco_files import ann
from mmcv.transforms import Compose, RandomChoice
from mmengine.registry import DefaultScope

from mmdeform.datasets import (
    CocoDataset,
    LoadAnnotations,
    LoadImageFromFile,
    PackDetInputs,
    RandomCrop,
)
from mmdeform.registry import TRANSFORMS
from mmdeform.structures import DetDataSample

MULTI_SCALE = [(s, 1333) for s in range(480, 801, 32)]
# The paper's (and the official repo's) training augmentation.
TRAIN_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=MULTI_SCALE, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(400, 4200), (500, 4200), (600, 4200)],
              keep_ratio=True),
         dict(type='RandomCrop', crop_size=(384, 600), crop_type='absolute_range',
              allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=MULTI_SCALE, keep_ratio=True)]]),
    dict(type='PackDetInputs'),
]
TEST_PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                 dict(type='Resize', scale=(1333, 800), keep_ratio=True),
                 dict(type='PackDetInputs')]


def build_pipeline(cfg):
    with DefaultScope.overwrite_default_scope('mmdeform'):
        return [TRANSFORMS.build(t) for t in cfg]


def with_nearest_resize(cfg):
    """``cfg`` with nearest-neighbour resizing, so box colours stay exact."""
    if isinstance(cfg, list):
        return [with_nearest_resize(c) for c in cfg]
    cfg = dict(cfg)
    if cfg['type'] == 'RandomChoiceResize':
        cfg['interpolation'] = 'nearest'
    if 'transforms' in cfg:
        cfg['transforms'] = with_nearest_resize(cfg['transforms'])
    return cfg


# ---------------------------------------------------------------- LoadImageFromFile
def load(path, **kwargs):
    return LoadImageFromFile(**kwargs)(dict(img_path=str(path)))


def test_load_colour_image(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    results = load(tmp_path / 'a.png')
    np.testing.assert_array_equal(results['img'], img)  # BGR, as written
    assert results['img_shape'] == results['ori_shape'] == (5, 7)


def test_missing_image_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.png'):
        load(tmp_path / 'nothere.png')
    assert load(tmp_path / 'nothere.png', ignore_empty=True) is None


def test_corrupt_image_file(tmp_path):
    (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a jpeg')
    with pytest.raises(ValueError, match=r'cannot decode image .*bad.jpg'):
        load(tmp_path / 'bad.jpg')
    (tmp_path / 'empty.png').write_bytes(b'')
    with pytest.raises(ValueError, match=r'empty.png: the file is empty'):
        load(tmp_path / 'empty.png')


def test_grayscale_image_becomes_three_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / 'g.png'), gray)
    img = load(tmp_path / 'g.png')['img']
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_rgba_image_drops_alpha(tmp_path):
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 77
    cv2.imwrite(str(tmp_path / 'a.png'), bgra)
    img = load(tmp_path / 'a.png')['img']
    assert img.shape == (4, 4, 3)
    np.testing.assert_array_equal(img[0, 0], [10, 20, 30])


def test_16bit_image_scaled_to_uint8(tmp_path):
    deep = np.zeros((2, 3, 3), np.uint16)
    deep[..., 0], deep[..., 1], deep[..., 2] = 0, 40000, 65535
    cv2.imwrite(str(tmp_path / 'd.png'), deep)
    img = load(tmp_path / 'd.png')['img']
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img[1, 2], [0, 40000 // 256, 255])


def test_size_mismatch_with_annotation_warns(tmp_path, log_messages):
    cv2.imwrite(str(tmp_path / 'r.png'), np.zeros((4, 6, 3), np.uint8))
    LoadImageFromFile()(dict(img_path=str(tmp_path / 'r.png'), height=6, width=4))
    assert any('differs from the annotation (6, 4)' in m for m in log_messages())


# -------------------------------------------------------- LoadAnnotations
def test_load_det_annotations():
    results = LoadAnnotations()(dict(instances=[
        dict(bbox=[1, 2, 3, 4], bbox_label=3, ignore_flag=0),
        dict(bbox=[5, 6, 7, 8], bbox_label=1, ignore_flag=1)]))
    assert results['gt_bboxes'].dtype == np.float32 and results['gt_bboxes'].shape == (2, 4)
    assert results['gt_bboxes_labels'].dtype == np.int64
    assert results['gt_bboxes_labels'].tolist() == [3, 1]
    assert results['gt_ignore_flags'].tolist() == [False, True]
    empty = LoadAnnotations()(dict(instances=[]))
    assert empty['gt_bboxes'].shape == (0, 4) and empty['gt_ignore_flags'].shape == (0,)


# ------------------------------------------------------------- RandomCrop
def coordinate_image(h, w):
    """Pixel (y, x) holds (y, x, 0) so a crop reveals its offset."""
    ys, xs = np.mgrid[:h, :w]
    return np.stack([ys, xs, np.zeros_like(ys)], -1).astype(np.int32)


def test_random_crop_window_and_boxes():
    crop = RandomCrop(crop_size=(20, 30))
    img = coordinate_image(40, 50)
    boxes = np.array([[0, 0, 50, 40], [10, 10, 12, 12], [45, 35, 50, 40]], np.float32)
    seen_kept = set()
    for seed in range(40):
        np.random.seed(seed)
        results = crop(dict(img=img, img_shape=(40, 50), gt_bboxes=boxes.copy(),
                            gt_bboxes_labels=np.array([0, 1, 2]),
                            gt_ignore_flags=np.array([False, True, False])))
        out = results['img']
        h, w = out.shape[:2]
        assert 20 <= h <= 30 and 20 <= w <= 30 and results['img_shape'] == (h, w)
        top, left = out[0, 0, :2]
        expected = boxes - [left, top, left, top]
        expected[:, 0::2] = expected[:, 0::2].clip(0, w)
        expected[:, 1::2] = expected[:, 1::2].clip(0, h)
        keep = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
        np.testing.assert_allclose(results['gt_bboxes'], expected[keep])
        assert results['gt_bboxes_labels'].tolist() == np.flatnonzero(keep).tolist()
        assert results['gt_ignore_flags'].tolist() == [[False, True, False][i]
                                                       for i in np.flatnonzero(keep)]
        seen_kept.add(tuple(keep))
    assert len(seen_kept) > 1  # some crops dropped boxes, some kept them


def test_random_crop_capped_by_image_size():
    np.random.seed(0)
    results = RandomCrop(crop_size=(384, 600))(dict(img=np.zeros((100, 700, 3), np.uint8)))
    h, w = results['img'].shape[:2]
    assert h == 100 and 384 <= w <= 600


def test_random_crop_negative_crop():
    img = np.zeros((100, 100, 3), np.uint8)
    results = dict(img=img, gt_bboxes=np.array([[0, 0, 50, 50]], np.float32),
                   gt_bboxes_labels=np.array([0]))
    crop = RandomCrop(crop_size=(10, 10), crop_type='absolute', allow_negative_crop=False)
    outcomes = set()
    for seed in range(30):
        np.random.seed(seed)
        out = crop(dict(results))
        outcomes.add(out is None)
        if out is not None:
            assert len(out['gt_bboxes']) == 1
    assert outcomes == {True, False}
    crop.allow_negative_crop = True
    empty = [out for out in (crop(dict(results)) for _ in range(30))
             if len(out['gt_bboxes']) == 0]
    assert empty and empty[0]['gt_bboxes'].shape == (0, 4)
    assert empty[0]['gt_bboxes_labels'].shape == (0,)


@pytest.mark.parametrize('kwargs', [dict(crop_type='square'), dict(crop_size=(600, 384)),
                                    dict(crop_size=(0.5, 0.5)),
                                    dict(crop_size=(2, 0.5), crop_type='relative')])
def test_random_crop_bad_arguments(kwargs):
    with pytest.raises(ValueError, match='RandomCrop'):
        RandomCrop(**kwargs)


# ------------------------------------------------------------- PackDetInputs
def test_pack_det_inputs():
    img = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    results = dict(img=img, img_id=3, img_path='x.png', ori_shape=(6, 8), img_shape=(6, 8),
                   gt_bboxes=np.array([[0, 0, 2, 2], [1, 1, 4, 5], [2, 2, 3, 3]], np.float32),
                   gt_bboxes_labels=np.array([4, 5, 6]),
                   gt_ignore_flags=np.array([False, True, False]))
    packed = PackDetInputs()(results)
    inputs, sample = packed['inputs'], packed['data_samples']
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, 6, 8) and inputs.is_contiguous()
    for c in range(3):  # channel order kept (BGR)
        assert torch.equal(inputs[c], torch.from_numpy(img[..., c]))
    assert isinstance(sample, DetDataSample)
    assert sample.gt_instances.bboxes.dtype == torch.float32
    assert sample.gt_instances.bboxes.tolist() == [[0, 0, 2, 2], [2, 2, 3, 3]]
    assert sample.gt_instances.labels.dtype == torch.int64
    assert sample.gt_instances.labels.tolist() == [4, 6]
    assert sample.metainfo == dict(img_id=3, img_path='x.png', ori_shape=(6, 8),
                                   img_shape=(6, 8), scale_factor=(1.0, 1.0), flip=False,
                                   flip_direction=None)


def test_pack_without_annotations_and_bad_image():
    packed = PackDetInputs(meta_keys=('img_shape',))(dict(img=np.zeros((2, 3, 3), np.uint8),
                                                          img_shape=(2, 3)))
    assert packed['data_samples'].gt_instances.bboxes.shape == (0, 4)
    assert packed['data_samples'].metainfo == dict(img_shape=(2, 3))
    with pytest.raises(ValueError, match=r'expected an \(H, W, 3\) image, got shape \(2, 3\)'):
        PackDetInputs()(dict(img=np.zeros((2, 3), np.uint8)))


# ---------------------------------------------------------- paper pipelines
BOXES = [[5, 4, 25, 20], [40, 10, 55, 50], [60, 30, 88, 58], [70, 2, 74, 6]]


@pytest.fixture
def boxes_image(tmp_path):
    """60 x 90 black image with box ``i`` filled with (40 * (i + 1), 255, 255)."""
    img = np.zeros((60, 90, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(BOXES):
        img[y1:y2, x1:x2] = (40 * (i + 1), 255, 255)
    cv2.imwrite(str(tmp_path / 'boxes.png'), img)
    instances = [dict(bbox=b, bbox_label=i, ignore_flag=0) for i, b in enumerate(BOXES)]
    return dict(img_path=str(tmp_path / 'boxes.png'), img_id=1, instances=instances)


def check_boxes(results, margin):
    """Boxes lie inside the image and each covers pixels of its own colour
    (with nearest-neighbour resizing, whose sampling may shift content by up
    to one source pixel: ``margin`` output pixels)."""
    h, w = results['img'].shape[:2]
    assert tuple(results['img_shape']) == (h, w)
    boxes = results['gt_bboxes']
    assert len(boxes) == len(results['gt_bboxes_labels'])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    for (x1, y1, x2, y2), label in zip(boxes, results['gt_bboxes_labels']):
        # interior pixels, ``margin`` pixels in from the box border
        top, bottom = int(y1) + margin, int(y2) - margin
        left, right = int(x1) + margin, int(x2) - margin
        if bottom <= top or right <= left:
            continue
        interior = results['img'][top:bottom, left:right]
        assert (interior.reshape(-1, 3) == (40 * (label + 1), 255, 255)).all()


def run_step_by_step(pipeline, data, branch):
    """Runs the pipeline, forcing ``RandomChoice`` to ``branch``; checks boxes
    after every step. Returns the packed output."""
    results, total_scale = dict(data), 1.0
    for transform in pipeline:
        steps = transform.transforms[branch].transforms if isinstance(
            transform, RandomChoice) else [transform]
        for step in steps:
            results = step(results)
            if 'scale_factor' in results and 'Resize' in type(step).__name__:
                total_scale *= max(results['scale_factor'])
            if 'gt_bboxes' in results and not isinstance(step, PackDetInputs):
                check_boxes(results, margin=int(np.ceil(total_scale)) + 1)
    return results


@pytest.mark.parametrize('branch', [0, 1])
def test_paper_train_pipeline_step_by_step(boxes_image, branch):
    pipeline = build_pipeline(with_nearest_resize(TRAIN_PIPELINE))
    flips, num_boxes = set(), set()
    for seed in range(6):
        np.random.seed(seed)
        packed = run_step_by_step(pipeline, boxes_image, branch)
        sample = packed['data_samples']
        h, w = sample.img_shape
        assert tuple(packed['inputs'].shape) == (3, h, w)
        assert max(h, w) <= 1333 and min(h, w) in {s for s, _ in MULTI_SCALE}
        flips.add(sample.flip)
        num_boxes.add(len(sample.gt_instances))
    assert flips == {True, False}
    if branch == 1:  # crops drop some boxes
        assert min(num_boxes) < len(BOXES)


def test_paper_train_pipeline_in_dataset(write_coco):
    ann_file = write_coco([(1, 60, 90)], [ann(1, 1, 1, [5, 4, 20, 16])], [dict(id=1, name='a')])
    dataset = CocoDataset(ann_file=ann_file, metainfo=dict(classes=('a',)),
                          data_prefix=dict(img_path=ann_file.rsplit('/', 1)[0] + '/img'),
                          pipeline=TRAIN_PIPELINE)
    np.random.seed(0)
    for _ in range(4):
        out = dataset[0]
        assert out['inputs'].shape[0] == 3 and len(out['data_samples'].gt_instances) <= 1


def test_paper_test_pipeline(boxes_image):
    pipeline = Compose(build_pipeline(TEST_PIPELINE))
    packed = pipeline(dict(boxes_image))
    sample = packed['data_samples']
    # 60 x 90 -> short side 800 (long side 1200 <= 1333)
    assert sample.img_shape == (800, 1200) and sample.ori_shape == (60, 90)
    np.testing.assert_allclose(sample.scale_factor, (1200 / 90, 800 / 60))
    np.testing.assert_allclose(sample.gt_instances.bboxes.numpy(),
                               np.array(BOXES, np.float32) * (1200 / 90), rtol=1e-5)
    assert sample.flip is False


def test_collate_and_preprocess_batch(write_coco):
    """pseudo_collate + the model's DetDataPreprocessor batch our samples."""
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader

    from mmdeform.registry import MODELS
    ann_file = write_coco([(1, 20, 30), (2, 24, 16)],
                          [ann(1, 1, 1, [2, 3, 4, 5]), ann(2, 2, 1, [1, 1, 5, 5])],
                          [dict(id=1, name='a')])
    dataset = CocoDataset(ann_file=ann_file, metainfo=dict(classes=('a',)), test_mode=True,
                          data_prefix=dict(img_path=ann_file.rsplit('/', 1)[0] + '/img'),
                          pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                                    dict(type='PackDetInputs')])
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=pseudo_collate)))
    out = MODELS.build(dict(type='DetDataPreprocessor'))(batch)
    assert tuple(out['inputs'].shape) == (2, 3, 24, 30)
    assert [s.batch_input_shape for s in out['data_samples']] == [(24, 30), (24, 30)]
    assert [s.img_shape for s in out['data_samples']] == [(20, 30), (24, 16)]
