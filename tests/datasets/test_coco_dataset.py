"""CocoDataset: parsing, class mapping, filtering and bad annotations."""
import pytest
from coco_files import ann

from mmdeform.datasets import COCO_CLASSES, CocoDataset
from mmdeform.registry import DATASETS

CATS = [dict(id=5, name='a'), dict(id=9, name='b')]


def build(ann_file, classes=('b', 'a'), **kwargs):
    return CocoDataset(ann_file=ann_file, metainfo=dict(classes=classes),
                       data_prefix=dict(img_path=ann_file.rsplit('/', 1)[0] + '/img'), **kwargs)


def test_parse_and_label_order(write_coco):
    ann_file = write_coco(
        [(1, 40, 60), (2, 30, 30)],
        [ann(10, 1, 5, [1, 2, 10, 20]), ann(11, 1, 9, [5, 5, 4, 4], iscrowd=1),
         ann(12, 2, 9, [0, 0, 30, 30])], CATS)
    dataset = build(ann_file)
    assert len(dataset) == 2
    info = dataset.get_data_info(0)
    assert info['img_path'].endswith('img/1.png')
    assert (info['img_id'], info['height'], info['width']) == (1, 40, 60)
    # labels follow metainfo order ('b', 'a'), matched by name, not json id order
    assert info['instances'] == [
        dict(bbox=[1.0, 2.0, 11.0, 22.0], bbox_label=1, ignore_flag=0),
        dict(bbox=[5.0, 5.0, 9.0, 9.0], bbox_label=0, ignore_flag=1)]
    assert dataset.metainfo['classes'] == ('b', 'a')


def test_default_classes_and_registry(write_coco):
    ann_file = write_coco([(1, 8, 8)], [], [dict(id=1, name='person')])
    dataset = DATASETS.build(dict(type='CocoDataset', ann_file=ann_file))
    assert dataset.metainfo['classes'] == COCO_CLASSES
    assert len(COCO_CLASSES) == 80


def test_empty_images_kept_by_default_and_filters(write_coco):
    ann_file = write_coco(
        [(1, 40, 40), (2, 40, 40), (3, 10, 40)],
        [ann(1, 1, 5, [0, 0, 5, 5]), ann(2, 2, 5, [0, 0, 5, 5], iscrowd=1)], CATS)
    assert len(build(ann_file)) == 3
    filtered = build(ann_file, filter_cfg=dict(filter_empty_gt=True, min_size=20))
    assert [filtered.get_data_info(i)['img_id'] for i in range(len(filtered))] == [1]
    test_mode = build(ann_file, filter_cfg=dict(filter_empty_gt=True, min_size=20),
                      test_mode=True)
    assert len(test_mode) == 3


def test_category_not_in_classes_is_skipped_with_warning(write_coco, log_messages):
    cats = CATS + [dict(id=7, name='zebra')]
    ann_file = write_coco([(1, 40, 40)], [ann(1, 1, 7, [0, 0, 5, 5]),
                                          ann(2, 1, 5, [0, 0, 5, 5])], cats)
    dataset = build(ann_file)
    assert [i['bbox_label'] for i in dataset.get_data_info(0)['instances']] == [1]
    assert sum("['zebra']" in m for m in log_messages()) == 1


def test_unknown_category_id_raises(write_coco):
    ann_file = write_coco([(1, 40, 40)], [ann(33, 1, 4, [0, 0, 5, 5])], CATS)
    with pytest.raises(ValueError, match=r'ann\.json: annotation 33 has category_id 4'):
        build(ann_file)


def test_annotation_of_unknown_image_raises(write_coco):
    ann_file = write_coco([(1, 40, 40)], [ann(8, 2, 5, [0, 0, 5, 5])], CATS)
    with pytest.raises(ValueError, match='annotation 8 refers to image_id 2'):
        build(ann_file)


def test_malformed_json_raises_naming_the_file(tmp_path):
    path = tmp_path / 'broken.json'
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match='broken.json: malformed COCO json'):
        build(str(path))
    path.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match='broken.json: COCO json needs a list "images"'):
        build(str(path))


def test_zero_and_negative_size_boxes_skipped_and_counted(write_coco, log_messages):
    ann_file = write_coco([(1, 40, 40)], [ann(1, 1, 5, [3, 3, 0, 5]),
                                          ann(2, 1, 5, [3, 3, 5, -1]),
                                          ann(3, 1, 5, [3, 3, 5, 5])], CATS)
    dataset = build(ann_file)
    assert [i['bbox'] for i in dataset.get_data_info(0)['instances']] == [[3.0, 3.0, 8.0, 8.0]]
    messages = [m for m in log_messages() if 'width or height <= 0' in m]
    assert len(messages) == 1 and '2 box(es)' in messages[0] and '[1, 2]' in messages[0]


