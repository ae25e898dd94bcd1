"""The FPN Faster R-CNN, assembled from the project's backbone/neck contract and
torchvision's detection blocks (RPN, RoI heads, transform), which already implement
the paper's heads exactly."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead

from fpncli.config import ModelConfig
from fpncli.errors import FpnError
from fpncli.modeling.anchors import LevelAnchorGenerator
from fpncli.modeling.backbone import ResNetBottomUp
from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.necks import build_neck
from fpncli.modeling.pooler import LevelRoIPooler


class BackboneWithNeck(nn.Module):
    """Bottom-up ResNet followed by a neck; what torchvision's ``FasterRCNN`` calls its backbone.

    ``forward``: ``Tensor[B, 3, H, W]`` (normalised, padded) -> ordered
    ``{level name: Tensor[B, d, H/stride, W/stride]}`` for every level in :attr:`levels`.
    """

    def __init__(self, cfg: ModelConfig, norm: str) -> None:
        super().__init__()
        # cfg arrives resolved (build_model): trainable_layers is set.
        self.bottom_up = ResNetBottomUp(
            cfg.backbone, norm=norm, trainable_layers=cfg.trainable_layers, frozen_bn_eps=cfg.frozen_bn_eps
        )
        self.neck = build_neck(
            cfg.neck, self.bottom_up.output_specs, cfg.fpn_channels, repeats=cfg.bifpn_repeats
        )
        self.out_channels = self.neck.out_channels  # read by torchvision's FasterRCNN

    @property
    def levels(self) -> OrderedDict[str, LevelSpec]:
        return self.neck.output_specs

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        # A neck that reads only some bottom-up levels (c4) lets the ResNet stop early.
        last = getattr(self.neck, "in_names", ["c5"])[-1]
        return self.neck(self.bottom_up(images, last=last))


class FPNFasterRCNN(FasterRCNN):
    """Faster R-CNN on a feature pyramid; carries its :class:`ModelConfig`.

    Training: ``model(images, targets)`` with images ``[Tensor[3, H, W]]`` in 0..1 and
    targets ``[{"boxes": Tensor[N, 4] xyxy pixels, "labels": Int64Tensor[N] in 1..K}]``
    returns a dict of losses. Inference: ``model(images)`` returns per image
    ``{"boxes": Tensor[M, 4] xyxy in that image's pixels, "scores": [M], "labels": [M]}``.
    """

    def __init__(self, cfg: ModelConfig, norm: str) -> None:
        backbone = BackboneWithNeck(cfg, norm)
        levels = backbone.levels
        rpn_specs = [levels[n] for n in backbone.neck.rpn_levels]
        roi_specs = [levels[n] for n in backbone.neck.roi_levels]
        anchor_sizes = _anchor_sizes_per_level(cfg, len(rpn_specs))
        anchors = LevelAnchorGenerator(rpn_specs, anchor_sizes, cfg.aspect_ratios, grid=cfg.anchor_grid)
        channels = backbone.out_channels
        pooled = cfg.roi_output_size
        super().__init__(
            backbone,
            num_classes=None,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            image_mean=list(cfg.image_mean),
            image_std=list(cfg.image_std),
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
            rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
            rpn_nms_thresh=cfg.rpn_nms_thresh,
            rpn_fg_iou_thresh=cfg.rpn_fg_iou_thresh,
            rpn_bg_iou_thresh=cfg.rpn_bg_iou_thresh,
            rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
            rpn_positive_fraction=cfg.rpn_positive_fraction,
            box_roi_pool=LevelRoIPooler(roi_specs, pooled, cfg.roi_sampling_ratio, cfg.roi_aligned),
            box_head=TwoMLPHead(channels * pooled * pooled, cfg.box_head_dim),
            box_predictor=FastRCNNPredictor(cfg.box_head_dim, cfg.num_classes),
            box_score_thresh=cfg.box_score_thresh,
            box_nms_thresh=cfg.box_nms_thresh,
            box_detections_per_img=cfg.box_detections_per_img,
            box_fg_iou_thresh=cfg.box_fg_iou_thresh,
            box_bg_iou_thresh=cfg.box_bg_iou_thresh,
            box_batch_size_per_image=cfg.box_batch_size_per_image,
            box_positive_fraction=cfg.box_positive_fraction,
        )
        self.config = cfg
        self.norm = norm

    @property
    def levels(self) -> OrderedDict[str, LevelSpec]:
        """Every level the neck produces, finest first."""
        return self.backbone.levels

    @property
    def rpn_levels(self) -> list[str]:
        return list(self.backbone.neck.rpn_levels)

    @property
    def roi_levels(self) -> list[str]:
        return list(self.backbone.neck.roi_levels)

    def anchor_sizes(self) -> list[tuple[int, ...]]:
        """Anchor sizes on each RPN level (same order as :attr:`rpn_levels`)."""
        return [tuple(s) for s in self.rpn.anchor_generator.sizes]


def _anchor_sizes_per_level(cfg: ModelConfig, num_levels: int) -> list[tuple[int, ...]]:
    """One anchor size per level (the paper); a single-level neck gets all sizes on its map."""
    sizes = tuple(cfg.anchor_sizes)
    if num_levels == 1:
        return [sizes]
    if len(sizes) != num_levels:
        raise FpnError(
            f"{len(sizes)} anchor sizes given for {num_levels} RPN levels; the {cfg.neck} neck "
            f"needs one size per level"
        )
    return [(s,) for s in sizes]


def build_model(cfg: ModelConfig, pretrained_backbone: bool = False) -> FPNFasterRCNN:
    """Build an untrained detector for ``cfg`` (weights are loaded by :mod:`fpncli.modeling.weights`)."""
    cfg.validate()
    cfg = cfg.replace(trainable_layers=cfg.resolved_trainable_layers(pretrained_backbone))
    return FPNFasterRCNN(cfg, cfg.resolved_norm(pretrained_backbone))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
