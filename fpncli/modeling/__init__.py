"""The FPN Faster R-CNN: bottom-up backbone, necks, level assignment, detector, weights."""

from fpncli.modeling.levels import LevelSpec, assign_level

__all__ = ["LevelSpec", "assign_level"]
