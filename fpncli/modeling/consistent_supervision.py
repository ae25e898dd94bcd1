"""AugFPN's Consistent Supervision (Guo et al., CVPR 2020, Sec. 3.1), training only.

The official code (``detectors/two_stage.py``, ``all_level_auxiliary.py``,
``bbox_head_auxiliary.py``) pools the *same* sampled RoIs as the main box head from each raw
lateral M2..M5 (the 1x1 projections before the top-down sum), runs them through an
auxiliary 2-FC head with its own weights (one head shared by the levels), and adds per level
a classification and a regression loss, each times alpha = 0.25, computed against the main
head's targets. Only the R-CNN stage gets it (no RPN auxiliary). At inference the branch
is not run, and fpncli drops it from inference-only models
(:meth:`fpncli.modeling.detector.FPNFasterRCNN.drop_training_only`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.pooler import AllLevelRoIPooler

# Loss names: the main head's torchvision names with "aux" and the level, e.g.
# loss_aux_classifier_p2, loss_aux_box_reg_p2.
AUX_PREFIX = "loss_aux_"


class AuxiliaryBoxHead(nn.Module):
    """The auxiliary R-CNN head: RoIAlign of each RoI on every raw lateral, a 2-FC head and
    a box predictor shared by the levels, one loss pair per level.

    Args:
        levels: the RoI levels, finest first (the raw laterals carry their names).
        in_features: ``C * S * S`` of one pooled map.
        representation_size: width of the two FC layers.
        num_classes: classifier outputs, background included.
        alpha: the weight of every level's losses (0.25 in the paper).
        output_size, sampling_ratio, aligned: RoIAlign's, as for the main pooler.
    """

    def __init__(
        self,
        levels: list[LevelSpec],
        in_features: int,
        representation_size: int,
        num_classes: int,
        alpha: float = 0.25,
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.pool = AllLevelRoIPooler(levels, output_size, sampling_ratio, aligned)
        self.box_head = TwoMLPHead(in_features, representation_size)
        self.box_predictor = FastRCNNPredictor(representation_size, num_classes)
        self.alpha = float(alpha)

    @property
    def level_names(self) -> list[str]:
        return [spec.name for spec in self.pool.levels]

    def predict(self, raw_laterals: dict[str, Tensor], proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits ``Tensor[N, L, K]`` and box deltas ``Tensor[N, L, 4K]`` of the
        proposals (per image ``Tensor[N_i, 4]`` xyxy input pixels) on each raw lateral."""
        pooled = self.pool(raw_laterals, proposals)  # [N, L, C, S, S]
        n, levels = pooled.shape[:2]
        logits, deltas = self.box_predictor(self.box_head(pooled.flatten(0, 1)))
        return logits.reshape(n, levels, -1), deltas.reshape(n, levels, -1)

    def forward(
        self,
        raw_laterals: dict[str, Tensor],
        proposals: list[Tensor],
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> dict[str, Tensor]:
        """The auxiliary losses: ``{"loss_aux_classifier_<level>": alpha * CE,
        "loss_aux_box_reg_<level>": alpha * smooth L1}`` for every RoI level, with the main
        head's sampled ``proposals``, ``labels`` (per image ``Int64Tensor[N_i]``) and
        ``regression_targets`` (per image ``Tensor[N_i, 4]``)."""
        logits, deltas = self.predict(raw_laterals, proposals)
        losses = {}
        for index, name in enumerate(self.level_names):
            cls, reg = fastrcnn_loss(logits[:, index], deltas[:, index], labels, regression_targets)
            losses[f"{AUX_PREFIX}classifier_{name}"] = self.alpha * cls
            losses[f"{AUX_PREFIX}box_reg_{name}"] = self.alpha * reg
        return losses


class ConsistentSupervisionRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` plus :class:`AuxiliaryBoxHead` in training.

    The main path is torchvision's, untouched; :meth:`select_training_samples` keeps the
    sampled proposals and their targets for the auxiliary head, which reads the raw laterals
    from the neck's :class:`~fpncli.modeling.necks.augfpn.PyramidFeatures`. In eval mode, or
    once ``aux_head`` is None (an inference-only model), this is exactly ``RoIHeads``.
    """

    def __init__(self, *args: Any, aux_head: AuxiliaryBoxHead, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aux_head: AuxiliaryBoxHead | None = aux_head
        self._sampled: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None

    def select_training_samples(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        proposals, matched_idxs, labels, regression_targets = super().select_training_samples(
            proposals, targets
        )
        self._sampled = (proposals, labels, regression_targets)
        return proposals, matched_idxs, labels, regression_targets

    def forward(  # torchvision's signature; the auxiliary losses join the loss dict
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training or self.aux_head is None:
            return super().forward(features, proposals, image_shapes, targets)
        raw = getattr(features, "raw_laterals", None)
        if raw is None:
            raise RuntimeError("consistent supervision needs the neck's raw laterals (the augfpn neck)")
        self._sampled = None
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
            assert self._sampled is not None  # set by select_training_samples in training mode
            sampled, labels, regression_targets = self._sampled
        finally:
            self._sampled = None  # do not hold the batch's tensors between steps
        losses.update(self.aux_head(raw, sampled, labels, regression_targets))
        return result, losses
