"""NAS-FPN (Ghiasi et al., CVPR 2019): the searched merging-cell graph, stacked.

Definitions follow the paper and its reference implementation (TF Model Garden's
``nasfpn.py``), not MMDetection's port where the two disagree (see ../shared/docs/NECKS.md
1.1.1): the global-pooling cell gates the *finer* input with ``sigmoid(global max)`` of the
*coarser* one and adds the coarser one; each merge is followed by ReLU -> 3x3 conv -> norm.

Level mapping: the cell was searched on P3-P7 for RetinaNet. fpncli's RPN and RoI head use
P2-P6 (FPN's anchors, Eqn. (1)'s levels), so the same graph runs one level lower: the
searched graph's "P3" is our ``p2`` and so on. The README says why.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.necks.base import StackedNeck, pyramid_specs

# The searched stage as TF Model Garden writes it (NASFPN_BLOCK_SPECS), with node indices
# 0..4 = the five input levels (finest first) and each block appending one node:
# (output level index 0..4, "sum" | "gp", (input node, input node), is an output).
# The gp cell's inputs are ordered here (coarser, finer); levels are shifted to P2..P6.
BLOCKS: tuple[tuple[int, str, tuple[int, int], bool], ...] = (
    (1, "gp", (3, 1), False),  # node 5: gp(P6 -> P4 size, P4)  (paper levels)
    (1, "sum", (1, 5), False),  # node 6: P4 + node5
    (0, "sum", (0, 6), True),  # node 7: output P3
    (1, "sum", (6, 7), True),  # node 8: output P4
    (2, "gp", (8, 7), True),  # node 9: output P5 (+ the unused input P5)
    (4, "gp", (9, 6), True),  # node 10: output P7 (+ the unused input P7)
    (3, "gp", (10, 9), True),  # node 11: output P6
)


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its stored running statistics and never updates
    them (MMDetection's ``norm_eval``); the affine scale and shift still train.

    For fine-tuning a neck trained with ``bn`` at a larger batch: its statistics are kept
    instead of being re-estimated from 2-4 images. From scratch (mean 0, variance 1) it is
    a learnable per-channel affine. State-dict keys equal BatchNorm2d's.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def neck_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation after each NAS-FPN conv: ``gn`` (32 groups, fewer for narrow maps),
    ``bn``, ``frozen_bn`` (:class:`FrozenStatsBatchNorm2d`) or ``none`` (identity)."""
    if kind == "gn":
        groups = max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "frozen_bn":
        return FrozenStatsBatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown NAS-FPN norm {kind!r}")


def _conv(in_channels: int, out_channels: int, kernel: int, norm: str) -> nn.Conv2d:
    # A bias is redundant in front of a normalisation; kept when there is none.
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=norm == "none")
    nn.init.kaiming_uniform_(conv.weight, a=1)  # caffe2_xavier_init, as MMDetection's NAS-FPN
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def resize_to_level(x: Tensor, steps: int, size: tuple[int, int] | torch.Size) -> Tensor:
    """Move a map ``steps`` levels (positive: coarser) to a map of ``size`` (h, w).

    Coarser: ``steps`` times 3x3 max-pooling with stride 2 and padding 1 (TF's SAME max
    pooling); each step gives ``ceil(n / 2)``, exactly the ResNet's size chain, so any input
    size works without padding or divisibility asserts. Finer: nearest upsampling straight to
    ``size``. A final nearest resize covers inputs that do not follow the ceil chain.
    """
    for _ in range(max(steps, 0)):
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    # Traced (fpn export), the test would be frozen at the traced size: always resize then
    # (nearest to the same size is an exact copy).
    if torch.jit.is_tracing() or tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="nearest")
    return x


