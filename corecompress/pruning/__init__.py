"""Method-agnostic pruning machinery: prunable groups, plans, soft masks and physical removal."""
from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress.pruning.plan import PruningPlan, make_plan

__all__ = ["PrunableGroup", "Slice", "PruningPlan", "make_plan"]
