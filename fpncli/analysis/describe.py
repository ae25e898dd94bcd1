"""A data description of a built detector (used by `fpn info` and `inspect-levels`)."""

from __future__ import annotations

from typing import Any

from fpncli.modeling.detector import FPNFasterRCNN
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
    parts = model.parts()
    training_only = {id(p) for m in model.training_only_parts().values() for p in m.parameters()}
    inference_params = [p for p in model.parameters() if id(p) not in training_only]
    return {
        "backbone": cfg.backbone,
        "neck": cfg.neck,
        "neck_summary": get_neck(cfg.neck).summary,
        "neck_options": {name: getattr(cfg, name) for name in get_neck(cfg.neck).option_fields},
        "input_levels": model.input_levels,
        "norm": model.norm,
        "frozen_bn_eps": cfg.frozen_bn_eps if model.norm == "frozen_bn" else None,
        "anchor_grid": cfg.anchor_grid,
        "levels": levels,
        "rpn_levels": model.rpn_levels,
        "roi_levels": model.roi_levels,
        # What inference runs; training-only modules (AugFPN's auxiliary head) are listed apart.
        "parameters": sum(p.numel() for p in inference_params),
        "training_only_parameters": model.training_only_parameters(),
        "augfpn": _augfpn_parts(cfg),
        "parameters_by_part": _count_by_part(parts),
        "roi_pooling": cfg.roi_pooling,
        "sac": _sac_summary(model),
        "rfp": _rfp_summary(model),
        "trainable_parameters": sum(p.numel() for p in inference_params if p.requires_grad),
        "num_classes": len(cfg.class_names),
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "roi_output_size": cfg.roi_output_size,
        "weights": weights,
    }


def _augfpn_parts(cfg: Any) -> dict[str, Any] | None:
    """Which of AugFPN's three parts an augfpn model has (None for other necks)."""
    if cfg.neck != "augfpn":
        return None
    return {
        "residual_feature_augmentation": bool(cfg.augfpn_rfa),
        "soft_roi_selection": cfg.roi_pooling == "soft",
        "consistent_supervision": bool(cfg.augfpn_consistent_supervision),
        "cs_alpha": cfg.augfpn_cs_alpha,
    }


def describe_weights(
    weights: str = "none",
    *,
    preset: str = "default",
    num_classes: int = 80,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`describe_model` of the detector ``weights`` defines (``coco``, a path, or
    ``none``: the ``preset`` with ``num_classes`` classes and the architecture options
    ``model`` gives, :class:`~fpncli.config.ModelConfig` field -> value)."""
    from fpncli.config import model_overrides, preset_config
    from fpncli.modeling.weights import load_detector

    cfg = model_overrides(
        model or {},
        preset_config(
            preset,
            class_names=[f"class_{i}" for i in range(1, num_classes + 1)],
            category_ids=list(range(1, num_classes + 1)),
        ),
    )
    loaded = load_detector(weights, config=cfg)
    return describe_model(loaded.model, loaded.source)


def _sac_summary(model: FPNFasterRCNN) -> dict[str, Any] | None:
    """Switchable Atrous Convolution in the bottom-up ResNet: its stages, variant, layer count."""
    from fpncli.modeling.sac import sac_layers

    cfg = model.config
    if not cfg.sac:
        return None
    return {
        "stages": [f"c{k}" for k in sorted(cfg.sac_stages)],
        "deform": cfg.sac_deform,
        "layers": len(sac_layers(model.backbone.bottom_up.modules())),
    }


def _rfp_summary(model: FPNFasterRCNN) -> dict[str, Any] | None:
    """Recursive Feature Pyramid: steps, and that every recursive pass has its own ResNet."""
    copies = model.backbone.neck.backbone_copies()
    if not copies:
        return None
    return {
        "steps": model.config.rfp_steps,
        "recursive_backbones": len(copies),
        "weights": "own (one ResNet per extra step, initialised as the first)",
        "feedback": {c: p for c, p in getattr(model.backbone.neck, "feedback", {}).items()},
    }


def _count_by_part(parts: dict[str, Any]) -> dict[str, int]:
    """Parameters per part, each parameter counted once, in the first part that holds it (RFP's
    recursive ResNets live inside the neck but are listed as their own part)."""
    seen: set[int] = set()
    counts = {}
    for name, module in parts.items():
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        counts[name] = sum(p.numel() for p in params)
    return counts
