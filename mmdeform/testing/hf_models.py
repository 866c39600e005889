"""Small random transformers Deformable DETRs and a padded batch, for the HF tests.

Nothing is downloaded: transformers' own ResNet-18 backbone, random weights.
transformers is imported inside the functions (the tests skip without it).
"""
import inspect
from typing import List, Tuple

import torch

from mmdeform.structures import DetDataSample

# name -> (with_box_refine, two_stage, num_feature_levels)
HF_VARIANTS = {'base': (False, False, 4), 'refine': (True, False, 4),
               'refine_twostage': (True, True, 4), 'single_scale': (False, False, 1)}
IMAGE_SIZES = [(96, 128), (80, 100)]  # (h, w) of the two images; the batch is (96, 128)


def tiny_hf_config(variant: str, num_labels: int = 7, **overrides):
    """``DeformableDetrConfig`` of a small model (d_model 64, 2 + 3 layers, 20 queries)."""
    import transformers
    refine, two_stage, levels = HF_VARIANTS[variant]
    backbone = transformers.ResNetConfig(
        layer_type='basic', depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
        embedding_size=64, out_features=['stage2', 'stage3', 'stage4'] if levels > 1
        else ['stage4'])
    kwargs = dict(
        use_timm_backbone=False, backbone=None, backbone_config=backbone,
        use_pretrained_backbone=False, d_model=64, encoder_layers=2, decoder_layers=3,
        encoder_ffn_dim=96, decoder_ffn_dim=96, encoder_attention_heads=4,
        decoder_attention_heads=4, num_queries=20, two_stage_num_proposals=20,
        num_feature_levels=levels, with_box_refine=refine, two_stage=two_stage,
        num_labels=num_labels, id2label={i: f'thing{i}' for i in range(num_labels)})
    return transformers.DeformableDetrConfig(**dict(kwargs, **overrides))


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and BN statistic drawn at random (transformers zero-inits
    some heads, which would hide mistakes in the box path). Tied tensors get
    one draw (the last name's)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            draw = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith('running_var'):
                draw = draw.abs() + 0.5
            tensor.copy_(draw * (0.5 if name.endswith(('running_var', 'running_mean')) else 0.1))


def save_kwargs(model: torch.nn.Module, refine: bool) -> dict:
    """``save_pretrained`` options: transformers 4.x refuses safetensors for the refine
    variants' shared tensors; 5.x has no ``safe_serialization`` (always safetensors)."""
    if 'safe_serialization' in inspect.signature(model.save_pretrained).parameters:
        return dict(safe_serialization=not refine)
    return {}


def padded_batch(dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, List[DetDataSample]]:
    """Two random images of :data:`IMAGE_SIZES`, zero-padded to one batch.

    Returns:
        tuple: images (2, 3, 96, 128) of ``dtype``, transformers' ``pixel_mask``
        (2, 96, 128) long (1 = image), and our data samples (``img_shape``).
    """
    generator = torch.Generator().manual_seed(1)
    height, width = max(h for h, _ in IMAGE_SIZES), max(w for _, w in IMAGE_SIZES)
    images = torch.zeros(len(IMAGE_SIZES), 3, height, width, dtype=torch.float64)
    pixel_mask = torch.zeros(len(IMAGE_SIZES), height, width, dtype=torch.long)
    samples = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=generator, dtype=torch.float64)
        pixel_mask[i, :h, :w] = 1
        samples.append(DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                                   batch_input_shape=(height, width))))
    return images.to(dtype), pixel_mask, samples
