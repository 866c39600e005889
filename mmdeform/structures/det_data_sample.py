"""``DetDataSample``: the per-image data element passed between stages."""
from mmengine.structures import BaseDataElement, InstanceData


class DetDataSample(BaseDataElement):
    """Annotations and predictions of one image.

    Fields:
        gt_instances (InstanceData): ground truth; ``bboxes`` (n, 4) absolute
            xyxy pixels of the network input (after resize/flip/crop, before
            batch padding), ``labels`` (n,) int64 contiguous class indices.
        pred_instances (InstanceData): predictions; ``bboxes`` (k, 4) absolute
            xyxy pixels of the original image, ``scores`` (k,), ``labels`` (k,).

    Meta information (set by the pipeline): ``img_id``, ``img_path``,
    ``ori_shape`` (h, w) of the file, ``img_shape`` (h, w) after the
    transforms, ``scale_factor`` (w_scale, h_scale) from ``ori_shape`` to
    ``img_shape``, ``flip``/``flip_direction`` and, set by the data
    preprocessor, ``batch_input_shape`` (h, w) of the padded batch.
    """

    @property
    def gt_instances(self) -> InstanceData:
        return self._gt_instances

    @gt_instances.setter
    def gt_instances(self, value: InstanceData) -> None:
        self.set_field(value, '_gt_instances', dtype=InstanceData)

    @gt_instances.deleter
    def gt_instances(self) -> None:
        del self._gt_instances

    @property
    def pred_instances(self) -> InstanceData:
        return self._pred_instances

    @pred_instances.setter
    def pred_instances(self, value: InstanceData) -> None:
        self.set_field(value, '_pred_instances', dtype=InstanceData)

    @pred_instances.deleter
    def pred_instances(self) -> None:
        del self._pred_instances
