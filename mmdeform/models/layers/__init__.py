"""Inner building blocks of the models (built directly, not registered), and
the registered deformable-attention variants used by the layers."""
from .dense_layers import (
    DenseDecoderLayer,
    DenseEncoderLayer,
    check_dense_layer_cfg,
)
from .mlp import MLP
from .per_level_deform_attn import PerLevelDeformAttn
from .same_level_deform_attn import SameLevelDeformAttn
from .sync_batch_norm import SyncBatchNorm, convert_sync_batchnorm
from .transformer_layers import (
    FFN,
    DeformableDecoderLayer,
    DeformableEncoderLayer,
    build_deformable_attention,
    init_deformable_transformer,
    init_dense_transformer,
)
from .utils import boxes_from_reference, inverse_sigmoid, stage_layer_cfg

__all__ = ['FFN', 'MLP', 'DeformableEncoderLayer', 'DeformableDecoderLayer',
           'init_deformable_transformer', 'build_deformable_attention', 'inverse_sigmoid',
           'boxes_from_reference', 'SameLevelDeformAttn', 'PerLevelDeformAttn',
           'DenseEncoderLayer', 'DenseDecoderLayer', 'check_dense_layer_cfg',
           'init_dense_transformer', 'stage_layer_cfg', 'SyncBatchNorm', 'convert_sync_batchnorm']
