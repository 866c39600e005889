"""CocoMetric against a tiny COCO json."""
import json

import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.structures import InstanceData

from mmdeform.evaluation import CocoMetric
from mmdeform.registry import METRICS
from mmdeform.structures import DetDataSample
from mmdeform.testing import gloo_group, run_processes

# json categories; the dataset's classes list them in the other order
CATEGORIES = [dict(id=3, name='cat'), dict(id=7, name='dog')]
CLASSES = ('dog', 'cat')
LABEL_OF_CAT = {7: 0, 3: 1}
# (image id, category id, [x, y, w, h], iscrowd)
GT = [(1, 3, [10, 10, 20, 30], 0), (1, 7, [50, 40, 60, 50], 0), (2, 7, [0, 0, 8, 8], 0),
      (2, 3, [30, 30, 15, 15], 1), (3, 3, [5, 60, 90, 30], 0)]


@pytest.fixture
def ann_file(tmp_path):
    images = [dict(id=i, file_name=f'{i}.jpg', height=120, width=160) for i in (1, 2, 3, 4)]
    annotations = [dict(id=k + 1, image_id=img, category_id=cat, bbox=box, iscrowd=crowd,
                        area=box[2] * box[3]) for k, (img, cat, box, crowd) in enumerate(GT)]
    path = tmp_path / 'gt.json'
    path.write_text(json.dumps(dict(images=images, annotations=annotations,
                                    categories=CATEGORIES)))
    return str(path)


def predictions(shift=0.0, img_ids=(1, 2, 3), label_of_cat=None):
    """Per image: dict(img_id, pred_instances) with the non-crowd gt boxes as
    xyxy detections of score 1, moved right by ``shift`` pixels."""
    label_of_cat = label_of_cat or LABEL_OF_CAT
    samples = []
    for img_id in img_ids:
        gts = [(cat, box) for img, cat, box, crowd in GT if img == img_id and not crowd]
        boxes_xyxy = torch.tensor([[x + shift, y, x + w + shift, y + h]
                                   for _, (x, y, w, h) in gts], dtype=torch.float32)
        samples.append(dict(img_id=img_id, pred_instances=dict(
            bboxes=boxes_xyxy.reshape(-1, 4), scores=torch.ones(len(gts)),
            labels=torch.tensor([label_of_cat[cat] for cat, _ in gts], dtype=torch.int64))))
    return samples


def evaluate(metric, samples):
    metric.process(None, samples)
    return metric.evaluate(len(samples))


def make_metric(ann_file, classes=CLASSES, **kwargs):
    metric = METRICS.build(dict(type='CocoMetric', ann_file=ann_file, **kwargs))
    if classes is not None:
        metric.dataset_meta = dict(classes=classes)
    return metric


def test_perfect_predictions(ann_file):
    results = evaluate(make_metric(ann_file), predictions())
    for key in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_AR@100'):
        assert results[f'coco/{key}'] == pytest.approx(1.0)
    assert set(results) == {f'coco/bbox_{k}' for k in (
        'mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l', 'AR@1', 'AR@10', 'AR@100',
        'AR_s@100', 'AR_m@100', 'AR_l@100')}


def test_shifted_boxes_score_lower(ann_file):
    slightly = evaluate(make_metric(ann_file), predictions(shift=2.0))['coco/bbox_mAP']
    more = evaluate(make_metric(ann_file), predictions(shift=5.0))['coco/bbox_mAP']
    assert 0.0 < more < slightly < 1.0


def test_labels_map_to_categories_by_class_name(ann_file):
    # labels in json id order are wrong for classes ('dog', 'cat') ...
    swapped = predictions(label_of_cat={3: 0, 7: 1})
    assert evaluate(make_metric(ann_file), swapped)['coco/bbox_mAP'] == pytest.approx(0.0)
    # ... and right when no dataset_meta is set
    no_meta = make_metric(ann_file, classes=None)
    assert evaluate(no_meta, predictions(label_of_cat={3: 0, 7: 1}))['coco/bbox_mAP'] == \
        pytest.approx(1.0)


def test_empty_predictions_give_zero(ann_file):
    results = evaluate(make_metric(ann_file), predictions(shift=0.0, img_ids=()) + [
        dict(img_id=i, pred_instances=dict(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                           labels=torch.zeros(0, dtype=torch.int64)))
        for i in (1, 2, 3)])
    assert results['coco/bbox_mAP'] == 0.0 and results['coco/bbox_AR@100'] == 0.0


def test_format_only_writes_coco_results(ann_file, tmp_path):
    metric = make_metric(ann_file, format_only=True, outfile_prefix=str(tmp_path / 'out/res'))
    assert evaluate(metric, predictions(shift=1.5)) == {}
    detections = json.loads((tmp_path / 'out' / 'res.bbox.json').read_text())
    assert len(detections) == 4
    assert set(detections[0]) == {'image_id', 'category_id', 'bbox', 'score'}
    assert detections[0] == dict(image_id=1, category_id=3, bbox=[11.5, 10.0, 20.0, 30.0],
                                 score=1.0)


