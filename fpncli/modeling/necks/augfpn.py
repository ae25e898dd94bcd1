"""AugFPN's neck (Guo et al., CVPR 2020): FPN with Residual Feature Augmentation, and the raw
laterals that Consistent Supervision trains on.

Follows the official ``HighFPN`` (Gus-Guo/AugFPN, ``mmdet/models/necks/high_fpn.py``): the
paper's FPN (1x1 laterals, nearest top-down sum, 3x3 outputs, P6 by stride-2 max-pool), plus
a residual branch on C5 added to the top lateral before the top-down pass. The two other
parts of AugFPN are not neck changes: soft RoI selection is an RoI pooler
(:mod:`fpncli.modeling.soft_roi`), consistent supervision an auxiliary box head
(:mod:`fpncli.modeling.consistent_supervision`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.necks.fpn import FPN

# The official config's pool_ratios: C5 average-pooled to 10 %, 20 % and 30 % of its size.
POOL_RATIOS = (0.1, 0.2, 0.3)


class PyramidFeatures(OrderedDict):
    """The pyramid ``{level: Tensor[B, d, h, w]}`` with a side channel: ``raw_laterals``,
    ``{p<k>: Tensor[B, d, h, w]}`` (the 1x1 lateral projections M2..M5 before the RFA add and
    the top-down sum) or None.

    A dict subclass, not extra keys: torchvision's RPN runs on every value of the backbone's
    dict, and the RoI heads receive this same object, so they can read the laterals.
    """

    raw_laterals: OrderedDict[str, Tensor] | None = None


class ResidualFeatureAugmentation(nn.Module):
    """Ratio-invariant adaptive pooling of C5 with adaptive spatial fusion.

    For each ratio r: ``adaptive_avg_pool2d`` to ``(max(1, int(h r)), max(1, int(w r)))``, a
    1x1 conv to ``channels``, bilinear upsampling (``align_corners=True``) back to C5's
    ``h x w``. The maps are concatenated; ``conv1x1 -> ReLU -> conv3x3`` gives one logit per
    map and pixel; the output is the sigmoid-weighted sum of the maps (no softmax, as in
    the official code).

    Args:
        in_channels: C5's channels.
        channels: d, the pyramid's width.
        ratios: the pooling ratios.

    ``forward``: ``Tensor[B, C5, h, w]`` -> ``Tensor[B, d, h, w]`` (any ``h, w >= 1``).
    """

    def __init__(self, in_channels: int, channels: int, ratios: tuple[float, ...] = POOL_RATIOS) -> None:
        super().__init__()
        self.ratios = tuple(float(r) for r in ratios)
        self.reduce = nn.ModuleList(nn.Conv2d(in_channels, channels, 1) for _ in self.ratios)
        n = len(self.ratios)
        self.fusion = nn.Sequential(
            nn.Conv2d(n * channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, n, 3, padding=1)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # The official HighFPN's init_weights: Xavier-uniform on every conv.
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)  # type: ignore[arg-type]  # Conv2d has a bias by default

    def pooled_maps(self, c5: Tensor) -> list[Tensor]:
        """The contextual maps, one per ratio, each ``Tensor[B, d, h, w]``."""
        size = c5.shape[-2:]  # not int(): a traced (exported) graph keeps it dynamic
        maps = []
        for ratio, reduce in zip(self.ratios, self.reduce):
            pooled = adaptive_avg_pool_by_ratio(c5, ratio)
            maps.append(F.interpolate(reduce(pooled), size=size, mode="bilinear", align_corners=True))
        return maps

    def fusion_weights(self, maps: list[Tensor]) -> Tensor:
        """``Tensor[B, n, h, w]``: the sigmoid weight of each map at each pixel."""
        return torch.sigmoid(self.fusion(torch.cat(maps, dim=1)))

    def forward(self, c5: Tensor) -> Tensor:
        maps = self.pooled_maps(c5)
        weights = self.fusion_weights(maps)
        return sum((weights[:, i : i + 1] * m for i, m in enumerate(maps)), torch.zeros_like(maps[0]))


def adaptive_avg_pool_by_ratio(x: Tensor, ratio: float) -> Tensor:
    """``F.adaptive_avg_pool2d(x, (max(1, int(h * ratio)), max(1, int(w * ratio))))``.

    ``x``: ``Tensor[B, C, h, w]``. Computed from an integral image with the output size and
    the bins (PyTorch's: ``floor(i h / n)`` to ``ceil((i + 1) h / n)``) taken from ``x``'s
    shape as tensors, so a traced (exported) graph pools any input size the way eager
    PyTorch does; ONNX's pooling ops need the output size fixed at export.
    """
    shape = torch._shape_as_tensor(x)
    integral = F.pad(x.cumsum(-1).cumsum(-2), (1, 0, 1, 0))  # [B, C, h + 1, w + 1], zero first row/col

    def bins(n: Tensor) -> tuple[Tensor, Tensor]:
        out = torch.clamp(torch.floor(n.double() * ratio), min=1).long()
        # A 0-dim tensor end: traced as a dynamic Range (the stubs only list Python numbers).
        i = torch.arange(out, device=x.device)  # type: ignore[call-overload]
        return (i * n) // out, ((i + 1) * n + out - 1) // out

    (h0, h1), (w0, w1) = bins(shape[-2]), bins(shape[-1])

    def corner(rows: Tensor, cols: Tensor) -> Tensor:
        return integral.index_select(-2, rows).index_select(-1, cols)

    total = corner(h1, w1) - corner(h0, w1) - corner(h1, w0) + corner(h0, w0)
    area = (h1 - h0).to(x.dtype)[:, None] * (w1 - w0).to(x.dtype)[None, :]
    return total / area


class AugFPN(FPN):
    """FPN + Residual Feature Augmentation; P2..P6 with FPN's names, strides and shapes.

    Module names extend :class:`FPN`'s (``laterals``, ``outputs``; ``rfa`` when on), so an
    FPN checkpoint's neck loads into it and only the RFA branch starts fresh.

    Args:
        in_specs: ``c2..c5`` specs of the bottom-up pathway.
        channels: d, the width of every level.
        rfa: add the residual feature augmentation of C5 to the top lateral (off: exactly FPN).
        raw_laterals: in training mode, hand the raw laterals M2..M5 to the RoI heads
            (:class:`PyramidFeatures`) for consistent supervision.

    Input ``{"c2": [B, C2, H2, W2], ...}``; output :class:`PyramidFeatures` ``{"p2": [B, d, H2,
    W2], ..., "p6": [B, d, ceil(H5/2), ceil(W5/2)]}``, the same shapes as :class:`FPN`.
    """

    def __init__(
        self,
        in_specs: OrderedDict[str, LevelSpec],
        channels: int = 256,
        rfa: bool = True,
        raw_laterals: bool = True,
    ) -> None:
        super().__init__(in_specs, channels)
        top = in_specs[self.in_names[-1]]
        self.rfa = ResidualFeatureAugmentation(top.channels, channels) if rfa else None
        self.keep_raw_laterals = raw_laterals

    def forward(self, features: OrderedDict[str, Tensor]) -> PyramidFeatures:
        xs = [features[n] for n in self.in_names]
        laterals = [conv(x) for conv, x in zip(self.laterals, xs)]
        raw = laterals  # not modified below: every sum makes a new tensor
        merged = laterals[-1] if self.rfa is None else laterals[-1] + self.rfa(xs[-1])
        outs = [self.outputs[-1](merged)]
        for i in range(len(xs) - 2, -1, -1):
            # Nearest upsampling to the lateral's exact size, as in FPN (odd sizes work).
            merged = laterals[i] + F.interpolate(merged, size=laterals[i].shape[-2:], mode="nearest")
            outs.insert(0, self.outputs[i](merged))
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        pyramid = PyramidFeatures(zip(self.output_specs, outs))
        if self.training and self.keep_raw_laterals:
            pyramid.raw_laterals = OrderedDict(zip(self.roi_levels, raw))
        return pyramid
