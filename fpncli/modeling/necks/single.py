"""The paper's single-scale baselines: RPN and RoI head on one bottom-up map (C4 or C5)."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.necks.base import Neck


class SingleScale(Neck):
    """One bottom-up map, projected to ``channels``: the ``c4`` / ``c5`` rows of the paper's
    Table 1 (RPN) and Table 3 (Faster R-CNN).

    The RPN slides over this one map with every anchor size on it (the detector puts all of
    ``ModelConfig.anchor_sizes`` on a single RPN level) and every RoI is pooled from it.

    Departure from the paper: its C4 baseline pools RoIs from C4 and runs ResNet's conv5
    stage as the box head. Here a 1x1 conv projects the map to ``channels`` (no
    non-linearity, like FPN's laterals) so the shared RPN head and the 2-FC box head have the
    same widths as for the pyramid necks, and the comparison isolates the pyramid itself.
    The level keeps the bottom-up name (``c4``), since no top-down information reaches it.

    Args:
        in_specs: ``c2..c5`` specs of the bottom-up pathway.
        channels: output width.
        level: which bottom-up map, ``"c4"`` (stride 16) or ``"c5"`` (stride 32).

    Input ``{"c2": ..., level: [B, C, H, W], ...}``; output ``{level: [B, d, H, W]}``.
    """

    def __init__(self, in_specs: OrderedDict[str, LevelSpec], channels: int = 256, level: str = "c4") -> None:
        super().__init__()
        if level not in in_specs:
            raise ValueError(f"no bottom-up level {level!r}; have {', '.join(in_specs)}")
        self.level = level
        # The bottom-up levels this neck reads (the backbone may stop after the last one).
        self.in_names = [level]
        self.project = nn.Conv2d(in_specs[level].channels, channels, 1)
        nn.init.kaiming_uniform_(self.project.weight, a=1)
        nn.init.zeros_(self.project.bias)  # type: ignore[arg-type]  # Conv2d has a bias by default
        self.output_specs = OrderedDict([(level, LevelSpec(level, channels, in_specs[level].stride))])
        self.rpn_levels = [level]
        self.roi_levels = [level]
        self.check_contract()

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        return OrderedDict([(self.level, self.project(features[self.level]))])
