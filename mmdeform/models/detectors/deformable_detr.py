"""``DeformableDETR``: the detector, one spine from pixels to losses or detections."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn

from mmdeform.models.stage_outputs import HeadOutput, QueryOutput
from mmdeform.registry import MODELS
from mmdeform.structures import DetDataSample


def build_with_sizes(name: str, cfg: dict, **sizes) -> nn.Module:
    """Build a component, giving it ``sizes`` unless its config sets them.

    A size the config sets itself must equal the one given (the attribute of
    the same name on the built module is compared), else a ValueError names
    the key; so every size has one owner and a contradiction fails at build.

    Args:
        name (str): the component's key in the model config, for messages.
        cfg (dict): its config (with ``type``).
        **sizes: the sizes earlier components declare.
    """
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise ValueError(f'DeformableDETR: {name} must be a config dict with a type, got {cfg!r}')
    module = MODELS.build(cfg, default_args=sizes)
    for key, value in sizes.items():
        if key in cfg and hasattr(module, key) and getattr(module, key) != value:
            raise ValueError(f'DeformableDETR: {name}.{key}={cfg[key]!r} contradicts the '
                             f'{value!r} the detector gives it from the earlier stages; '
                             f'remove {name}.{key} from the config')
    return module


@MODELS.register_module()
class DeformableDETR(BaseModel):
    """Deformable DETR (Zhu et al., 2020).

    The stages run in this order (see :meth:`forward_stages`): backbone ->
    multi-scale projection (neck) -> padding masks and positional encodings
    per level -> deformable encoder -> query generation (learned queries or
    two-stage proposals) -> decoder -> head, then the head's set loss or its
    top-k post-processing. Variants (box refinement, two-stage, single-scale)
    are chosen by the ``type`` of the components in the config.

    The detector owns no size of its own except ``num_queries``: it builds
    the components in spine order and gives each one the sizes that earlier
    ones declare (``MODELS.build(cfg, default_args=...)``), so a config
    writes every size once:

    - neck: ``in_channels`` = the backbone's ``out_channels``;
    - positional encoding: ``num_feats`` = neck ``out_channels`` / 2;
    - encoder, decoder: ``embed_dims`` = neck ``out_channels``,
      ``num_levels`` = neck ``num_levels``;
    - query generator: ``num_queries``, ``embed_dims``, and the head's
      ``num_classes`` (from the head config);
    - head: ``embed_dims``, ``num_layers`` = decoder ``num_layers``,
      ``share_branches`` = not decoder ``refines_references``,
      ``reference_dims`` = query generator ``reference_dims``, and the
      detector's ``train_cfg`` / ``test_cfg``.

    A component config that sets one of these itself must agree, else the
    model is refused when it is built (e.g. a refining decoder with a head
    that shares one branch pair across layers).

    Args:
        backbone (dict): Backbone config; returns a tuple of (B, C_l, H_l, W_l)
            and declares ``out_channels``.
        neck (dict): Multi-scale projection config; returns L maps
            (B, C, H_l, W_l) and declares ``out_channels`` (C) and ``num_levels`` (L).
        positional_encoding (dict): Maps a (B, H, W) padding mask to a
            (B, C, H, W) float32 encoding.
        encoder (dict): Encoder config; ``forward(feats, masks, pos_embeds)``.
        query_generator (dict): Makes the decoder's queries and references.
        decoder (dict): Decoder config; receives the head's ``reg_branches``.
        bbox_head (dict): Head config (predictions, loss, post-process).
        num_queries (int): Number of object queries Q (MMDetection's key).
        train_cfg (dict, optional): ``assigner`` config, given to the head.
        test_cfg (dict, optional): ``max_per_img``, given to the head.
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
                 num_queries: int = 300,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        if isinstance(data_preprocessor, dict):
            # built here so mmdeform's registry resolves it without a default scope
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.neck = build_with_sizes('neck', neck, in_channels=list(self.backbone.out_channels))
        embed_dims, num_levels = self.neck.out_channels, self.neck.num_levels
        self.positional_encoding = build_with_sizes(
            'positional_encoding', positional_encoding, num_feats=embed_dims // 2)
        self.encoder = build_with_sizes('encoder', encoder, embed_dims=embed_dims,
                                        num_levels=num_levels)
        generator_sizes = dict(num_queries=num_queries, embed_dims=embed_dims)
        if isinstance(bbox_head, dict) and bbox_head.get('num_classes') is not None:
            generator_sizes['num_classes'] = bbox_head['num_classes']
        self.query_generator = build_with_sizes('query_generator', query_generator,
                                                **generator_sizes)
        self.decoder = build_with_sizes('decoder', decoder, embed_dims=embed_dims,
                                        num_levels=num_levels)
        self.bbox_head = build_with_sizes(
            'bbox_head', bbox_head, embed_dims=embed_dims, num_layers=self.decoder.num_layers,
            share_branches=not self.decoder.refines_references,
            reference_dims=self.query_generator.reference_dims,
            train_cfg=train_cfg, test_cfg=test_cfg)
        self._check_pairings()

    def _check_pairings(self) -> None:
        """Refuse pairings the sizes alone do not catch, when the model is built."""
        head_classes = self.bbox_head.num_classes
        generator_classes = getattr(self.query_generator, 'num_classes', None)
        if generator_classes is not None and generator_classes != head_classes:
            raise ValueError(f'DeformableDETR: query_generator.num_classes={generator_classes} '
                             f'but bbox_head.num_classes={head_classes}; write it once, in '
                             'bbox_head')
        if getattr(self.query_generator, 'share_head_branches', False) and \
                not self.bbox_head.share_branches:
            raise ValueError('DeformableDETR: query_generator.share_head_branches=True needs a '
                             'head that shares one branch pair across layers, but the decoder '
                             f'{type(self.decoder).__name__} gives each layer its own')

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
        # query (B, Q, C), refs (B, Q, 2|4); two-stage proposals may use the head's branches
        query_output = self.query_generator(encoder_output, self.bbox_head.shared_branches())
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
