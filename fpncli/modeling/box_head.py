"""PANet's adaptive feature pooling head (Liu et al., CVPR 2018, Sec. 3.2): the 2-FC box
head with its first layer per level and an element-wise max across levels.

torchvision's ``TwoMLPHead`` is ``relu(fc7(relu(fc6(x))))`` on one pooled map per RoI; here
each RoI arrives pooled from every RoI level (:class:`~fpncli.modeling.pooler.AllLevelRoIPooler`),
each level goes through its own ``fc6``, and the levels are fused by element-wise max before
the shared ``fc7``. ReLU and max commute (ReLU is monotonic), so ``relu(max_l fc6_l(x_l))``
equals PANet's ``max_l relu(fc6_l(x_l))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AFPBoxHead(nn.Module):
    """Per-level ``fc6``, element-wise max over levels, shared ``fc7``.

    Args:
        num_levels: L, the RoI levels each RoI is pooled from.
        in_features: ``C * S * S`` of one pooled map.
        representation_size: width of fc6 and fc7 (the paper's 1024).

    Module names: ``fc6.<l>`` (one ``Linear`` per level, finest first) and ``fc7``, so an FPN
    checkpoint's ``fc7`` loads as is and its ``fc6`` can start every level.
    """

    def __init__(self, num_levels: int, in_features: int, representation_size: int) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"AFP needs at least one level, got {num_levels}")
        self.fc6 = nn.ModuleList(nn.Linear(in_features, representation_size) for _ in range(num_levels))
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.in_features = in_features

    @property
    def num_levels(self) -> int:
        return len(self.fc6)

    def level_responses(self, x: Tensor) -> Tensor:
        """``Tensor[N, L, C, S, S]`` pooled RoIs -> ``Tensor[N, L, D]``: each level's fc6
        output before the fusion (and before the ReLU)."""
        if x.dim() != 5 or x.shape[1] != self.num_levels:
            raise ValueError(
                f"AFP head expects pooled RoIs [N, {self.num_levels}, C, S, S], got {list(x.shape)}"
            )
        # Not flatten(start_dim=2): ONNX exports that as Reshape(N, L, -1), which fails on an
        # image without RoIs (-1 is ambiguous for an empty tensor); C*S*S is fixed.
        flat = x.reshape(-1, self.num_levels, self.in_features)
        return torch.stack([fc(flat[:, i]) for i, fc in enumerate(self.fc6)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[N, L, C, S, S]`` -> ``Tensor[N, D]``."""
        fused = self.level_responses(x).amax(dim=1)
        return F.relu(self.fc7(F.relu(fused)))

    def level_wins(self, x: Tensor) -> Tensor:
        """Which level won the max fusion: ``Tensor[N, L]``, per RoI the share of the D fc6
        units whose maximum came from each level (rows sum to 1; ties go to the finer level)."""
        winners = self.level_responses(x).argmax(dim=1)  # [N, D]
        counts = F.one_hot(winners, self.num_levels).sum(dim=1).float()  # [N, L]
        return counts / max(winners.shape[1], 1)
