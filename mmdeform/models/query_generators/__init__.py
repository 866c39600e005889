"""Query generators: learned queries or two-stage proposals."""
from .learned_queries import LearnedQueries
from .two_stage_proposals import TwoStageProposals, make_proposals, proposal_pos_embed

__all__ = ['LearnedQueries', 'TwoStageProposals', 'make_proposals', 'proposal_pos_embed']