def test_boxes_outside_the_image_clipped_or_skipped(write_coco, log_messages):
    ann_file = write_coco([(1, 40, 50)], [ann(1, 1, 5, [-5, 30, 20, 20]),
                                          ann(2, 1, 5, [60, 0, 10, 10]),
                                          ann(3, 1, 5, [0, -20, 10, 10])], CATS)
    dataset = build(ann_file)
    # height 40, width 50: box 1 is clipped, boxes 2 and 3 lie entirely outside
    assert [i['bbox'] for i in dataset.get_data_info(0)['instances']] == [[0.0, 30.0, 15.0, 40.0]]
    text = '\n'.join(log_messages())
    assert '1 box(es) clipped: partly outside the image (annotation ids e.g. [1])' in text
    assert '2 box(es) skipped: entirely outside the image (annotation ids e.g. [2, 3])' in text


def test_bad_bbox_field_raises(write_coco):
    ann_file = write_coco([(1, 40, 40)], [ann(4, 1, 5, [0, 0, 5])], CATS)
    with pytest.raises(ValueError, match=r'annotation 4 has bbox \[0, 0, 5\]'):
        build(ann_file)


def test_pipeline_applied(write_coco):
    ann_file = write_coco([(1, 20, 30)], [ann(1, 1, 9, [2, 3, 4, 5])], CATS)
    dataset = build(ann_file, pipeline=[dict(type='LoadImageFromFile'),
                                        dict(type='LoadAnnotations'),
                                        dict(type='PackDetInputs')])
    out = dataset[0]
    assert tuple(out['inputs'].shape) == (3, 20, 30)
    assert out['data_samples'].gt_instances.labels.tolist() == [0]
    assert out['data_samples'].gt_instances.bboxes.tolist() == [[2.0, 3.0, 6.0, 8.0]]


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_box_skipped_naming_file_image_and_annotation(write_coco, log_messages, bad):
    ann_file = write_coco([(7, 40, 40)], [ann(1, 7, 5, [0, 0, 5, 5]),
                                          ann(42, 7, 5, [bad, 2, 5, 5])], CATS)
    dataset = build(ann_file)
    assert dataset.get_data_info(0)['instances'] == [
        dict(bbox=[0.0, 0.0, 5.0, 5.0], bbox_label=1, ignore_flag=0)]
    text = '\n'.join(log_messages())
    assert (f'{ann_file}: 1 box(es) skipped: non-finite value (NaN or inf) '
            '(annotation ids e.g. [42]) of image ids [7]') in text
    assert 'clipped' not in text


def test_missing_id_area_iscrowd_filled_with_warning(write_coco, log_messages):
    anns = [dict(image_id=1, category_id=5, bbox=[0, 0, 4, 5]),
            dict(id=8, image_id=1, category_id=9, bbox=[1, 1, 2, 2], iscrowd=1, area=3.0)]
    ann_file = write_coco([(1, 40, 40)], anns, CATS)
    dataset = build(ann_file)
    assert [i['ignore_flag'] for i in dataset.get_data_info(0)['instances']] == [0, 1]
    text = '\n'.join(log_messages())
    for key in ('id', 'iscrowd', 'area'):
        assert f'{ann_file}: 1 annotation(s) without "{key}"; filled with' in text


def test_missing_required_annotation_field_raises(write_coco):
    ann_file = write_coco([(1, 40, 40)], [dict(id=3, image_id=1, bbox=[0, 0, 4, 5])], CATS)
    with pytest.raises(ValueError, match=r'ann\.json: annotation 3 has no "category_id"'):
        build(ann_file)


def test_no_images_raises_naming_the_file(write_coco):
    ann_file = write_coco([], [], CATS)
    with pytest.raises(ValueError, match=r'ann\.json: the COCO json lists no images'):
        build(ann_file)


def test_all_images_filtered_out_raises(write_coco):
    ann_file = write_coco([(1, 8, 8)], [], CATS)
    with pytest.raises(ValueError, match=r'ann\.json: all 1 images were filtered out'):
        build(ann_file, filter_cfg=dict(filter_empty_gt=True))
