"""BiFPN (Tan et al., EfficientDet, CVPR 2020): repeated top-down + bottom-up blocks with
fast normalised weighted fusion."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.necks.base import StackedNeck, pyramid_specs


class WeightedFusion(nn.Module):
    """Fast normalised fusion: ``sum_i w_i * x_i / (sum_i w_i + eps)`` with ``w = relu(raw)``.

    ReLU keeps the learnable weights non-negative, and dividing by their sum keeps the
    output on the inputs' scale (EfficientDet's cheaper alternative to a softmax).

    Args:
        num_inputs: how many same-shaped maps are fused.
        eps: keeps the division finite when every weight is zero (EfficientDet's 1e-4).
    """

    def __init__(self, num_inputs: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.eps = eps

    def normalized_weights(self) -> Tensor:
        """``Tensor[num_inputs]``: the non-negative weights divided by their sum (+ eps)."""
        w = F.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        w = self.normalized_weights()
        out = w[0] * inputs[0]
        for i in range(1, len(inputs)):
            out = out + w[i] * inputs[i]
        return out


class SeparableConv(nn.Module):
    """Swish, then a depthwise 3x3 and a pointwise 1x1 conv (EfficientDet's node conv).

    EfficientDet follows it with BatchNorm; left out here because fpncli trains with 2 to 4
    images per batch, where batch statistics are noise (the reason the paper freezes BN).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        nn.init.kaiming_uniform_(self.depthwise.weight, a=1)
        nn.init.kaiming_uniform_(self.pointwise.weight, a=1)
        nn.init.zeros_(self.pointwise.bias)  # type: ignore[arg-type]  # bias=True above

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(F.silu(x)))


def _resize_to(x: Tensor, ref: Tensor) -> Tensor:
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class BiFPNLayer(nn.Module):
    """One BiFPN block over ``num_levels`` maps of equal width, finest first.

    Top-down: ``td_top = x_top``; ``td_i = conv(fuse(x_i, up(td_{i+1})))``.
    Bottom-up: ``out_0 = td_0``; ``out_i = conv(fuse(x_i, td_i, down(out_{i-1})))`` for the
    middle levels and ``conv(fuse(x_top, down(out_{top-1})))`` at the top. Nodes with a
    single input (``td_top``, the second finest-level node) are dropped, as in the paper.
    Up: nearest to the finer map's size; down: 3x3 max-pool with stride 2.
    """

    def __init__(self, num_levels: int, channels: int) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.td_fuse = nn.ModuleList(WeightedFusion(2) for _ in range(num_levels - 1))
        self.td_conv = nn.ModuleList(SeparableConv(channels) for _ in range(num_levels - 1))
        self.out_fuse = nn.ModuleList(
            WeightedFusion(3 if i < num_levels - 1 else 2) for i in range(1, num_levels)
        )
        self.out_conv = nn.ModuleList(SeparableConv(channels) for _ in range(num_levels - 1))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """``xs``: per level ``Tensor[B, d, H_l, W_l]`` -> the same shapes."""
        n = self.num_levels
        td: list[Tensor] = list(xs)  # every entry but the coarsest is replaced, top-down
        for i in range(n - 2, -1, -1):
            td[i] = self.td_conv[i](self.td_fuse[i]([xs[i], _resize_to(td[i + 1], xs[i])]))
        outs = [td[0]]
        for i in range(1, n):
            down = _resize_to(F.max_pool2d(outs[-1], kernel_size=3, stride=2, padding=1), xs[i])
            inputs = [xs[i], td[i], down] if i < n - 1 else [xs[i], down]
            outs.append(self.out_conv[i - 1](self.out_fuse[i - 1](inputs)))
        return outs


class BiFPN(StackedNeck):
    """1x1 laterals on C2..C5, a P6 input made by max-pooling P5's lateral, then ``repeats``
    :class:`BiFPNLayer` blocks over all five levels.

    Unlike FPN, P6 takes part in the fusion (EfficientDet fuses all of P3..P7); it is still
    used by the RPN only, so the RoI head sees ``p2``..``p5`` as in FPN.

    Args:
        in_specs: ``c2..c5`` specs of the bottom-up pathway.
        channels: width of every level.
        repeats: how many BiFPN blocks are stacked (>= 1).

    Output ``{"p2": [B, d, H2, W2], ..., "p6": [B, d, ceil(H5/2), ceil(W5/2)]}``.
    """

    def __init__(self, in_specs: OrderedDict[str, LevelSpec], channels: int = 256, repeats: int = 2) -> None:
        super().__init__()
        if repeats < 1:
            raise ValueError(f"BiFPN needs at least one repeat, got {repeats}")
        self.in_names = list(in_specs)
        self.laterals = nn.ModuleList(nn.Conv2d(in_specs[n].channels, channels, 1) for n in self.in_names)
        for conv in self.laterals:
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.output_specs = pyramid_specs(in_specs, self.in_names, channels)
        self.layers = nn.ModuleList(BiFPNLayer(len(self.output_specs), channels) for _ in range(repeats))
        self.rpn_levels = list(self.output_specs)
        self.roi_levels = self.rpn_levels[:-1]
        self.check_contract()

    def blocks(self) -> nn.ModuleList:
        return self.layers
