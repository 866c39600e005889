"""``DeformableDETR``: the detector, one spine from pixels to losses or detections."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel

from mmdeform.models.stage_outputs import HeadOutput, QueryOutput
from mmdeform.registry import MODELS
from mmdeform.structures import DetDataSample


@MODELS.register_module()
class DeformableDETR(BaseModel):
    """Deformable DETR (Zhu et al., 2020).

    The stages run in this order (see :meth:`forward_stages`): backbone ->
    multi-scale projection (neck) -> padding masks and positional encodings
    per level -> deformable encoder -> query generation (learned queries or
    two-stage proposals) -> decoder -> head, then the head's set loss or its
    top-k post-processing. Variants (box refinement, two-stage, single-scale)
    are chosen by the ``type`` of the components in the config.

    Args:
        backbone (dict): Backbone config; returns a tuple of (B, C_l, H_l, W_l).
        neck (dict): Multi-scale projection config; returns L maps (B, C, H_l, W_l).
        positional_encoding (dict): Maps a (B, H, W) padding mask to a
            (B, C, H, W) float32 encoding.
        encoder (dict): Encoder config; ``forward(feats, masks, pos_embeds)``.
        query_generator (dict): Makes the decoder's queries and references.
        decoder (dict): Decoder config; receives the head's ``reg_branches``.
        bbox_head (dict): Head config (predictions, loss, post-process).
        data_preprocessor (dict, optional): Normalization / batching config.
        init_cfg (dict, optional): mmengine initialization config.
    """

    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 positional_encoding: dict,
                 encoder: dict,
                 query_generator: dict,
                 decoder: dict,
                 bbox_head: dict,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        if isinstance(data_preprocessor, dict):
            # built here so mmdeform's registry resolves it without a default scope
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck)
        self.positional_encoding = MODELS.build(positional_encoding)
        self.encoder = MODELS.build(encoder)
        self.query_generator = MODELS.build(query_generator)
        self.decoder = MODELS.build(decoder)
        self.bbox_head = MODELS.build(bbox_head)

    def forward(self, inputs: torch.Tensor,
                data_samples: Optional[List[DetDataSample]] = None,
                mode: str = 'tensor') -> Union[Dict[str, torch.Tensor], List[DetDataSample],
                                               Tuple[torch.Tensor, torch.Tensor]]:
        """mmengine entry point.

        Args:
            inputs (Tensor): (B, 3, H, W) normalized, bottom/right padded images.
            data_samples (list[DetDataSample], optional): one per image with
                ``img_shape`` (h, w) of the un-padded image inside (H, W);
                ``gt_instances`` for 'loss', ``ori_shape`` for 'predict'.
            mode (str): 'loss' -> dict of losses, 'predict' -> data samples
                with ``pred_instances``, 'tensor' -> (logits (L, B, Q, K),
                boxes_cxcywh (L, B, Q, 4)) of every decoder layer.
        """
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            head_output, _ = self.forward_stages(inputs, data_samples)
            return head_output.logits, head_output.boxes_cxcywh
        raise ValueError(f"DeformableDETR: mode must be 'loss', 'predict' or 'tensor', "
                         f'got {mode!r}')

    def loss(self, inputs: torch.Tensor,
             data_samples: List[DetDataSample]) -> Dict[str, torch.Tensor]:
        """Stages, then Hungarian matching and set losses of every layer."""
        head_output, query_output = self.forward_stages(inputs, data_samples)
        return self.bbox_head.loss(head_output, query_output, data_samples)

    def predict(self, inputs: torch.Tensor, data_samples: List[DetDataSample],
                rescale: bool = True) -> List[DetDataSample]:
        """Stages, then the top-k (query, class) pairs of the last layer."""
        head_output, _ = self.forward_stages(inputs, data_samples)
        return self.bbox_head.predict(head_output, data_samples, rescale=rescale)

    def forward_stages(self, inputs: torch.Tensor,
                       data_samples: Optional[Sequence[DetDataSample]] = None
                       ) -> Tuple[HeadOutput, QueryOutput]:
        """The detector's spine, shared by loss, predict and tensor modes.

        Shapes: B images, L feature levels, S tokens over all levels, Q
        queries, C channels, K classes, D decoder layers.

        Args:
            inputs (Tensor): (B, 3, H, W) normalized, padded images.
            data_samples (list[DetDataSample], optional): ``img_shape`` of
                each image gives its padding; without samples nothing is padding.

        Returns:
            tuple[HeadOutput, QueryOutput]: predictions of every decoder layer
            and the queries (two-stage proposal outputs included).
        """
        image_mask = self.padding_mask(inputs, data_samples)  # (B, H, W), True = padding
        backbone_feats = self.backbone(inputs)  # tuple of (B, C_i, H_i, W_i)
        feats = self.neck(backbone_feats)  # L x (B, C, H_l, W_l), extra levels included
        # Each level's mask is resized from the image mask (extra levels too).
        masks = [F.interpolate(image_mask[None].float(), size=feat.shape[-2:])[0].to(torch.bool)
                 for feat in feats]  # L x (B, H_l, W_l)
        # The encoding is computed in float32, then cast to the features' dtype.
        pos_embeds = [self.positional_encoding(mask).to(feat.dtype)
                      for mask, feat in zip(masks, feats)]  # L x (B, C, H_l, W_l)
        encoder_output = self.encoder(feats, masks, pos_embeds)  # memory (B, S, C)
        query_output = self.query_generator(encoder_output)  # query (B, Q, C), refs (B, Q, 2|4)
        decoder_output = self.decoder(
            query_output.query, query_output.query_pos, query_output.reference_points,
            encoder_output,
            reg_branches=self.bbox_head.reg_branches)  # hidden_states (D, B, Q, C)
        head_output = self.bbox_head(decoder_output)  # logits (D, B, Q, K), boxes (D, B, Q, 4)
        return head_output, query_output

    @staticmethod
    def padding_mask(inputs: torch.Tensor,
                     data_samples: Optional[Sequence[DetDataSample]]) -> torch.Tensor:
        """(B, H, W) bool mask, True outside each sample's ``img_shape``.

        Images sit at the top-left of the padded batch (bottom/right padding).
        """
        batch, _, height, width = inputs.shape
        mask = torch.zeros((batch, height, width), dtype=torch.bool, device=inputs.device)
        if data_samples is None:
            return mask
        if len(data_samples) != batch:
            raise ValueError(f'DeformableDETR: {len(data_samples)} data samples for a batch '
                             f'of {batch} images')
        mask.fill_(True)
        for i, sample in enumerate(data_samples):
            img_h, img_w = sample.img_shape[:2]
            if img_h > height or img_w > width:
                raise ValueError(f'DeformableDETR: sample {i} has img_shape {sample.img_shape} '
                                 f'larger than the batch input ({height}, {width})')
            mask[i, :img_h, :img_w] = False
        return mask
