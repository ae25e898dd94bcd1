"""PANet's path aggregation neck (Liu et al., CVPR 2018): FPN plus an extra bottom-up path."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.necks.base import Neck
from fpncli.modeling.necks.fpn import FPN


class PANet(Neck):
    """The paper's FPN followed by PANet's bottom-up path augmentation.

    From the FPN outputs P2..P5: ``N2 = P2``; ``N_{i+1} = conv3x3(conv3x3_stride2(N_i) + P_{i+1})``.
    ``N6`` (RPN only) is ``N5`` subsampled with stride 2, exactly as FPN's P6. The levels keep
    FPN's names and strides (``p2``..``p6``) so anchors, the RoI level equation and every
    tool that reads levels work unchanged.

    PANet also pools each RoI from all levels (adaptive feature pooling); that is a box-head
    change, not a neck, and is not done here: RoIs are pooled by Eqn. (1) as in FPN. Like
    MMDetection's PAFPN, the extra convs have no non-linearity, matching FPN's design (the
    PANet paper follows each conv with a ReLU).

    Args:
        in_specs: ``c2..c5`` specs of the bottom-up pathway.
        channels: width of every level.

    Input ``{"c2": [B, C2, H2, W2], ...}``; output ``{"p2": [B, d, H2, W2], ..., "p6": [B, d,
    ceil(H5/2), ceil(W5/2)]}``, the same shapes as :class:`FPN`.
    """

    def __init__(self, in_specs: OrderedDict[str, LevelSpec], channels: int = 256) -> None:
        super().__init__()
        self.fpn = FPN(in_specs, channels)
        self.in_names = list(self.fpn.in_names)
        n = len(self.in_names)
        # One downsampling conv and one output conv per level above the finest one.
        self.downsample = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(n - 1)
        )
        self.fuse = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(n - 1))
        for conv in [*self.downsample, *self.fuse]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.constant_(conv.bias, 0)
        self.output_specs = OrderedDict(self.fpn.output_specs)
        self.rpn_levels = list(self.fpn.rpn_levels)
        self.roi_levels = list(self.fpn.roi_levels)
        self.check_contract()

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        p = list(self.fpn(features).values())[:-1]  # P2..P5; FPN's P6 is replaced by N6
        outs = [p[0]]
        for i, (down, fuse) in enumerate(zip(self.downsample, self.fuse)):
            coarser = p[i + 1]
            reduced = down(outs[-1])
            if reduced.shape[-2:] != coarser.shape[-2:]:
                # Sizes agree for ResNet inputs (both are ceil(n/2)); stay correct otherwise.
                reduced = F.interpolate(reduced, size=coarser.shape[-2:], mode="nearest")
            outs.append(fuse(reduced + coarser))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.output_specs, outs))
