"""Box conversions and overlaps. Boxes are (..., 4) tensors; the format is in
the function name: ``cxcywh`` (centre, size) or ``xyxy`` (corners)."""
import torch


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) (cx, cy, w, h) -> (..., 4) (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) (x1, y1, x2, y2) -> (..., 4) (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) areas (negative for inverted boxes)."""
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1])


def box_iou(boxes1_xyxy: torch.Tensor, boxes2_xyxy: torch.Tensor) -> tuple:
    """Pairwise IoU and union of (n, 4) and (m, 4) xyxy boxes -> two (n, m)."""
    area1, area2 = box_area(boxes1_xyxy), box_area(boxes2_xyxy)
    top_left = torch.max(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    bottom_right = torch.min(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1_xyxy: torch.Tensor, boxes2_xyxy: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019) -> (n, m).

    Boxes must be valid (x2 >= x1, y2 >= y1); degenerate boxes raise.
    """
    for name, b in (('boxes1_xyxy', boxes1_xyxy), ('boxes2_xyxy', boxes2_xyxy)):
        if not bool((b[:, 2:] >= b[:, :2]).all()):
            raise ValueError(f'generalized_box_iou: {name} has boxes with x2 < x1 or y2 < y1')
    iou, union = box_iou(boxes1_xyxy, boxes2_xyxy)
    top_left = torch.min(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    bottom_right = torch.max(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing
