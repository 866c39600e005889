"""mmdeform.models.backbones."""
from .frozen_batch_norm import FrozenBatchNorm2d
from .norm import build_norm_layer
from .pretrained import load_pretrained
from .resnet import ResNet
from .sync_batch_norm import SyncBatchNorm, convert_sync_batchnorm

__all__ = ['FrozenBatchNorm2d', 'ResNet', 'SyncBatchNorm', 'build_norm_layer',
           'convert_sync_batchnorm', 'load_pretrained']
