"""RoIAlign over several pyramid levels: each RoI from the level Eqn. (1) gives it
(:class:`LevelRoIPooler`, FPN), or each RoI from every level (:class:`AllLevelRoIPooler`,
PANet's adaptive feature pooling; AugFPN's soft RoI selection pools the same way)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align

from fpncli.modeling.levels import LevelSpec, assign_level


class LevelRoIPooler(MultiScaleRoIAlign):
    """Pools each RoI from one level, chosen by :func:`assign_level`.

    Scales are ``1 / stride`` from the declared levels (torchvision's parent class instead
    guesses them from shapes at run time); subclassing it only satisfies ``FasterRCNN``'s
    type check, its forward is not used.

    Args:
        levels: the levels RoIs may be pooled from, finest first, log2-contiguous.
        output_size: side of the pooled grid (7 in the paper).
        sampling_ratio, aligned: passed to :func:`torchvision.ops.roi_align`.
    """

    def __init__(
        self, levels: list[LevelSpec], output_size: int = 7, sampling_ratio: int = 2, aligned: bool = False
    ) -> None:
        super().__init__([spec.name for spec in levels], output_size, sampling_ratio)
        self.levels = list(levels)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.min_level = self.levels[0].level
        self.max_level = self.levels[-1].level

    def forward(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]] | None = None,
    ) -> Tensor:
        """Pool RoIs.

        Args:
            features: ``name -> Tensor[B, C, H_l, W_l]`` (must contain every pooled level).
            boxes: per image ``Tensor[N_i, 4]``, xyxy in input pixels.
            image_shapes: unused; kept for torchvision's ``RoIHeads`` call signature.

        Returns:
            ``Tensor[sum N_i, C, S, S]`` in the order of ``boxes``.
        """
        rois = _to_roi_format(boxes)
        maps = [features[spec.name] for spec in self.levels]
        if len(self.levels) == 1:
            return self._align(maps[0], rois, self.levels[0])
        target = assign_level(rois[:, 1:], self.min_level, self.max_level) - self.min_level
        # Every RoI on some level, so the gather below returns one row per RoI even for one
        # whose level came out undefined (a non-finite box: NaN cast to an integer).
        target = target.clamp(0, len(self.levels) - 1)
        pooled: list[Tensor] = []
        picked: list[Tensor] = []
        for index, (spec, fmap) in enumerate(zip(self.levels, maps)):
            on_level = torch.where(target == index)[0]
            pooled.append(self._align(fmap, rois[on_level], spec).to(maps[0].dtype))
            picked.append(on_level)
        # The levels' results in level order, put back in the RoIs' order by one row gather.
        # Only tensor ops, so a trace bakes in no level's RoI count (issue #26); a scatter of
        # each level into zeros (as before) copied the whole [N, C, S, S] result per level and,
        # exported, scattered element by element: 6 % of ONNX Runtime's time per image.
        return torch.cat(pooled)[torch.argsort(torch.cat(picked))]

    def _align(self, fmap: Tensor, rois: Tensor, spec: LevelSpec) -> Tensor:
        return roi_align(
            fmap,
            rois,
            self.output_size,
            spatial_scale=1.0 / spec.stride,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )


class AllLevelRoIPooler(LevelRoIPooler):
    """Pools every RoI from every level (no level assignment).

    The building block of PANet's adaptive feature pooling (and of AugFPN's soft RoI
    selection): the box head that follows decides how the levels are combined.

    Returns ``Tensor[N, L, C, S, S]`` (RoIs in the order of ``boxes``, levels finest first).
    """

    def forward(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]] | None = None,
    ) -> Tensor:
        """Pool RoIs from all levels.

        Args:
            features: ``name -> Tensor[B, C, H_l, W_l]`` (must contain every pooled level).
            boxes: per image ``Tensor[N_i, 4]``, xyxy in input pixels.
            image_shapes: unused; kept for torchvision's ``RoIHeads`` call signature.

        Returns:
            ``Tensor[sum N_i, L, C, S, S]``.
        """
        return pool_all_levels(features, boxes, self.levels, self._align)


def pool_all_levels(
    features: dict[str, Tensor],
    boxes: list[Tensor],
    levels: list[LevelSpec],
    align: Callable[[Tensor, Tensor, LevelSpec], Tensor],
) -> Tensor:
    """``align(map, rois, spec)`` of all RoIs on each of ``levels``, stacked on dim 1:
    ``Tensor[sum N_i, L, C, S, S]`` (an empty first dim when there are no boxes)."""
    rois = _to_roi_format(boxes)
    return torch.stack([align(features[spec.name], rois, spec) for spec in levels], dim=1)


def _to_roi_format(boxes: list[Tensor]) -> Tensor:
    """``[Tensor[N_i, 4]]`` -> ``Tensor[sum N_i, 5]`` rows ``(image_index, x1, y1, x2, y2)``."""
    all_boxes = torch.cat(boxes, dim=0)
    # full_like, not full((len(b), 1)): a traced (exported) graph keeps the count dynamic.
    index = torch.cat(
        [torch.full_like(b[:, :1], i, dtype=all_boxes.dtype) for i, b in enumerate(boxes)], dim=0
    )
    return torch.cat([index, all_boxes], dim=1)
