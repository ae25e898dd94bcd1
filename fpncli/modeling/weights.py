"""Loading a detector (or its ResNet backbone) from a weights source, and starting one
architecture from another's weights.

Detector weight sources (``--weights``; :mod:`fpncli.weight_files` tells them apart):
    ``coco``   torchvision's ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1`` (37.0 box AP on
               COCO val2017), downloaded once into the torch hub cache (:mod:`fpncli.modeling.hub`);
    a path     an fpncli checkpoint, or a plain torchvision Faster R-CNN state dict
               (:mod:`fpncli.modeling.torchvision_keys`); an ``fpn export`` file only for
               :func:`load_for_inference`;
    ``none``   random initialisation.
Backbone weight sources (``--backbone-weights``): ``imagenet`` (torchvision's
IMAGENET1K_V1 ResNets, also through the hub cache), a path to a ResNet state dict, ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from fpncli.config import ModelConfig
from fpncli.errors import FpnError
from fpncli.modeling.backbone import imagenet_state_dict_to_bottom_up
from fpncli.modeling.coco_classes import coco_v1_config
from fpncli.modeling.detector import FPNFasterRCNN, build_model
from fpncli.modeling.exported import exported_config, load_exported
from fpncli.modeling.hub import COCO_WEIGHTS_URL, IMAGENET_URLS, download_cached, is_coco_v1_file
from fpncli.modeling.torchvision_keys import config_from_torchvision_state_dict, torchvision_to_fpncli
from fpncli.weight_files import check_version, contents_kind, load_file, weights_kind


@dataclass
class LoadedModel:
    model: FPNFasterRCNN
    source: str  # human-readable: where the weights came from


def load_model_state(model: FPNFasterRCNN, state_dict: dict[str, Tensor], source: str) -> None:
    """Load ``state_dict`` strictly, except for BatchNorm's ``num_batches_tracked`` counters
    (absent from frozen-BN files); any other mismatch is an :class:`FpnError`."""
    result = _load_or_explain(model, state_dict, source)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise FpnError(f"{source}: weights do not fit the model: {'; '.join(detail)}")


def _load_or_explain(module: nn.Module, state_dict: dict[str, Tensor], source: str):
    """``load_state_dict(strict=False)``; shape mismatches become one-line :class:`FpnError`."""
    try:
        return module.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else str(exc).strip().splitlines()[0]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise FpnError(f"{source}: weights do not fit the model: {detail}{more}") from None


def _load_backbone(model: FPNFasterRCNN, source: str) -> str:
    """Load ResNet weights into the bottom-up pathway; returns a description."""
    name = model.config.backbone
    if source == "imagenet":
        try:
            path = download_cached(IMAGENET_URLS[name])
        except FpnError as exc:
            raise FpnError(f"{exc}; or train from scratch with --backbone-weights none") from None
        state, where = load_file(path), f"ImageNet {name}"
    else:
        state, where = load_file(source), source
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FpnError(f"{where}: not a ResNet state dict")
    state = {k.removeprefix("backbone.body."): v for k, v in state.items()}
    # The detector's ResNet and its copies (RFP's recursive passes) all start from the file.
    for module in [model.backbone.bottom_up, *model.backbone.neck.backbone_copies()]:
        result = _load_or_explain(
            module, imagenet_state_dict_to_bottom_up(state), f"{where}: does not fit backbone {name}"
        )
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise FpnError(
                f"{where}: does not fit backbone {name} "
                f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected keys)"
            )
    copies = len(model.backbone.neck.backbone_copies())
    return f"backbone from {where}" + (f" (also into the {copies} RFP pass(es))" if copies else "")


def load_detector(
    weights: str = "none",
    config: ModelConfig | None = None,
    backbone_weights: str = "none",
    training: bool = False,
    **overrides: Any,
) -> LoadedModel:
    """Build a detector and load its weights.

    Args:
        weights: ``coco``, ``none`` or a path (fpncli checkpoint or torchvision state dict).
        config: the architecture for ``weights="none"`` (ignored otherwise: the weights
            define the architecture).
        backbone_weights: ``imagenet``, ``none`` or a path to ResNet weights; only used
            with ``weights="none"``.
        overrides: ModelConfig fields that may differ from the stored ones without
            changing the weights (image sizes, score/NMS thresholds, detections per image);
            ``None`` values are ignored.
        training: keep the training-only modules (AugFPN's auxiliary box head) for training
            or resuming; a file without their weights then starts them fresh. Otherwise
            (inference: detect, eval, inspect-levels, info, export) they are dropped and
            their weights in the file are ignored.

    Returns:
        The model (on the CPU, in eval mode) and a description of its weights.
    """
    kind = weights_kind(weights)
    if kind == "coco":
        model = build_model(coco_v1_config(**overrides), pretrained_backbone=True)
        load_model_state(
            model, torchvision_to_fpncli(load_file(download_cached(COCO_WEIGHTS_URL))), "COCO_V1 weights"
        )
        return LoadedModel(model.eval(), "torchvision COCO_V1 (37.0 box AP on COCO val2017)")
    if kind == "none":
        if config is None:
            raise FpnError("no weights and no model configuration given")
        pretrained = backbone_weights != "none"
        model = build_model(config.replace(**overrides), pretrained_backbone=pretrained)
        if not training:
            model.drop_training_only()
        source = "random initialisation"
        if pretrained:
            source = _load_backbone(model, backbone_weights) + ", rest random"
        return LoadedModel(model.eval(), source)
    if kind != "file":
        raise FpnError(
            f"{weights}: an exported ({kind}) model only detects (fpn detect, fpn eval); this needs the "
            f"PyTorch checkpoint it was exported from"
        )
    return _load_path(weights, training, **overrides)


def load_for_inference(weights: str, **overrides: Any) -> tuple[Any, str]:
    """``(model, description)`` for ``fpn detect`` / ``fpn eval``: an exported file through
    :func:`~fpncli.modeling.exported.load_exported`, anything else through :func:`load_detector`.
    The model is an ``FPNFasterRCNN`` or an :class:`ExportedDetector` (the same inference API)."""
    kind = weights_kind(weights)
    if kind in ("onnx", "torchscript"):
        return load_exported(weights, **overrides), f"exported {kind} model {weights}"
    loaded = load_detector(weights, **overrides)
    return loaded.model, loaded.source


def weights_config(weights: str, config: ModelConfig | None = None, **overrides: Any) -> ModelConfig:
    """The architecture a weights source defines, without building the model (e.g. to check
    a dataset's boxes against its anchors): ``coco``, a path, or ``none`` (then ``config``)."""
    kind = weights_kind(weights)
    if kind == "coco":
        return coco_v1_config(**overrides)
    if kind == "none":
        if config is None:
            raise FpnError("no weights and no model configuration given")
        return config.replace(**overrides)
    if kind != "file":  # fpn export's file: its metadata holds the config
        return exported_config(weights).replace(**overrides)
    return _read_path(weights, **overrides)[0]


def _read_path(path: str, **overrides: Any) -> tuple[ModelConfig, dict[str, Tensor], str]:
    """``(config, state dict in fpncli's names, description)`` of a weights file (an fpncli
    checkpoint or a torchvision state dict, told apart by :func:`contents_kind`)."""
    obj = load_file(path)
    kind = contents_kind(obj)
    if kind == "checkpoint":
        check_version(obj, path)
        try:
            cfg = ModelConfig.from_dict(obj["model_config"]).replace(**overrides)
        except (TypeError, FpnError) as exc:
            raise FpnError(f"{path}: bad model configuration ({exc})") from None
        return cfg, obj["state_dict"], f"fpncli checkpoint {path}"
    if kind == "torchvision":
        try:
            cfg = config_from_torchvision_state_dict(obj, **overrides)
        except ValueError as exc:
            raise FpnError(f"{path}: torchvision state dict not understood ({exc})") from None
        source = f"torchvision state dict {path}"
        if cfg.backbone == "resnet50" and len(cfg.class_names) == 90 and is_coco_v1_file(path):
            cfg = coco_v1_config().replace(**overrides)
            source = f"torchvision COCO_V1 {path}"
        return cfg, torchvision_to_fpncli(obj), source
    if kind == "backbone":
        raise FpnError(f"{path}: this is a backbone (ResNet) state dict; pass it as --backbone-weights")
    raise FpnError(f"{path}: neither an fpncli checkpoint nor a torchvision Faster R-CNN state dict")


def _load_path(path: str, training: bool = False, **overrides: Any) -> LoadedModel:
    """A detector from a checkpoint or torchvision state dict (not an exported model)."""
    cfg, state, source = _read_path(path, **overrides)
    model = build_model(cfg, pretrained_backbone=cfg.norm == "frozen_bn")
    own_training_only = model.training_only_keys(model.state_dict())
    if not training:
        # Inference: the auxiliary head is neither built nor read (a checkpoint keeps it for
        # resuming; an inference-only file has none).
        model.drop_training_only()
        dropped = set(model.training_only_keys(state))
        state = {k: v for k, v in state.items() if k not in dropped}
    elif own_training_only and not model.training_only_keys(state):
        # Training from an inference-only file: the auxiliary head starts fresh.
        state = {**state, **{k: v for k, v in model.state_dict().items() if k in own_training_only}}
        names = ", ".join(model.training_only_parts())
        source = f"{source} ({names} initialised fresh: not in the file)"
    load_model_state(model, state, path)
    return LoadedModel(model.eval(), source)


def transfer_state(model: FPNFasterRCNN, state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """Load into ``model`` every tensor of ``state_dict`` whose name and shape match, for
    starting one architecture from another's checkpoint (``--weights`` of an FPN run into a
    ``nasfpn`` neck or an ``afp`` box head).

    A box head with per-level ``fc6.<l>`` (adaptive feature pooling) takes a plain ``fc6``
    into every level: each level starts as the FPN head it replaces, so the max fusion
    starts from a trained layer rather than noise. An RFP neck's recursive ResNets take the
    file's bottom-up ResNet when the file has none of their own.

    Returns:
        ``{"loaded": [names], "copied_fc6": int (levels given the plain fc6),
        "copied_backbones": int (RFP passes given the file's bottom-up ResNet), "fresh": [names
        left at their initialisation], "unused": [checkpoint names with no place]}``
        (BatchNorm's ``num_batches_tracked`` counters left out everywhere).
    """
    own = model.state_dict()
    take: dict[str, Tensor] = {}
    unused = []
    copied = 0
    # RFP's recursive ResNets take the file's bottom-up weights when it has none of their own
    # (an FPN run, COCO): each pass then starts as the first, as with ImageNet weights.
    prefixes = model.backbone_copy_prefixes()
    copied_backbones = 0
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state_dict):
            continue
        mirrored = {
            prefix + k[len("backbone.bottom_up.") :]: v
            for k, v in state_dict.items()
            if k.startswith("backbone.bottom_up.")
        }
        mirrored = {k: v for k, v in mirrored.items() if k in own and own[k].shape == v.shape}
        if mirrored:
            take.update(mirrored)
            copied_backbones += 1
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key in own and own[key].shape == value.shape:
            take[key] = value
            continue
        # roi_heads.box_head.fc6.weight -> roi_heads.box_head.fc6.<l>.weight for every level.
        head, _, leaf = key.rpartition(".")
        levels = [k for k in own if k.startswith(head + ".") and k.endswith("." + leaf)]
        levels = [k for k in levels if k[len(head) + 1 : -len(leaf) - 1].isdigit()]
        if head.endswith("box_head.fc6") and levels and all(own[k].shape == value.shape for k in levels):
            take.update({k: value for k in levels})
            copied = len(levels)
            continue
        unused.append(key)
    model.load_state_dict(take, strict=False)
    fresh = [k for k in own if k not in take and not k.endswith("num_batches_tracked")]
    return {
        "loaded": sorted(take),
        "copied_fc6": copied,
        "copied_backbones": copied_backbones,
        "fresh": fresh,
        "unused": unused,
    }


def describe_transfer(report: dict[str, Any], model: FPNFasterRCNN) -> str:
    """One line for the run log: how many tensors came from the checkpoint, which modules
    start fresh (with their parameter counts) and what of the checkpoint was not used."""
    own = model.state_dict()

    def group(key: str) -> str:
        parts = key.split(".")
        # backbone.neck.<part>, roi_heads.box_head.<layer>, roi_heads.box_predictor, ...
        depth = 3 if parts[0] in ("backbone", "roi_heads") and parts[1] in ("neck", "box_head") else 2
        return ".".join(parts[:depth])

    fresh: dict[str, int] = {}
    for key in report["fresh"]:
        fresh[group(key)] = fresh.get(group(key), 0) + own[key].numel()
    parts = [f"{len(report['loaded'])} tensors loaded"]
    if report["copied_fc6"]:
        parts.append(f"its fc6 copied into each of the {report['copied_fc6']} per-level fc6")
    if report.get("copied_backbones"):
        parts.append(f"its bottom-up ResNet copied into the {report['copied_backbones']} RFP pass(es)")
    if fresh:
        listed = ", ".join(f"{name} ({count:,})" for name, count in fresh.items())
        parts.append(f"initialised fresh: {listed}")
    if report["unused"]:
        unused = sorted({group(k) for k in report["unused"]})
        parts.append(f"not used from the file: {', '.join(unused)}")
    return "; ".join(parts)
