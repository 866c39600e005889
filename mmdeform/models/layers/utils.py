"""Small functions shared by model components."""
import torch


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Logit of ``x`` clamped to [0, 1], both sides clamped at ``eps``.

    ``log(clamp(x, eps) / clamp(1 - x, eps))``: 1.0 maps to ``log(1/eps)``.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
