"""Anchors placed with the neck's declared strides."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from fpncli.modeling.levels import LevelSpec


class LevelAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator, but the anchor spacing on each level is the level's
    declared stride instead of ``image_size // feature_size`` (identical for padded
    batches, and never silently wrong when they are not).

    Args:
        levels: the RPN's levels, in the order the feature maps are passed.
        sizes: per level, the anchor sizes (sqrt of area, input pixels) on that level.
        aspect_ratios: height / width ratios, the same on every level.
    """

    def __init__(
        self, levels: list[LevelSpec], sizes: list[tuple[int, ...]], aspect_ratios: tuple[float, ...]
    ) -> None:
        if len(levels) != len(sizes):
            raise ValueError(f"{len(levels)} levels but {len(sizes)} anchor size groups")
        super().__init__(tuple(tuple(s) for s in sizes), (tuple(aspect_ratios),) * len(levels))
        self.strides = [spec.stride for spec in levels]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Returns, per image, ``Tensor[sum_l H_l * W_l * A_l, 4]`` xyxy anchors."""
        grid_sizes = [fmap.shape[-2:] for fmap in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]
