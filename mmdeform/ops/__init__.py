"""Compiled ops of mmdeform and their pure-PyTorch twins."""
from .ms_deform_attn import (
                             extension_available,
                             get_backend,
                             ms_deform_attn,
                             ms_deform_attn_reference,
)
from .ms_deform_attn_module import MSDeformAttn

__all__ = ['ms_deform_attn', 'ms_deform_attn_reference', 'MSDeformAttn',
           'get_backend', 'extension_available']
