"""The paper's Feature Pyramid Network (Sec. 3)."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.necks.base import Neck, pyramid_specs


class FPN(Neck):
    """Top-down pathway with lateral connections, plus P6 for the RPN.

    For each bottom-up map Ci (i = 2..5): a 1x1 lateral conv to ``channels``; from the top,
    the coarser merged map is upsampled (nearest) and added; a 3x3 conv on each merged map
    gives Pi. P6 is P5 subsampled with stride 2 (max-pool, kernel 1). No non-linearities.

    Args:
        in_specs: ``c2..c5`` specs of the bottom-up pathway.
        channels: d, the width of every level (256 in the paper).

    Input ``{"c2": [B, C2, H2, W2], ...}``; output ``{"p2": [B, d, H2, W2], ...,
    "p5": [B, d, H5, W5], "p6": [B, d, ceil(H5/2), ceil(W5/2)]}``.
    """

    def __init__(self, in_specs: OrderedDict[str, LevelSpec], channels: int = 256) -> None:
        super().__init__()
        names = list(in_specs)
        self.in_names = names
        self.laterals = nn.ModuleList(nn.Conv2d(in_specs[n].channels, channels, 1) for n in names)
        self.outputs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in names)
        for conv in [*self.laterals, *self.outputs]:
            # torchvision's FPN initialisation, so from-scratch runs match its behaviour.
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.constant_(conv.bias, 0)
        self.output_specs = pyramid_specs(in_specs, names, channels)
        self.rpn_levels = list(self.output_specs)
        self.roi_levels = self.rpn_levels[:-1]  # P6 is for the RPN only
        self.check_contract()

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        xs = [features[n] for n in self.in_names]
        merged = self.laterals[-1](xs[-1])
        outs = [self.outputs[-1](merged)]
        for i in range(len(xs) - 2, -1, -1):
            lateral = self.laterals[i](xs[i])
            # Nearest upsampling straight to the lateral's size: x2 when the sizes are exact
            # (inputs padded to a multiple of 32), and still correct for odd sizes, where
            # the coarser map is ceil(n/2) and x2 would overshoot by a pixel. Same op as
            # torchvision's FPN, which keeps us weight-compatible with it.
            top_down = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down
            outs.insert(0, self.outputs[i](merged))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.output_specs, outs))
