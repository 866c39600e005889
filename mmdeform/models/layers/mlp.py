"""``MLP``: a stack of Linear layers with ReLU in between."""
import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Linear layers with a ReLU after every layer but the last.

    With ``num_layers=3`` this is the box branch of Deformable DETR
    (``in -> hidden -> hidden -> out``); the parameter names
    ``layers.{i}.weight`` / ``layers.{i}.bias`` are those of the official
    ``bbox_embed``.

    Args:
        in_dims (int): Input channels.
        hidden_dims (int): Channels of the hidden layers.
        out_dims (int): Output channels.
        num_layers (int): Number of Linear layers (at least 1).
    """

    def __init__(self, in_dims: int, hidden_dims: int, out_dims: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f'MLP: num_layers must be at least 1, got {num_layers}')
        dims = [in_dims] + [hidden_dims] * (num_layers - 1) + [out_dims]
        self.layers = nn.ModuleList(
            nn.Linear(dims[i], dims[i + 1]) for i in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layers.

        Args:
            x (Tensor): (..., in_dims).

        Returns:
            Tensor: (..., out_dims).
        """
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = F.relu(x)
        return x
