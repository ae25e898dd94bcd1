"""A data description of a built detector (used by `fpn info` and `inspect-levels`)."""

from __future__ import annotations

from typing import Any

from fpncli.modeling.detector import FPNFasterRCNN, count_parameters
from fpncli.modeling.necks.registry import get_neck


def describe_model(model: FPNFasterRCNN, weights: str) -> dict[str, Any]:
    """Levels (name, stride, channels, anchors, which head uses them), parameters, config."""
    cfg = model.config
    rpn_sizes = dict(zip(model.rpn_levels, model.anchor_sizes()))
    levels = []
    for name, spec in model.levels.items():
        used_by = [
            head
            for head, names in (("RPN", model.rpn_levels), ("RoI head", model.roi_levels))
            if name in names
        ]
        sizes = list(rpn_sizes.get(name, ()))
        levels.append(
            {
                "name": name,
                "stride": spec.stride,
                "channels": spec.channels,
                "anchor_sizes": sizes,
                "aspect_ratios": list(cfg.aspect_ratios) if sizes else [],
                "anchors_per_cell": len(sizes) * len(cfg.aspect_ratios),
                "used_by": used_by,
            }
        )
    parts = {
        "bottom-up": model.backbone.bottom_up,
        "neck": model.backbone.neck,
        "RPN head": model.rpn,
        "box head": model.roi_heads.box_head,
        "box predictor": model.roi_heads.box_predictor,
    }
    return {
        "backbone": cfg.backbone,
        "neck": cfg.neck,
        "neck_summary": get_neck(cfg.neck).summary,
        "neck_options": {name: getattr(cfg, name) for name in get_neck(cfg.neck).options},
        "input_levels": model.input_levels,
        "norm": model.norm,
        "levels": levels,
        "rpn_levels": model.rpn_levels,
        "roi_levels": model.roi_levels,
        "parameters": count_parameters(model),
        "parameters_by_part": {name: count_parameters(module) for name, module in parts.items()},
        "roi_pooling": cfg.roi_pooling,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "num_classes": len(cfg.class_names),
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "roi_output_size": cfg.roi_output_size,
        "weights": weights,
    }
