"""``LearnedQueries``: learned object queries with predicted reference points."""
from typing import Optional, Tuple

import torch
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS

from ..stage_outputs import EncoderOutput, QueryOutput


@MODELS.register_module()
class LearnedQueries(BaseModule):
    """The same learned queries for every image (one-stage Deformable DETR).

    ``query_embed`` holds ``num_queries`` rows of ``2 * embed_dims``: columns
    ``[:C]`` are the positional queries, ``[C:]`` the content queries (the
    official layout). The reference point of a query is
    ``sigmoid(reference_points(query_pos))``.

    Every query generator takes the sizes the detector gives it: its
    ``num_queries``, the neck's ``out_channels`` as ``embed_dims`` and the
    head's ``num_classes``; it declares ``reference_dims`` (2 here: points).

    Args:
        num_queries (int): Number of object queries Q.
        embed_dims (int): Channels C.
        num_classes (int, optional): Unused (learned queries score no class).
        init_cfg (dict, optional): mmengine init config, applied by
            ``init_weights`` after the official initialization.
    """

    reference_dims = 2

    def __init__(self, num_queries: int = 300, embed_dims: int = 256,
                 num_classes: Optional[int] = None, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.num_queries = num_queries
        self.embed_dims = embed_dims
        self.query_embed = nn.Embedding(num_queries, 2 * embed_dims)
        self.reference_points = nn.Linear(embed_dims, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Official init: N(0, 1) embedding; Xavier (gain 1) weight and zero bias."""
        nn.init.normal_(self.query_embed.weight)
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)

    def init_weights(self) -> None:
        """Official initialization, then ``init_cfg`` (if any) on top."""
        self._reset_parameters()
        super().init_weights()

    def forward(self, encoder_output: EncoderOutput,
                head_branches: Optional[Tuple[nn.Module, nn.Module]] = None) -> QueryOutput:
        """Expand the learned queries to the batch.

        Args:
            encoder_output (EncoderOutput): only the batch size of its
                memory (B, S, C) is used.
            head_branches (tuple, optional): unused (see ``TwoStageProposals``).

        Returns:
            QueryOutput: query and query_pos (B, Q, C), reference_points
            (B, Q, 2) normalized (x, y) points (differentiable).
        """
        batch_size = encoder_output.memory.shape[0]
        query_pos, query = torch.split(self.query_embed.weight, self.embed_dims, dim=1)
        # (Q, C) -> (B, Q, C), views without copies
        query_pos = query_pos.unsqueeze(0).expand(batch_size, -1, -1)
        query = query.unsqueeze(0).expand(batch_size, -1, -1)
        reference_points = self.reference_points(query_pos).sigmoid()
        return QueryOutput(query=query, query_pos=query_pos,
                           reference_points=reference_points)