class MergingCell(nn.Module):
    """One node of the searched graph: resize both inputs to the output level, merge
    (``sum``: ``a + b``; ``gp``: ``coarse + sigmoid(global_max(coarse)) * fine``), add the
    same-level inputs no other node reads (the graph's residuals), then ReLU -> 3x3 conv -> norm.
    """

    def __init__(self, kind: str, channels: int, norm: str) -> None:
        super().__init__()
        if kind not in ("sum", "gp"):
            raise ValueError(f"unknown merging cell {kind!r}")
        self.kind = kind
        self.conv = _conv(channels, channels, 3, norm)
        self.norm = neck_norm(norm, channels)

    def forward(self, a: Tensor, b: Tensor, extra: list[Tensor]) -> Tensor:
        """``a``, ``b``, ``extra``: ``Tensor[B, d, h, w]`` already at the output level; for
        ``gp``, ``a`` is the coarser input. Returns ``Tensor[B, d, h, w]``."""
        if self.kind == "sum":
            out = a + b
        else:
            gate = torch.sigmoid(torch.amax(a, dim=(-2, -1), keepdim=True))  # [B, d, 1, 1]
            out = a + gate * b
        for x in extra:
            out = out + x
        return self.norm(self.conv(F.relu(out)))


class NASFPNStage(nn.Module):
    """One stack of the searched graph: five maps in, five maps out (finest first, sizes kept).

    Args:
        channels: width of every map.
        norm: see :func:`neck_norm`.
    """

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.cells = nn.ModuleList(MergingCell(kind, channels, norm) for _, kind, _, _ in BLOCKS)
        # TF's is_output rule: an output block also adds every same-level node that nothing
        # reads (this is how the P5 and P7 inputs reach the outputs).
        self.extras: list[list[int]] = []
        read = {i for _, _, inputs, _ in BLOCKS for i in inputs}
        levels = list(range(5))
        for index, (level, _, _, is_output) in enumerate(BLOCKS):
            node = 5 + index
            self.extras.append([n for n in range(node) if is_output and levels[n] == level and n not in read])
            levels.append(level)
        self.node_levels = levels
        self.output_nodes = {level: 5 + i for i, (level, _, _, out) in enumerate(BLOCKS) if out}

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """``xs``: five ``Tensor[B, d, H_l, W_l]``, finest first -> the same shapes."""
        sizes = [x.shape[-2:] for x in xs]  # not int(): a traced graph keeps them dynamic
        nodes = list(xs)
        for cell, (level, _, (i, j), _), extra in zip(self.cells, BLOCKS, self.extras):

            def at_level(n: int, level: int = level) -> Tensor:
                return resize_to_level(nodes[n], level - self.node_levels[n], sizes[level])

            nodes.append(cell(at_level(i), at_level(j), [at_level(n) for n in extra]))
        return [nodes[self.output_nodes[level]] for level in range(5)]


class NASFPN(StackedNeck):
    """Laterals on C2..C5, a sixth input level, then ``stacks`` :class:`NASFPNStage` blocks.

    Inputs of the first stage: ``1x1 conv + norm`` on C2..C5 and a P6 made by max-pooling
    P5's lateral (3x3, stride 2: ``ceil(H5/2)`` as FPN's P6). The graph runs on P2..P6 (the
    searched P3..P7 shifted down one level); the RPN uses all five, the RoI head P2..P5, as
    for FPN, so anchors and Eqn. (1) are unchanged.

    Args:
        in_specs: ``c2..c5`` specs of the bottom-up pathway.
        channels: width of every level.
        stacks: how many stages (the paper's 7).
        norm: ``gn`` | ``bn`` | ``frozen_bn`` | ``none`` after every conv (see :func:`neck_norm`).

    Output ``{"p2": [B, d, H2, W2], ..., "p6": [B, d, ceil(H5/2), ceil(W5/2)]}``.
    """

    def __init__(
        self, in_specs: OrderedDict[str, LevelSpec], channels: int = 256, stacks: int = 7, norm: str = "gn"
    ) -> None:
        super().__init__()
        if stacks < 1:
            raise ValueError(f"NAS-FPN needs at least one stack, got {stacks}")
        self.in_names = list(in_specs)
        if len(self.in_names) != 4:
            raise ValueError(f"NAS-FPN reads four bottom-up levels (c2..c5), got {self.in_names}")
        self.norm = norm
        self.laterals = nn.ModuleList(
            nn.Sequential(_conv(in_specs[n].channels, channels, 1, norm), neck_norm(norm, channels))
            for n in self.in_names
        )
        self.stages = nn.ModuleList(NASFPNStage(channels, norm) for _ in range(stacks))
        self.output_specs = pyramid_specs(in_specs, self.in_names, channels)
        self.rpn_levels = list(self.output_specs)
        self.roi_levels = self.rpn_levels[:-1]
        self.check_contract()

    def blocks(self) -> nn.ModuleList:
        return self.stages
