"""mmdeform.models.backbones."""
from .frozen_batch_norm import FrozenBatchNorm2d
from .norm import build_norm_layer
from .pretrained import load_pretrained
from .resnet import ResNet

__all__ = ['FrozenBatchNorm2d', 'ResNet', 'build_norm_layer', 'load_pretrained']
