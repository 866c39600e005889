"""``DeformableDETRHead``: per-layer class / box predictions, set loss, post-process."""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine import dist
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import nn

from mmdeform.models.layers.mlp import MLP
from mmdeform.models.layers.utils import boxes_from_reference
from mmdeform.models.stage_outputs import DecoderOutput, HeadOutput, QueryOutput
from mmdeform.registry import MODELS, TASK_UTILS
from mmdeform.structures import DetDataSample, box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

# The paper's losses and matching costs (weights: class 2, L1 5, GIoU 2).
DEFAULT_LOSS_CLS = dict(type='FocalLoss', alpha=0.25, gamma=2.0, loss_weight=2.0)
DEFAULT_LOSS_BBOX = dict(type='L1Loss', loss_weight=5.0)
DEFAULT_LOSS_IOU = dict(type='GIoULoss', loss_weight=2.0)
DEFAULT_ASSIGNER = dict(
    type='HungarianAssigner',
    match_costs=[dict(type='FocalLossCost', weight=2.0), dict(type='BBoxL1Cost', weight=5.0),
                 dict(type='IoUCost', iou_mode='giou', weight=2.0)])


def check_cfg_keys(name: str, cfg: Optional[dict], allowed: Sequence[str]) -> dict:
    """A copy of ``cfg`` (empty for None), refusing keys outside ``allowed``."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f'DeformableDETRHead: {name} has unknown keys {unknown}; '
                         f'allowed: {list(allowed)}')
    return cfg


@MODELS.register_module()
class DeformableDETRHead(BaseModule):
    """Classification and box branches applied to every decoder layer.

    Each layer ``l`` predicts ``logits = cls_branches[i](hidden)`` and boxes
    ``boxes_from_reference(reg_branches[i](hidden), reference_l)`` with
    ``i = branch_index(l)`` (0 when shared, else ``l``). Training
    matches every layer (and the two-stage encoder proposals) to the ground
    truth on its own and sums focal, L1 and GIoU losses normalized by the
    number of ground-truth boxes in the batch.

    Args:
        num_classes (int): Number of object classes (sigmoid classifier, no
            background class). The head owns this size; the detector gives
            it to a query generator that scores classes (two-stage).
        embed_dims (int): Channels C of the decoder's hidden states; the
            detector passes the neck's ``out_channels``.
        num_layers (int): Number of decoder layers the head is applied to;
            the detector passes the decoder's ``num_layers``.
        share_branches (bool): True: one class branch and one box MLP used by
            every layer (``cls_branches`` / ``reg_branches`` hold one module
            each). False: one branch pair per layer. The detector passes
            ``not decoder.refines_references`` (box refinement needs a box
            branch per layer) and refuses a config that contradicts it.
        reference_dims (int): 2 when the decoder's references are points
            (learned queries), 4 when they are boxes (two-stage proposals);
            the detector passes the query generator's ``reference_dims``.
        init_wh_bias (float, optional): Initial bias of the (w, h) outputs of
            the first box branch. Default: -2.0 for point references (small
            boxes around them), 0.0 for box references (proposals already
            carry a size), as in the official model.
        loss_cls (dict, optional): Classification loss config, called as
            ``loss(logits (K, C), targets (K, C), avg_factor)``; default
            ``DEFAULT_LOSS_CLS`` (focal loss, weight 2).
        loss_bbox (dict, optional): Box regression loss on normalized cxcywh
            boxes; default L1, weight 5.
        loss_iou (dict, optional): IoU loss on normalized xyxy boxes; default
            GIoU, weight 2.
        train_cfg (dict, optional): ``assigner``: one-to-one assigner config
            (``TASK_UTILS``); default Hungarian matching with the paper's
            costs. MMDetection's key; the detector passes its ``train_cfg``.
        test_cfg (dict, optional): ``max_per_img`` (100): detections kept
            per image by :meth:`predict`. The detector passes its ``test_cfg``.
        init_cfg (dict, optional): mmengine initialization config.
    """

    def __init__(self,
                 num_classes: int = 80,
                 embed_dims: int = 256,
                 num_layers: int = 6,
                 share_branches: bool = True,
                 reference_dims: int = 2,
                 init_wh_bias: Optional[float] = None,
                 loss_cls: Optional[dict] = None,
                 loss_bbox: Optional[dict] = None,
                 loss_iou: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        train_cfg = check_cfg_keys('train_cfg', train_cfg, ('assigner', ))
        test_cfg = check_cfg_keys('test_cfg', test_cfg, ('max_per_img', ))
        max_per_img = test_cfg.get('max_per_img', 100)
        if num_layers < 1 or max_per_img < 1:
            raise ValueError('DeformableDETRHead: num_layers and test_cfg.max_per_img must be '
                             f'>= 1, got {num_layers} and {max_per_img}')
        if reference_dims not in (2, 4):
            raise ValueError(f'DeformableDETRHead: reference_dims must be 2 (points) or 4 '
                             f'(boxes), got {reference_dims}')
        self.num_classes, self.num_layers = num_classes, num_layers
        self.share_branches = share_branches
        self.reference_dims = reference_dims
        self.max_per_img = max_per_img
        self.init_wh_bias = (-2.0 if reference_dims == 2 else 0.0) \
            if init_wh_bias is None else init_wh_bias
        num_branches = 1 if share_branches else num_layers
        self.cls_branches = nn.ModuleList(
            nn.Linear(embed_dims, num_classes) for _ in range(num_branches))
        self.reg_branches = nn.ModuleList(
            MLP(embed_dims, embed_dims, 4, 3) for _ in range(num_branches))
        self.loss_cls = MODELS.build(loss_cls or DEFAULT_LOSS_CLS)
        self.loss_bbox = MODELS.build(loss_bbox or DEFAULT_LOSS_BBOX)
        self.loss_iou = MODELS.build(loss_iou or DEFAULT_LOSS_IOU)
        self.assigner = TASK_UTILS.build(train_cfg.get('assigner', DEFAULT_ASSIGNER))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Official init: focal-loss prior on the class bias (score 0.01) and
        zero box deltas, except the (w, h) bias of the first box branch, which
        is ``init_wh_bias``. Other weights keep PyTorch's defaults."""
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for cls_branch in self.cls_branches:
            nn.init.constant_(cls_branch.bias, prior_bias)
        for reg_branch in self.reg_branches:
            nn.init.zeros_(reg_branch.layers[-1].weight)
            nn.init.zeros_(reg_branch.layers[-1].bias)
        nn.init.constant_(self.reg_branches[0].layers[-1].bias[2:], self.init_wh_bias)

    def init_weights(self) -> None:
        """Official initialization, then ``init_cfg`` (if any) on top."""
        self._reset_parameters()
        super().init_weights()

    def branch_index(self, layer: int) -> int:
        """Index into ``cls_branches`` / ``reg_branches`` used by ``layer``."""
        return 0 if self.share_branches else layer

    def shared_branches(self) -> Optional[Tuple[nn.Module, nn.Module]]:
        """The (class, box) branch pair every layer uses, or None when each
        layer has its own; the detector passes it to the query generator."""
        return (self.cls_branches[0], self.reg_branches[0]) if self.share_branches else None

    def forward(self, decoder_output: DecoderOutput) -> HeadOutput:
        """Predictions of every decoder layer.

        Args:
            decoder_output (DecoderOutput): ``hidden_states`` (L, B, Q, C) and
                the reference each layer received, (B, Q, 2) or (B, Q, 4).

        Returns:
            HeadOutput: logits (L, B, Q, num_classes), boxes_cxcywh (L, B, Q, 4).
        """
        hidden_states = decoder_output.hidden_states
        if hidden_states.shape[0] != self.num_layers or \
                len(decoder_output.references) != self.num_layers:
            raise ValueError(
                f'DeformableDETRHead: built for {self.num_layers} decoder layers, got '
                f'hidden_states {tuple(hidden_states.shape)} and '
                f'{len(decoder_output.references)} references')
        logits, boxes = [], []
        for layer, (hidden, reference) in enumerate(
                zip(hidden_states, decoder_output.references)):
            index = self.branch_index(layer)
            logits.append(self.cls_branches[index](hidden))  # (B, Q, num_classes)
            delta = self.reg_branches[index](hidden)  # (B, Q, 4)
            boxes.append(boxes_from_reference(delta, reference))
        return HeadOutput(logits=torch.stack(logits), boxes_cxcywh=torch.stack(boxes))

    def loss(self, head_output: HeadOutput, query_output: Optional[QueryOutput],
             data_samples: Sequence[DetDataSample]) -> Dict[str, torch.Tensor]:
        """Set losses of every decoder layer and of two-stage proposals.

        Args:
            head_output (HeadOutput): predictions of all L layers.
            query_output (QueryOutput, optional): its ``enc_logits`` (B, S, K)
                and ``enc_boxes_cxcywh`` (B, S, 4), when present, get a
                class-agnostic loss (every ground truth labelled 0).
            data_samples (list[DetDataSample]): ``gt_instances`` with
                ``bboxes`` (n, 4) absolute xyxy pixels of ``img_shape`` and
                ``labels`` (n,).

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_bbox``, ``loss_iou`` of the
            last layer, ``d{l}.loss_*`` of the earlier layers and, for two-stage
            queries, ``enc_loss_*``.
        """
        logits, boxes = head_output.logits, head_output.boxes_cxcywh
        gt_labels, gt_boxes = self.get_targets(data_samples, boxes.dtype)
        num_boxes = self.num_boxes(gt_labels, boxes.device)
        losses = {}
        num_layers = logits.shape[0]
        for layer in range(num_layers):
            prefix = '' if layer == num_layers - 1 else f'd{layer}.'
            layer_losses = self.loss_by_layer(
                logits[layer], boxes[layer], gt_labels, gt_boxes, num_boxes)
            losses.update({prefix + name: value for name, value in layer_losses.items()})
        if query_output is not None and query_output.enc_logits is not None:
            agnostic_labels = [torch.zeros_like(labels) for labels in gt_labels]
            enc_losses = self.loss_by_layer(
                query_output.enc_logits, query_output.enc_boxes_cxcywh,
                agnostic_labels, gt_boxes, num_boxes)
            losses.update({'enc_' + name: value for name, value in enc_losses.items()})
        return losses

    def loss_by_layer(self, logits: torch.Tensor, boxes_cxcywh: torch.Tensor,
                      gt_labels: List[torch.Tensor], gt_boxes_cxcywh: List[torch.Tensor],
                      num_boxes: float) -> Dict[str, torch.Tensor]:
        """Match one layer's predictions to the ground truth and score them.

        Args:
            logits (Tensor): (B, Q, K) raw class logits.
            boxes_cxcywh (Tensor): (B, Q, 4) normalized predicted boxes.
            gt_labels (list[Tensor]): B tensors (n_b,) int64 class indices.
            gt_boxes_cxcywh (list[Tensor]): B tensors (n_b, 4) normalized.
            num_boxes (float): normalizer of every term (ground truths in the
                batch, averaged over processes, at least 1).

        Returns:
            dict[str, Tensor]: scalar ``loss_cls``, ``loss_bbox``, ``loss_iou``.
        """
        targets = torch.zeros_like(logits)  # (B, Q, K) one-hot at matched queries
        matched_pred, matched_gt = [], []
        for b in range(logits.shape[0]):
            with torch.no_grad():
                assign = self.assigner.assign(logits[b].detach(), boxes_cxcywh[b].detach(),
                                              gt_labels[b], gt_boxes_cxcywh[b])
            targets[b, assign.query_index, gt_labels[b][assign.gt_index]] = 1
            matched_pred.append(boxes_cxcywh[b, assign.query_index])
            matched_gt.append(gt_boxes_cxcywh[b][assign.gt_index])
        matched_pred, matched_gt = torch.cat(matched_pred), torch.cat(matched_gt)  # (M, 4)
        return dict(
            # (B, Q, K) -> (B*Q, K): every query and class counts, unmatched ones as 0
            loss_cls=self.loss_cls(logits.flatten(0, 1), targets.flatten(0, 1),
                                   avg_factor=num_boxes),
            loss_bbox=self.loss_bbox(matched_pred, matched_gt, avg_factor=num_boxes),
            loss_iou=self.loss_iou(box_cxcywh_to_xyxy(matched_pred),
                                   box_cxcywh_to_xyxy(matched_gt), avg_factor=num_boxes))

    @staticmethod
    def get_targets(data_samples: Sequence[DetDataSample],
                    dtype: torch.dtype) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Ground truth of every image as labels and normalized cxcywh boxes.

        Args:
            data_samples (list[DetDataSample]): ``gt_instances.bboxes`` (n, 4)
                absolute xyxy pixels of ``img_shape`` (h, w).
            dtype (torch.dtype): dtype of the predictions; boxes are converted
                to it before normalization so the loss runs in one dtype.

        Returns:
            tuple[list[Tensor], list[Tensor]]: labels (n,) int64 and boxes
            (n, 4) cxcywh normalized by the un-padded image size.
        """
        labels, boxes = [], []
        for sample in data_samples:
            bboxes = sample.gt_instances.bboxes
            if bboxes.ndim != 2 or bboxes.shape[-1] != 4:
                raise ValueError('DeformableDETRHead: gt_instances.bboxes must be (n, 4) xyxy, '
                                 f'got {tuple(bboxes.shape)}')
            img_h, img_w = sample.img_shape[:2]
            scale = bboxes.new_tensor([img_w, img_h, img_w, img_h], dtype=dtype)
            boxes.append(box_xyxy_to_cxcywh(bboxes.to(dtype) / scale))
            labels.append(sample.gt_instances.labels.long())
        return labels, boxes

    @staticmethod
    def num_boxes(gt_labels: List[torch.Tensor], device: torch.device) -> float:
        """Ground-truth count of the batch, averaged over processes, >= 1."""
        count = torch.tensor(float(sum(len(labels) for labels in gt_labels)),
                             dtype=torch.float64, device=device)
        if dist.is_distributed():
            dist.all_reduce(count, op='mean')
        return max(count.item(), 1.0)

    def predict(self, head_output: HeadOutput, data_samples: Sequence[DetDataSample],
                rescale: bool = True) -> List[DetDataSample]:
        """Top-scoring (query, class) pairs of the last layer of every image.

        Scores are ``sigmoid(logits)`` over all Q*K pairs; the best
        ``test_cfg.max_per_img`` are kept (sorted, no threshold, no NMS), so one
        query may appear with several labels. Boxes are not clipped.

        Args:
            head_output (HeadOutput): predictions; only the last layer is used.
            data_samples (list[DetDataSample]): one per image, with
                ``ori_shape`` and ``img_shape`` (h, w).
            rescale (bool): boxes in pixels of ``ori_shape`` if True, else of
                ``img_shape``.

        Returns:
            list[DetDataSample]: the same samples with ``pred_instances``:
            ``scores`` (k,), ``labels`` (k,) int64, ``bboxes`` (k, 4) xyxy.
        """
        logits, boxes_cxcywh = head_output.logits[-1], head_output.boxes_cxcywh[-1]
        num_classes = logits.shape[-1]
        k = min(self.max_per_img, logits.shape[1] * num_classes)
        for b, sample in enumerate(data_samples):
            # (Q, K) -> (Q*K,): index = query * K + class
            scores, index = logits[b].sigmoid().flatten().topk(k)
            boxes_xyxy = box_cxcywh_to_xyxy(boxes_cxcywh[b][index // num_classes])
            height, width = (sample.ori_shape if rescale else sample.img_shape)[:2]
            pred_instances = InstanceData()
            pred_instances.scores = scores
            pred_instances.labels = index % num_classes
            pred_instances.bboxes = boxes_xyxy * boxes_xyxy.new_tensor(
                [width, height, width, height])
            sample.pred_instances = pred_instances
        return list(data_samples)
