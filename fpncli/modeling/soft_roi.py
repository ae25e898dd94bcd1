"""AugFPN's Soft RoI Selection (Guo et al., CVPR 2020, Sec. 3.3), on the all-level pooler.

The official ``SoftRoIExtractor`` (Gus-Guo/AugFPN, ``roi_extractors/soft_roi_selection.py``)
pools every RoI from all four levels, concatenates them (``L * C`` channels), predicts one
spatial map per level with ``conv1x1 (L*C -> C) -> ReLU -> conv3x3 (C -> L)``, and sums the
levels weighted by the sigmoid of their maps (no softmax across levels). It replaces FPN's
Eqn. (1) in training and at test time; the 2-FC box head after it is unchanged. The
official module allocates with ``torch.cuda.FloatTensor``; this one runs on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.pooler import AllLevelRoIPooler


class SoftRoISelection(AllLevelRoIPooler):
    """Every RoI pooled from every level (:class:`AllLevelRoIPooler`), fused by learned
    per-level spatial attention.

    Args:
        levels: the RoI levels, finest first (P2..P5).
        channels: C, the pyramid's width.
        output_size, sampling_ratio, aligned: RoIAlign's, as for the other poolers.

    ``forward(features, boxes)`` returns ``Tensor[sum N_i, C, S, S]``, like
    :class:`~fpncli.modeling.pooler.LevelRoIPooler`, so the box head does not change.
    """

    def __init__(
        self,
        levels: list[LevelSpec],
        channels: int,
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
    ) -> None:
        super().__init__(levels, output_size, sampling_ratio, aligned)
        n = len(self.levels)
        self.pooled_channels = n * channels  # L*C, the attention's input
        self.attention = nn.Sequential(
            nn.Conv2d(n * channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, n, 3, padding=1)
        )
        for module in self.attention:
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)  # type: ignore[arg-type]  # Conv2d has a bias by default

    def level_weights(self, pooled: Tensor) -> Tensor:
        """``Tensor[N, L, C, S, S]`` pooled RoIs -> ``Tensor[N, L, S, S]``: each level's
        sigmoid weight at each cell of the pooled grid (independent per level, in 0..1)."""
        # Not flatten(1, 2): ONNX exports that as Reshape(N, -1, S, S), which fails on an
        # image without RoIs (-1 is ambiguous for an empty tensor); L*C is fixed.
        flat = pooled.reshape(-1, self.pooled_channels, *pooled.shape[3:])
        return torch.sigmoid(self.attention(flat))

    def select(self, pooled: Tensor) -> Tensor:
        """``Tensor[N, L, C, S, S]`` -> ``Tensor[N, C, S, S]``: ``sum_l w_l * roi_l``."""
        weights = self.level_weights(pooled)
        return (weights.unsqueeze(2) * pooled).sum(dim=1)

    def forward(  # same call as the parent, the fused result instead of the per-level stack
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]] | None = None,
    ) -> Tensor:
        """Pool and fuse RoIs.

        Args:
            features: ``name -> Tensor[B, C, H_l, W_l]`` (must contain every RoI level).
            boxes: per image ``Tensor[N_i, 4]``, xyxy in input pixels.
            image_shapes: unused; kept for torchvision's ``RoIHeads`` call signature.

        Returns:
            ``Tensor[sum N_i, C, S, S]`` in the order of ``boxes``.
        """
        return self.select(super().forward(features, boxes, image_shapes))

    def mean_level_weights(self, features: dict[str, Tensor], boxes: list[Tensor]) -> Tensor:
        """``Tensor[sum N_i, L]``: per RoI, each level's weight averaged over the S x S cells
        (what ``fpn inspect-levels`` shows)."""
        pooled = AllLevelRoIPooler.forward(self, features, boxes)
        return self.level_weights(pooled).mean(dim=(2, 3))
