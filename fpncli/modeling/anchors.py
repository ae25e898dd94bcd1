"""Anchors placed on each level's grid: the declared strides, or torchvision's grid."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from fpncli.modeling.levels import LevelSpec


class LevelAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator with a choice of where anchors sit on each level.

    ``grid="stride"``: anchors every ``stride`` input pixels, the level's declared (true)
    stride, whatever the image size. ``grid="torchvision"``: torchvision's own
    ``AnchorGenerator.forward``, spacing ``padded_batch_size // feature_size`` per axis;
    it equals the stride unless a map has an odd size: P6 of a batch padded to 800x1088 is
    13x17, so its anchors are 61 and 64 px apart instead of 64 and 64. Weights trained by
    torchvision learnt that grid.

    Args:
        levels: the RPN's levels, in the order the feature maps are passed.
        sizes: per level, the anchor sizes (sqrt of area, input pixels) on that level.
        aspect_ratios: height / width ratios, the same on every level.
        grid: ``stride`` or ``torchvision``.
    """

    def __init__(
        self,
        levels: list[LevelSpec],
        sizes: list[tuple[int, ...]],
        aspect_ratios: tuple[float, ...],
        grid: str = "stride",
    ) -> None:
        if len(levels) != len(sizes):
            raise ValueError(f"{len(levels)} levels but {len(sizes)} anchor size groups")
        if grid not in ("stride", "torchvision"):
            raise ValueError(f"unknown anchor grid {grid!r}")
        super().__init__(tuple(tuple(s) for s in sizes), (tuple(aspect_ratios),) * len(levels))
        self.strides = [spec.stride for spec in levels]
        self.grid = grid

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Returns, per image, ``Tensor[sum_l H_l * W_l * A_l, 4]`` xyxy anchors."""
        if self.grid == "torchvision":
            return super().forward(image_list, feature_maps)
        grid_sizes = [fmap.shape[-2:] for fmap in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]
