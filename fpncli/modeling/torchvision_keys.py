"""torchvision's Faster R-CNN FPN state dicts on fpncli's detector: renaming the keys both ways,
and the configuration a torchvision state dict implies."""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from fpncli.config import ModelConfig
from fpncli.modeling.coco_classes import COCO_V1_CATEGORIES


def torchvision_to_fpncli(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision ``fasterrcnn_resnet50_fpn``-style state dict to our module names.

    ``backbone.body.*`` -> ``backbone.bottom_up.*``; ``backbone.fpn.inner_blocks.i.0.*`` ->
    ``backbone.neck.laterals.i.*``; ``backbone.fpn.layer_blocks.i.0.*`` ->
    ``backbone.neck.outputs.i.*``; RPN and RoI-head names are already the same.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.replace("backbone.body.", "backbone.bottom_up.", 1)
        key = re.sub(r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"backbone.neck.laterals.\1.", key)
        key = re.sub(r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"backbone.neck.outputs.\1.", key)
        out[key] = value
    return out


def fpncli_to_torchvision(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`torchvision_to_fpncli` (for exporting an FPN model to torchvision)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("backbone.bottom_up.", "backbone.body.", 1)
        key = re.sub(r"^backbone\.neck\.laterals\.(\d+)\.", r"backbone.fpn.inner_blocks.\1.0.", key)
        key = re.sub(r"^backbone\.neck\.outputs\.(\d+)\.", r"backbone.fpn.layer_blocks.\1.0.", key)
        out[key] = value
    return out


def config_from_torchvision_state_dict(state_dict: dict[str, Tensor], **overrides: Any) -> ModelConfig:
    """Infer backbone, widths and classes from a torchvision Faster R-CNN FPN state dict.

    The model gets torchvision's anchor grid and FrozenBatchNorm eps 1e-5, what
    ``fasterrcnn_resnet50_fpn`` builds for anything but ``weights=COCO_V1`` (a model
    fine-tuned from COCO_V1 in torchvision ran with eps 0.0: pass ``frozen_bn_eps=0.0``).
    """
    if "rpn.head.conv.1.0.weight" in state_dict or "roi_heads.box_head.0.0.weight" in state_dict:
        # fasterrcnn_resnet50_fpn_v2: BatchNorm in the FPN, two RPN convs, a conv box head.
        raise ValueError(
            "fasterrcnn_resnet50_fpn_v2 weights are not supported (only fasterrcnn_resnet50_fpn's)"
        )
    try:
        num_classes = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0]
        head_dim = state_dict["roi_heads.box_head.fc6.weight"].shape[0]
        channels = state_dict["backbone.fpn.inner_blocks.0.0.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"missing key {exc.args[0]}") from None
    blocks3 = {int(m.group(1)) for k in state_dict if (m := re.match(r"backbone\.body\.layer3\.(\d+)\.", k))}
    bottleneck = any(".conv3." in k for k in state_dict if k.startswith("backbone.body.layer1."))
    backbone = {
        (6, True): "resnet50",
        (23, True): "resnet101",
        (2, False): "resnet18",
        (6, False): "resnet34",
    }.get((len(blocks3), bottleneck))
    if backbone is None:
        raise ValueError("backbone is not resnet18/34/50/101")
    if num_classes == len(COCO_V1_CATEGORIES):
        names, ids = COCO_V1_CATEGORIES[1:], list(range(1, num_classes))
    else:
        names, ids = [f"class_{i}" for i in range(1, num_classes)], list(range(1, num_classes))
    has_bn_stats = any(k.endswith("num_batches_tracked") for k in state_dict)
    return ModelConfig(
        backbone=backbone,
        norm="bn" if has_bn_stats else "frozen_bn",
        fpn_channels=channels,
        box_head_dim=head_dim,
        class_names=names,
        category_ids=ids,
        anchor_grid="torchvision",
    ).replace(**overrides)
