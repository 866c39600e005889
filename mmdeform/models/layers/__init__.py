"""Inner building blocks of the models (built directly, not registered)."""
from .mlp import MLP
from .transformer_layers import (
    FFN,
    DeformableDecoderLayer,
    DeformableEncoderLayer,
    init_deformable_transformer,
)
from .utils import boxes_from_reference, inverse_sigmoid

__all__ = ['FFN', 'MLP', 'DeformableEncoderLayer', 'DeformableDecoderLayer',
           'init_deformable_transformer', 'inverse_sigmoid', 'boxes_from_reference']
