"""Data structures shared by the model and the data pipeline."""
from .bbox import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou
from .det_data_sample import DetDataSample

__all__ = ['DetDataSample', 'box_area', 'box_cxcywh_to_xyxy', 'box_iou',
           'box_xyxy_to_cxcywh', 'generalized_box_iou']
