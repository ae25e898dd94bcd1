"""Pyramid levels: what each level declares, and the paper's RoI-to-level equation.

`assign_level` is the single implementation of FPN's Eqn. (1); the RoI pooler, `fpn
inspect-levels` and the tests all call it.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
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
    # Not while tracing (fpn export): the test would freeze the example's "no boxes" answer
    # into the graph; the arithmetic below gives the same empty result.
    if boxes.numel() == 0 and not torch.jit.is_tracing():
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


# ---------------------------------------------------------------- input and level geometry


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size torchvision's ``GeneralizedRCNNTransform`` resizes an image to (eval mode).

    Shorter side to ``min_size`` unless the longer would exceed ``max_size``; the result is
    ``floor(side * scale)``, what ``F.interpolate(scale_factor=..., recompute_scale_factor=True)``
    produces (checked against the transform in the tests).
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)


def padded_size(height: int, width: int, divisible: int) -> tuple[int, int]:
    """Batch size after the transform pads to a multiple of ``divisible`` (32)."""
    return (int(math.ceil(height / divisible) * divisible), int(math.ceil(width / divisible) * divisible))


def level_boundaries(min_level: int, max_level: int) -> list[tuple[str, float]]:
    """Box sizes ``sqrt(w*h)`` (input pixels) where Eqn. (1) moves a box up one level:
    ``[("p3", 112.0), ...]`` means boxes of 112 px and more (up to the next) go to P3.

    These are the sizes where ``k0 + log2(size / 224)`` crosses an integer; the tests check
    that :func:`assign_level` changes level exactly there.
    """
    return [
        (f"p{k}", CANONICAL_SIZE * 2.0 ** (k - CANONICAL_LEVEL)) for k in range(min_level + 1, max_level + 1)
    ]


def level_range(levels: OrderedDict[str, LevelSpec], names: list[str]) -> tuple[int, int]:
    """Lowest and highest level index ``k`` among ``names`` (for Eqn. (1)'s clamp)."""
    ks = [levels[n].level for n in names]
    return min(ks), max(ks)


def level_name(levels: OrderedDict[str, LevelSpec], names: list[str], k: int) -> str:
    """The name among ``names`` of level ``k`` (``p{k}`` if none)."""
    for name in names:
        if levels[name].level == k:
            return name
    return f"p{k}"
