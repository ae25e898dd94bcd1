"""The detector a training run starts from: built from its preset, or loaded from
``--weights`` and fitted to the dataset's classes, another neck or another RoI pooling."""

from __future__ import annotations

from typing import Any

from fpncli.config import preset_config
from fpncli.errors import FpnError
from fpncli.modeling.detector import FPNFasterRCNN
from fpncli.modeling.necks.registry import neck_options
from fpncli.modeling.options import owned_elsewhere
from fpncli.training.config import TrainConfig, filled


def build_training_model(cfg: TrainConfig, categories: Any) -> tuple[FPNFasterRCNN, str]:
    """A detector for the dataset's classes, from the configured weights."""
    from fpncli.modeling.detector import build_model
    from fpncli.modeling.weights import load_detector

    names, ids = list(categories.names), list(categories.category_ids)
    overrides = cfg.model_overrides()
    if cfg.weights == "none":
        config = preset_config(cfg.preset, class_names=names, category_ids=ids, **overrides)
        loaded = load_detector(
            "none", config=config, backbone_weights=filled(cfg.backbone_weights), training=True
        )
        return loaded.model, loaded.source
    loaded = load_detector(cfg.weights, training=True)
    model = loaded.model
    if (
        list(model.config.category_ids) == ids
        and list(model.config.class_names) == names
        and not any(v is not None for v in overrides.values())
    ):
        return model, loaded.source
    config = _switch_neck(model.config, overrides).replace(class_names=names, category_ids=ids, **overrides)
    given = {k: v for k, v in overrides.items() if v is not None}
    foreign = owned_elsewhere(given, neck_options(), config.neck)  # e.g. --rfp-steps on an fpn run
    if foreign is not None:
        raise FpnError(foreign)
    config = config.replace(roi_pooling=config.resolved_roi_pooling())  # compared with the file's below
    new = build_model(config, pretrained_backbone=model.norm == "frozen_bn")
    if _other_architecture(model.config, config):
        # Another neck or RoI pooling (an FPN run into nasfpn / afp): take what fits, say what is new.
        from fpncli.modeling.weights import describe_transfer, transfer_state

        report = transfer_state(new, model.state_dict())
        return new, f"{loaded.source}: {describe_transfer(report, new)}"
    # Fine-tuning on other classes: same architecture, new box predictor.
    new.load_all_but_box_predictor(model)
    return new, f"{loaded.source}, new box predictor for {len(names)} classes"


def _switch_neck(old: Any, overrides: dict[str, Any]) -> Any:
    """``old`` (a ModelConfig) ready for another ``--neck`` (``overrides["neck"]``): options
    of the old neck go back to their defaults, and an RoI pooling that was the old neck's
    own default becomes the new neck's (an FPN run into augfpn gets soft RoI selection; an
    explicit ``afp`` is kept). Unchanged when the neck stays."""
    from fpncli.config import ModelConfig
    from fpncli.modeling.necks.registry import get_neck

    neck = overrides.get("neck")
    if neck is None or neck == old.neck:
        return old
    defaults = ModelConfig()
    reset = {k: getattr(defaults, k) for k in get_neck(old.neck).option_fields if overrides.get(k) is None}
    if overrides.get("roi_pooling") is None and old.roi_pooling == get_neck(old.neck).roi_pooling:
        reset["roi_pooling"] = "auto"
    return old.replace(**reset)


def _other_architecture(old, new) -> bool:
    """Whether ``new`` (a ModelConfig) changes the neck, the RoI pooling or SAC of ``old``."""
    from fpncli.modeling.necks.registry import get_neck

    options = set(get_neck(old.neck).option_fields) | set(get_neck(new.neck).option_fields)
    fields = ("neck", "roi_pooling", "sac", "sac_deform", "sac_stages", *sorted(options))
    return any(getattr(old, f) != getattr(new, f) for f in fields)
