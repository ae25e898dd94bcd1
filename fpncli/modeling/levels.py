"""Pyramid levels: what each level declares, and the paper's RoI-to-level equation.

`assign_level` is the single implementation of FPN's Eqn. (1); the RoI pooler, `fpn
inspect-levels` and the tests all call it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Eqn. (1) of the paper: a 224x224 RoI (the ImageNet pre-training size) maps to level k0 = 4.
CANONICAL_SIZE = 224
CANONICAL_LEVEL = 4
# Added before the floor so that sizes that are exact powers of two (224, 112, 448) land
# on their level despite float rounding in log2; torchvision's LevelMapper does the same,
# which keeps our RoI assignment identical to theirs.
_EPS = 1e-6


@dataclass(frozen=True)
class LevelSpec:
    """One feature map of a backbone or neck.

    Attributes:
        name: ``p<k>`` for pyramid levels (stride ``2**k``), ``c<k>`` for bottom-up stages.
        channels: number of channels of the map.
        stride: input pixels per feature-map cell.
    """

    name: str
    channels: int
    stride: int

    @property
    def level(self) -> int:
        """k in ``stride == 2**k``."""
        return round(math.log2(self.stride))


def check_strides(specs: list[LevelSpec]) -> None:
    """Raise if strides are not powers of two that double from one level to the next."""
    for spec in specs:
        if spec.stride <= 0 or 2**spec.level != spec.stride:
            raise ValueError(f"level {spec.name}: stride {spec.stride} is not a power of two")
    for finer, coarser in itertools.pairwise(specs):
        if coarser.stride != 2 * finer.stride:
            raise ValueError(
                f"levels {finer.name} (stride {finer.stride}) and {coarser.name} "
                f"(stride {coarser.stride}) are not log2-contiguous"
            )


def assign_level(
    boxes: Tensor,
    min_level: int = 2,
    max_level: int = 5,
    canonical_size: int = CANONICAL_SIZE,
    canonical_level: int = CANONICAL_LEVEL,
) -> Tensor:
    """Pyramid level of each box by FPN Eqn. (1): ``k = floor(k0 + log2(sqrt(w*h) / 224))``.

    Args:
        boxes: ``Tensor[N, 4]``, ``(x1, y1, x2, y2)`` in input-image pixels.
        min_level, max_level: the result is clamped to ``[min_level, max_level]``
            (P2..P5 for the paper's box head).
        canonical_size, canonical_level: the paper's 224 and k0 = 4.

    Returns:
        ``LongTensor[N]`` of levels k (2 means P2). Zero-area and inverted boxes go to
        ``min_level`` (their size is taken as 0) instead of producing NaN.
    """
    boxes = torch.as_tensor(boxes)
    if boxes.numel() == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.reshape(-1, 4)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    sizes = torch.sqrt(widths * heights)
    # log2(0) = -inf; floor(-inf) clamps to min_level, which is where zero-area boxes belong.
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_size) + _EPS)
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)
