"""``FrozenBatchNorm2d``: batch norm with fixed statistics and affine terms."""
import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch normalization whose statistics and affine terms never change.

    All four tensors are buffers (not parameters), so no optimizer sees them
    and ``train()``/``eval()`` make no difference. The output is computed as
    the official Deformable DETR does, in this order::

        s = weight * rsqrt(running_var + eps)
        y = x * s + (bias - running_mean * s)

    A ``BatchNorm2d`` state_dict loads as is: ``weight``, ``bias``,
    ``running_mean`` and ``running_var`` are taken over, and its
    ``num_batches_tracked`` step counter (torchvision checkpoints, backbones
    trained with ``norm_cfg=dict(type='BN')``) is the one key dropped
    (:attr:`ignored_state_keys`). Build it with the trained layer's ``eps``
    to get the outputs of that layer in eval mode.

    Args:
        num_features (int): Channels C.
        eps (float): Added to the variance before the reciprocal square root.
    """

    #: State keys of BatchNorm2d that are accepted and dropped on loading
    #: (read by :func:`mmdeform.fileio.load_state_dict_checked`).
    ignored_state_keys = ('num_batches_tracked',)

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f'FrozenBatchNorm2d: num_features must be positive, '
                             f'got {num_features}')
        self.num_features = num_features
        self.eps = eps
        self.register_buffer('weight', torch.empty(num_features))
        self.register_buffer('bias', torch.empty(num_features))
        self.register_buffer('running_mean', torch.empty(num_features))
        self.register_buffer('running_var', torch.empty(num_features))
        self.reset_stats()

    def reset_stats(self) -> None:
        """Set the identity transform: weight 1, bias 0, mean 0, variance 1."""
        self.weight.fill_(1)
        self.bias.zero_()
        self.running_mean.zero_()
        self.running_var.fill_(1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # torch's BatchNorm2d stores a step counter we have no use for
        for key in self.ignored_state_keys:
            state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x``.

        Args:
            x (Tensor): (B, C, H, W) features.

        Returns:
            Tensor: (B, C, H, W), same dtype as ``x`` and the buffers.
        """
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale  # (C,)
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f'{self.num_features}, eps={self.eps}'
