"""``DeformableDecoder``: decoder whose reference points stay fixed."""
from typing import Optional

import torch
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS

from ..layers import DeformableDecoderLayer, init_deformable_transformer, stage_layer_cfg
from ..stage_outputs import DecoderOutput, EncoderOutput


def scale_by_valid_ratios(reference_points: torch.Tensor,
                          valid_ratios: torch.Tensor) -> torch.Tensor:
    """Map references normalized to the valid image into each level.

    Args:
        reference_points (Tensor): (B, Q, 2) points (x, y) or (B, Q, 4)
            cxcywh boxes, normalized to the un-padded image.
        valid_ratios (Tensor): (B, L, 2) float32 ratios (x, y); cast to the
            dtype of ``reference_points`` (exact for float32 -> float64).

    Returns:
        Tensor: (B, Q, L, 2|4) references in each level's normalized frame.
    """
    ratios = valid_ratios.to(reference_points.dtype)
    if reference_points.shape[-1] == 4:
        ratios = torch.cat([ratios, ratios], -1)
    # (B, Q, 1, D) * (B, 1, L, D) -> (B, Q, L, D)
    return reference_points[:, :, None] * ratios[:, None]


def check_decoder_inputs(name: str, embed_dims: int, query: torch.Tensor,
                         query_pos: torch.Tensor, reference_points: torch.Tensor,
                         memory: torch.Tensor) -> None:
    """Shapes every decoder receives, or a ValueError naming the argument.

    Args:
        name (str): The decoder's class name, named in errors.
        embed_dims (int): Channels C of the decoder.
        query, query_pos (Tensor): (B, Q, C).
        reference_points (Tensor): (B, Q, 2|4).
        memory (Tensor): (B, S, C) encoder output.
    """
    if query.dim() != 3 or query.shape[-1] != embed_dims:
        raise ValueError(f'{name}: query must be (B, Q, {embed_dims}), '
                         f'got {tuple(query.shape)}')
    if query_pos.shape != query.shape:
        raise ValueError(f'{name}: query_pos must have the shape of query '
                         f'{tuple(query.shape)}, got {tuple(query_pos.shape)}')
    if reference_points.shape[:2] != query.shape[:2] or \
            reference_points.dim() != 3 or reference_points.shape[-1] not in (2, 4):
        raise ValueError(f'{name}: reference_points must be (B, Q, 2|4) = '
                         f'({query.shape[0]}, {query.shape[1]}, 2|4), '
                         f'got {tuple(reference_points.shape)}')
    if memory.dim() != 3 or memory.shape[0] != query.shape[0] or \
            memory.shape[-1] != embed_dims:
        raise ValueError(f'{name}: encoder_output.memory must be ({query.shape[0]}, S, '
                         f'{embed_dims}), got {tuple(memory.shape)}')


@MODELS.register_module()
class DeformableDecoder(BaseModule):
    """Post-norm deformable decoder; every layer uses the initial reference.

    Subclasses change how the reference evolves between layers by overriding
    ``update_reference`` (see ``RefineDeformableDecoder``).

    Args:
        num_layers (int): Number of decoder layers.
        embed_dims (int): Channels C (given to each layer); the detector
            passes the neck's ``out_channels``.
        num_levels (int): Feature levels L of the memory (given to each
            layer); the detector passes the neck's ``num_levels``.
        layer_cfg (dict, optional): Keyword arguments of
            ``DeformableDecoderLayer`` except ``embed_dims`` and
            ``num_levels``: ``num_heads`` (8), ``num_points`` (4),
            ``feedforward_dims`` (1024), ``dropout`` (0.1), ``cross_attn_cfg``
            (``dict(type='MSDeformAttn')``).
        init_cfg (dict, optional): mmengine init config, applied by
            ``init_weights`` after the official initialization.

    Attributes:
        refines_references (bool): False: the head may share one class/box
            branch pair across layers. ``RefineDeformableDecoder`` sets it
            True (it needs one box branch per layer); the detector passes it
            to the head as ``share_branches = not refines_references``.
    """

    refines_references = False

    def __init__(self, num_layers: int = 6, embed_dims: int = 256, num_levels: int = 4,
                 layer_cfg: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        layer_cfg = stage_layer_cfg(name, layer_cfg, embed_dims=embed_dims,
                                    num_levels=num_levels)
        if num_layers < 1:
            raise ValueError(f'{name}: num_layers must be >= 1, got {num_layers}')
        self.num_layers = num_layers
        self.num_levels = num_levels
        self.embed_dims = embed_dims
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(**layer_cfg) for _ in range(num_layers))
        init_deformable_transformer(self)

    def init_weights(self) -> None:
        """Official initialization (Xavier, then MSDeformAttn's), then ``init_cfg``."""
        init_deformable_transformer(self)
        super().init_weights()

    def update_reference(self, layer_index: int, output: torch.Tensor,
                         reference_points: torch.Tensor,
                         reg_branches: Optional[nn.ModuleList]) -> torch.Tensor:
        """Reference for the next layer: here the same one (no refinement).

        Args:
            layer_index (int): Index of the layer that produced ``output``.
            output (Tensor): (B, Q, C) that layer's output.
            reference_points (Tensor): (B, Q, 2|4) reference it received.
            reg_branches (nn.ModuleList, optional): unused here.

        Returns:
            Tensor: (B, Q, 2|4) ``reference_points`` unchanged.
        """
        return reference_points

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor,
                reference_points: torch.Tensor, encoder_output: EncoderOutput,
                reg_branches: Optional[nn.ModuleList] = None) -> DecoderOutput:
        """Run the layers over the encoder memory.

        Args:
            query (Tensor): (B, Q, C) content queries.
            query_pos (Tensor): (B, Q, C) positional queries.
            reference_points (Tensor): (B, Q, 2) points (x, y) or (B, Q, 4)
                cxcywh boxes, normalized to the un-padded image (sigmoid space).
            encoder_output (EncoderOutput): memory (B, S, C), padding mask,
                spatial shapes, level start index and valid ratios.
            reg_branches (nn.ModuleList, optional): per-layer box branches.
                Unused by this decoder (the references stay fixed); accepted
                so that every decoder has the same interface.

        Returns:
            DecoderOutput: hidden_states (num_layers, B, Q, C) and references,
            num_layers tensors (B, Q, 2|4): the (un-scaled) reference each
            layer received.
        """
        memory = encoder_output.memory
        check_decoder_inputs(type(self).__name__, self.embed_dims, query, query_pos,
                             reference_points, memory)
        hidden_states, references = [], []
        output = query
        for index, layer in enumerate(self.layers):
            references.append(reference_points)
            output = layer(output, query_pos,
                           scale_by_valid_ratios(reference_points, encoder_output.valid_ratios),
                           memory, encoder_output.spatial_shapes,
                           encoder_output.level_start_index, encoder_output.padding_mask)
            hidden_states.append(output)
            if index < self.num_layers - 1:
                reference_points = self.update_reference(index, output, reference_points,
                                                         reg_branches)
        return DecoderOutput(hidden_states=torch.stack(hidden_states), references=references)
