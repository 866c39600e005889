"""``TwoStageProposals``: queries from the top-scoring encoder-token proposals."""
import math
from typing import Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS

from ..layers import MLP
from ..stage_outputs import EncoderOutput, QueryOutput


def make_proposals(padding_mask: torch.Tensor, spatial_shapes_list: Sequence[Tuple[int, int]]
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One fixed proposal box per encoder token, in logit space (float32).

    The token at cell (i, j) of level l proposes the box centred at
    ``((j + 0.5) / W_valid, (i + 0.5) / H_valid)`` with ``w = h = 0.05 * 2**l``,
    where ``W_valid`` / ``H_valid`` are the integer counts of unpadded
    columns / rows of that level (from its first row / column). A proposal
    is valid when all four numbers lie strictly inside (0.01, 0.99). Valid
    ones are mapped to ``log(p / (1 - p))`` (no clamping); padded tokens and
    invalid proposals get ``+inf``. Boxes and ratios are float32, as in the
    official model (a float32 island); the logit is the correctly rounded
    float32 value.

    Args:
        padding_mask (Tensor): (B, S) bool, True at padded tokens.
        spatial_shapes_list (Sequence[tuple[int, int]]): L pairs (H_l, W_l)
            as Python ints (``EncoderOutput.spatial_shapes_list``).

    Returns:
        tuple[Tensor, Tensor]: proposals (B, S, 4) float32 cxcywh logits
        (+inf where unusable) and unusable (B, S) bool (padded or invalid).
    """
    batch_size = padding_mask.shape[0]
    device = padding_mask.device
    proposals = []
    start = 0
    for level, (height, width) in enumerate(spatial_shapes_list):
        # (B, H*W) -> (B, H, W)
        level_mask = padding_mask[:, start:start + height * width].view(batch_size, height, width)
        valid_h = (~level_mask[:, :, 0]).sum(1)
        valid_w = (~level_mask[:, 0, :]).sum(1)
        grid_y, grid_x = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=device),
            torch.arange(width, dtype=torch.float32, device=device), indexing='ij')
        grid = torch.stack([grid_x, grid_y], -1)  # (H, W, 2) as (x, y)
        valid_size = torch.stack([valid_w, valid_h], -1).to(torch.float32)  # (B, 2)
        # (1, H, W, 2) / (B, 1, 1, 2) -> (B, H, W, 2)
        centres = (grid[None] + 0.5) / valid_size[:, None, None, :]
        sizes = torch.full_like(centres, 0.05 * (2.0 ** level))
        proposals.append(torch.cat([centres, sizes], -1).view(batch_size, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1)
    unusable = padding_mask | ~valid
    # The float32 logit, correctly rounded: the log runs in float64 on the
    # float32 ratio and is rounded back. torch's float32 CPU log can be 1 ulp
    # off, which moved the boxes by ~3e-8 against the official fixtures.
    proposals = torch.log((proposals / (1 - proposals)).to(torch.float64)).to(torch.float32)
    proposals = proposals.masked_fill(unusable[..., None], float('inf'))
    return proposals, unusable


def proposal_pos_embed(coords: torch.Tensor, num_feats: int = 128,
                       temperature: float = 10000.0) -> torch.Tensor:
    """Sine encoding of proposal boxes, coordinate-major (cx, cy, w, h).

    Each coordinate c gives ``num_feats`` channels ``sin(a / dim_t[k])`` (even
    k) and ``cos(a / dim_t[k])`` (odd k), with ``a = sigmoid(c) * 2 * pi`` and
    ``dim_t[k] = temperature ** (2 * (k // 2) / num_feats)``; ``dim_t`` is
    computed in float32 (official float32 island) and cast to the dtype of
    ``coords``.

    Args:
        coords (Tensor): (B, Q, 4) unactivated (logit-space) cxcywh boxes.
        num_feats (int): Channels per coordinate (even).
        temperature (float): Frequency base.

    Returns:
        Tensor: (B, Q, 4 * num_feats).
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    angles = coords.sigmoid() * (2 * math.pi)
    # (B, Q, 4, 1) / (num_feats,) -> (B, Q, 4, num_feats)
    angles = angles[:, :, :, None] / dim_t.to(coords.dtype)
    # (B, Q, 4, num_feats/2, 2) -> (B, Q, 4 * num_feats): sin/cos interleaved
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(2)


@MODELS.register_module()
class TwoStageProposals(BaseModule):
    """Two-stage query generation: score every encoder token, keep the top k.

    Every token proposes a fixed box (``make_proposals``). The encoder
    memory, zeroed at padded tokens and invalid proposals, goes through
    ``enc_output`` and ``enc_output_norm``; ``cls_branch`` scores it and
    ``reg_branch`` refines the proposal in logit space. The
    ``num_queries`` tokens with the highest class-0 logit (``torch.topk``
    order, padded and invalid tokens not excluded, as in the official model)
    give the reference boxes (their detached refined boxes) and, through a
    sine encoding, ``pos_trans`` and ``pos_trans_norm``, the queries
    (``[:C]`` query_pos, ``[C:]`` query).

    Official names: ``transformer.enc_output(_norm)``,
    ``transformer.pos_trans(_norm)``, ``class_embed.6`` (``cls_branch``)
    and ``bbox_embed.6`` (``reg_branch``).

    Branches: by default the proposals have their own class and box branch
    (the official two-stage model, which always refines boxes, clones them
    for the encoder). With ``share_head_branches=True`` they use the head's
    one shared pair instead, passed by the detector at every call: the
    official design's intent (and MMDetection's behaviour) for two-stage
    without box refinement, where every prediction layer shares one pair.

    Args:
        num_queries (int): Proposals kept per image (k of the top-k).
        embed_dims (int): Channels C (even).
        num_classes (int): Outputs of ``cls_branch``; the detector passes the
            head's ``num_classes``.
        share_head_branches (bool): Use the head's shared branches (given to
            :meth:`forward`) instead of owning ``cls_branch`` / ``reg_branch``.
            The detector refuses it with a head that has a branch pair per
            layer (box refinement).
        init_cfg (dict, optional): mmengine init config, applied by
            ``init_weights`` after the official initialization.
    """

    reference_dims = 4

    def __init__(self, num_queries: int = 300, embed_dims: int = 256, num_classes: int = 80,
                 share_head_branches: bool = False, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if embed_dims % 2 != 0:
            raise ValueError(f'TwoStageProposals: embed_dims must be even, got {embed_dims}')
        self.num_queries = num_queries
        self.embed_dims = embed_dims
        self.num_classes = num_classes
        self.share_head_branches = share_head_branches
        self.enc_output = nn.Linear(embed_dims, embed_dims)
        self.enc_output_norm = nn.LayerNorm(embed_dims)
        if not share_head_branches:
            self.cls_branch = nn.Linear(embed_dims, num_classes)
            self.reg_branch = MLP(embed_dims, embed_dims, 4, 3)
        self.pos_trans = nn.Linear(2 * embed_dims, 2 * embed_dims)
        self.pos_trans_norm = nn.LayerNorm(2 * embed_dims)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Official init: Xavier projections, prior-probability class bias
        (0.01), zero last box layer; the rest keeps PyTorch defaults."""
        nn.init.xavier_uniform_(self.enc_output.weight)
        nn.init.xavier_uniform_(self.pos_trans.weight)
        if not self.share_head_branches:
            nn.init.constant_(self.cls_branch.bias, -math.log((1 - 0.01) / 0.01))
            nn.init.zeros_(self.reg_branch.layers[-1].weight)
            nn.init.zeros_(self.reg_branch.layers[-1].bias)

    def init_weights(self) -> None:
        """Official initialization, then ``init_cfg`` (if any) on top."""
        self._reset_parameters()
        super().init_weights()

    def branches(self, head_branches: Optional[Tuple[nn.Module, nn.Module]]
                 ) -> Tuple[nn.Module, nn.Module]:
        """The (class, box) branches that score the proposals."""
        if not self.share_head_branches:
            return self.cls_branch, self.reg_branch
        if head_branches is None:
            raise ValueError('TwoStageProposals: share_head_branches=True needs the head\'s '
                             'shared (cls, reg) branches as head_branches')
        return head_branches

    def forward(self, encoder_output: EncoderOutput,
                head_branches: Optional[Tuple[nn.Module, nn.Module]] = None) -> QueryOutput:
        """Score all tokens and build queries from the best proposals.

        Args:
            encoder_output (EncoderOutput): memory (B, S, C), padding mask
                and ``spatial_shapes_list`` are used; S must be >= num_queries.
            head_branches (tuple, optional): the head's shared (class, box)
                branches; used, and required, when ``share_head_branches``.

        Returns:
            QueryOutput: query and query_pos (B, Q, C); reference_points
            (B, Q, 4) detached cxcywh boxes in (0, 1] (exactly 1.0 for
            selected unusable tokens); enc_logits (B, S, num_classes) and
            enc_boxes_cxcywh (B, S, 4) for every token (1.0 where unusable).
        """
        memory = encoder_output.memory
        batch_size, num_tokens, channels = memory.shape
        if channels != self.embed_dims:
            raise ValueError(f'TwoStageProposals: memory must be (B, S, {self.embed_dims}), '
                             f'got {tuple(memory.shape)}')
        if num_tokens < self.num_queries:
            raise ValueError(f'TwoStageProposals: the memory has {num_tokens} tokens, fewer '
                             f'than num_queries={self.num_queries}; use larger inputs or '
                             'fewer queries')
        proposals, unusable = make_proposals(encoder_output.padding_mask,
                                             encoder_output.spatial_shapes_list)
        output_memory = memory.masked_fill(unusable[..., None], 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        cls_branch, reg_branch = self.branches(head_branches)
        enc_logits = cls_branch(output_memory)  # (B, S, num_classes)
        # float32 proposals (+inf kept) cast exactly to the memory dtype
        enc_coords = reg_branch(output_memory) + proposals.to(memory.dtype)
        topk_index = torch.topk(enc_logits[..., 0], self.num_queries, dim=1)[1]  # (B, Q)
        topk_coords = torch.gather(
            enc_coords, 1, topk_index.unsqueeze(-1).repeat(1, 1, 4)).detach()  # (B, Q, 4)
        pos = proposal_pos_embed(topk_coords, num_feats=self.embed_dims // 2)
        # (B, Q, 2C) -> query_pos (B, Q, C), query (B, Q, C)
        query_pos, query = torch.split(self.pos_trans_norm(self.pos_trans(pos)),
                                       self.embed_dims, dim=2)
        return QueryOutput(query=query, query_pos=query_pos,
                           reference_points=topk_coords.sigmoid(),
                           enc_logits=enc_logits, enc_boxes_cxcywh=enc_coords.sigmoid())