def test_evaluator_with_det_data_samples_and_subset(ann_file):
    """Through mmengine's Evaluator (DetDataSample -> dict); only the processed
    images (2 of 4) are evaluated."""
    evaluator = Evaluator(make_metric(ann_file))
    samples = []
    for raw in predictions(img_ids=(1, 3)):
        sample = DetDataSample(metainfo=dict(img_id=raw['img_id']))
        sample.pred_instances = InstanceData(**raw['pred_instances'])
        samples.append(sample)
    evaluator.process(samples)
    assert evaluator.evaluate(2)['coco/bbox_mAP'] == pytest.approx(1.0)


def test_bad_arguments_and_inputs(ann_file):
    with pytest.raises(ValueError, match='ann_file'):
        CocoMetric()
    with pytest.raises(ValueError, match='bbox'):
        CocoMetric(ann_file=ann_file, metric='segm')
    with pytest.raises(ValueError, match='outfile_prefix'):
        CocoMetric(ann_file=ann_file, format_only=True)
    with pytest.raises(ValueError, match=r'image ids \[99\] are not in'):
        evaluate(make_metric(ann_file), [{**predictions()[0], 'img_id': 99}])
    with pytest.raises(ValueError, match=r'image 1 has labels \[0, 5\]'):
        bad = predictions()[0]
        bad['pred_instances']['labels'] = torch.tensor([0, 5])
        evaluate(make_metric(ann_file), [bad])


def rank_predictions(rank):
    """What a 2-rank sampler gives each rank: rank 0 images 1 and 3 (boxes
    shifted), rank 1 image 2 (exact) and image 1 again as padding."""
    if rank == 0:
        return predictions(shift=5.0, img_ids=(1, 3))
    return predictions(img_ids=(2,)) + predictions(shift=5.0, img_ids=(1,))


def _distributed_worker(rank, world_size, store_file, ann_file, out_file):
    with gloo_group(rank, world_size, store_file):
        metric = make_metric(ann_file)
        metric.process(None, rank_predictions(rank))
        results = metric.evaluate(3)
    if rank == 1:
        with open(out_file, 'w') as f:
            json.dump(results, f)


def test_results_collected_from_all_ranks(ann_file, tmp_path):
    out_file = str(tmp_path / 'rank1.json')
    # fork: no re-import of torch in the workers (CPU only, so forking is safe)
    run_processes(_distributed_worker, args=(2, str(tmp_path / 'store'), ann_file, out_file),
                  nprocs=2, start_method='fork')
    with open(out_file) as f:
        results = json.load(f)
    single = evaluate(make_metric(ann_file),
                      predictions(shift=5.0, img_ids=(1, 3)) + predictions(img_ids=(2,)))
    # rank 1 reports the evaluation of all three images, not of its own ones
    assert results == pytest.approx(single)
    assert results['coco/bbox_mAP'] < 0.99


def test_missing_id_area_iscrowd_are_filled_before_inference(tmp_path):
    """pycocotools needs id, area and iscrowd; the metric fills them when it
    is built and evaluates as with complete annotations."""
    images = [dict(id=i, file_name=f'{i}.jpg', height=120, width=160) for i in (1, 2, 3)]
    annotations = [dict(image_id=img, category_id=cat, bbox=box)
                   for img, cat, box, crowd in GT if not crowd]
    path = tmp_path / 'sparse.json'
    path.write_text(json.dumps(dict(images=images, annotations=annotations,
                                    categories=CATEGORIES)))
    metric = make_metric(str(path))
    anns = metric._coco_gt.dataset['annotations']
    assert sorted(a['id'] for a in anns) == [1, 2, 3, 4]
    assert all(a['iscrowd'] == 0 and a['area'] == a['bbox'][2] * a['bbox'][3] for a in anns)
    assert evaluate(metric, predictions())['coco/bbox_mAP'] == pytest.approx(1.0)


def test_json_without_images_or_required_fields_raises_when_built(tmp_path):
    path = tmp_path / 'empty.json'
    path.write_text(json.dumps(dict(images=[], annotations=[], categories=CATEGORIES)))
    with pytest.raises(ValueError, match=r'empty\.json lists no images'):
        CocoMetric(ann_file=str(path))
    path = tmp_path / 'nobox.json'
    path.write_text(json.dumps(dict(images=[dict(id=1, file_name='1.jpg', height=9, width=9)],
                                    annotations=[dict(id=4, image_id=1, category_id=3)],
                                    categories=CATEGORIES)))
    with pytest.raises(ValueError, match=r'nobox\.json: annotation 4 has no "bbox"'):
        CocoMetric(ann_file=str(path))
