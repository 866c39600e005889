"""Assigners and match costs (registered in ``TASK_UTILS``)."""
from .assign_result import AssignResult
from .hungarian_assigner import HungarianAssigner
from .match_costs import BBoxL1Cost, FocalLossCost, IoUCost, check_match_inputs

__all__ = ['AssignResult', 'BBoxL1Cost', 'FocalLossCost', 'IoUCost', 'HungarianAssigner',
           'check_match_inputs']
