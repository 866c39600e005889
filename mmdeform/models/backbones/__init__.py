"""mmdeform.models.backbones."""
from .frozen_batch_norm import FrozenBatchNorm2d
from .pretrained import load_pretrained
from .resnet import ResNet

__all__ = ['FrozenBatchNorm2d', 'ResNet', 'load_pretrained']
