"""Read-only views into a built detector for ``fpn inspect-levels``: what each stage of one
forward pass produced, the RPN's proposals per level, and how the ``afp`` and ``soft`` RoI
poolings weigh the levels.

Functions taking the model, rather than methods on it, so that ``modeling/`` holds only what
training and inference run; these reach into torchvision's RPN and RoI heads the way
:class:`~fpncli.modeling.detector.FPNFasterRCNN`'s own inference API does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fpncli.modeling.soft_roi import SoftRoISelection

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.modeling.detector import FPNFasterRCNN


@dataclass
class RPNCall:
    """One call of the RPN's proposal filter: ``proposals`` ``Tensor[B, A, 4]`` (decoded boxes
    of all anchors, levels concatenated), ``objectness`` ``Tensor[B * A, 1]`` logits, the
    images' input sizes, ``A_l`` per level and the kept boxes per image."""

    proposals: Tensor
    objectness: Tensor
    image_shapes: list[tuple[int, int]]
    num_anchors_per_level: list[int]
    boxes: list[Tensor]


@dataclass
class InferenceTrace:
    """What :func:`trace` kept: the transform's ``(ImageList, targets)``, the neck's
    ``{level: Tensor[1, d, h, w]}``, the bottom-up maps (when asked), the RPN's filter calls
    and the final output dict."""

    transformed: Any = None
    features: Any = None
    bottom_up: Any = None
    rpn_calls: list[RPNCall] = field(default_factory=list)
    output: dict[str, Tensor] = field(default_factory=dict)


def trace(model: FPNFasterRCNN, image: Tensor, bottom_up: bool = False) -> InferenceTrace:
    """Run ``model([image])`` (eval mode) and keep what each stage produced.

    Args:
        image: ``Tensor[3, H, W]`` float in 0..1 on the model's device.
        bottom_up: also keep the bottom-up maps (``c2``..``c5``).
    """
    trace = InferenceTrace()

    def keep(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            setattr(trace, name, output)

        return hook

    hooks = [
        model.transform.register_forward_hook(keep("transformed")),
        model.backbone.register_forward_hook(keep("features")),
    ]
    if bottom_up:
        hooks.append(model.backbone.bottom_up.register_forward_hook(keep("bottom_up")))
    rpn = model.rpn
    original = rpn.filter_proposals

    def recording(proposals, objectness, image_shapes, num_anchors_per_level):
        boxes, scores = original(proposals, objectness, image_shapes, num_anchors_per_level)
        trace.rpn_calls.append(
            RPNCall(proposals, objectness, list(image_shapes), list(num_anchors_per_level), boxes)
        )
        return boxes, scores

    rpn.filter_proposals = recording  # instance attribute shadows the method while tracing
    try:
        trace.output = model([image])[0]
    finally:
        del rpn.filter_proposals
        for h in hooks:
            h.remove()
    return trace


def proposals_per_level(model: FPNFasterRCNN, call: RPNCall) -> tuple[list[int], list[int]]:
    """Per RPN level, how many proposals of image 0 enter NMS and how many the RPN keeps.

    torchvision's ``filter_proposals`` keeps the top-n proposals of *each level*, then
    runs ``batched_nms`` per level and keeps the best ``post_nms_top_n`` overall. The
    RPN's own ``filter_proposals`` is run on each level's slice: with NMS disabled
    (``nms_thresh = 1.0``) it gives that level's candidates before NMS, with the model's
    threshold the level's survivors, whose scores place them in the overall top-n.

    Returns ``(pre_nms, post_nms)``, one count per level; ``sum(post_nms)`` equals the
    number of proposals the model kept for image 0.
    """
    proposals, objectness = call.proposals, call.objectness
    kept = int(call.boxes[0].shape[0])
    num_images = proposals.shape[0]
    obj = objectness.reshape(num_images, -1)
    unlimited = {"training": proposals.shape[1], "testing": proposals.shape[1]}
    everything = copy.copy(model.rpn)  # shallow: shares the modules, own thresholds
    everything._post_nms_top_n = unlimited
    everything.nms_thresh = 1.0  # IoU never exceeds 1: NMS removes nothing
    survivors = copy.copy(model.rpn)
    survivors._post_nms_top_n = unlimited
    pre: list[int] = []
    scores: list[Tensor] = []
    start = 0
    for n in call.num_anchors_per_level:
        part = (proposals[:, start : start + n], obj[:, start : start + n], call.image_shapes, [n])
        pre.append(int(everything.filter_proposals(*part)[0][0].shape[0]))
        scores.append(survivors.filter_proposals(*part)[1][0])
        start += n
    level_of = torch.cat([torch.full((len(s),), i, dtype=torch.int64) for i, s in enumerate(scores)])
    order = torch.sort(torch.cat(scores).cpu(), descending=True, stable=True).indices[:kept]
    post = torch.bincount(level_of[order], minlength=len(scores)).tolist()
    return pre, post


def afp_level_wins(
    model: FPNFasterRCNN, features: dict[str, Tensor], boxes: Tensor, image_sizes: list[tuple[int, int]]
) -> Tensor:
    """For an ``afp`` model: ``boxes`` (``Tensor[N, 4]`` xyxy, model-input pixels of image
    0) pooled from every RoI level through the per-level fc6; returns ``Tensor[N, L]``,
    the share of fused units each level won (see ``AFPBoxHead.level_wins``)."""
    if model.config.roi_pooling != "afp":
        raise ValueError("afp_level_wins needs a model with --roi-pooling afp")
    pooled = model.roi_heads.box_roi_pool(features, [boxes], image_sizes)
    return model.roi_heads.box_head.level_wins(pooled)


def soft_level_weights(
    model: FPNFasterRCNN, features: dict[str, Tensor], boxes: Tensor, image_sizes: list[tuple[int, int]]
) -> Tensor:
    """For a ``soft`` model: ``boxes`` (``Tensor[N, 4]`` xyxy, model-input pixels of image
    0) pooled from every RoI level; returns ``Tensor[N, L]``, each level's soft-selection
    weight (sigmoid, 0..1, not normalised across levels) averaged over the pooled grid."""
    pool = model.roi_heads.box_roi_pool
    if not isinstance(pool, SoftRoISelection):
        raise ValueError("soft_level_weights needs a model with --roi-pooling soft")
    return pool.mean_level_weights(features, [boxes])


def base_anchors(model: FPNFasterRCNN, level: str) -> Tensor:
    """``Tensor[A, 4]`` xyxy anchors centred on 0 for an RPN level, ratio-major (all
    sizes of the first aspect ratio, then the next ...), as the anchor generator tiles them."""
    sizes = dict(zip(model.rpn_levels, model.anchor_sizes()))[level]
    ratios = list(model.config.aspect_ratios)
    return model.rpn.anchor_generator.generate_anchors(list(sizes), ratios, device=torch.device("cpu"))
