"""`fpn inspect-levels IMAGE`: what each pyramid level sees and does in one image.

Everything here returns the plain-data reports of :mod:`fpncli.viz.reports` (dataclasses
with ``to_json()``); pictures are drawn by :mod:`fpncli.viz.levels` and tables by the CLI.

One image (:func:`inspect_image`) runs the model's own forward pass once, through
``level_views.trace``, which keeps the transform's, the neck's and (optionally) the
bottom-up ResNet's outputs and the RPN's proposal-filter call; the RPN proposals per level,
before and after NMS, come from ``level_views.proposals_per_level`` (exact: NMS never
compares boxes of different levels, so ranking each level's survivors reproduces the
model's cut, ties at the cut aside).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fpncli.analysis import level_views
from fpncli.config import ModelConfig
from fpncli.errors import FpnError
from fpncli.modeling.levels import (
    LevelSpec,
    assign_level,
    level_name,
    level_range,
    resized_size,
)
from fpncli.runtime.events import ProgressFn, step
from fpncli.viz.reports import (
    SIZE_BUCKETS,
    AFPLevels,
    Detection,
    ImageInspection,
    LevelRow,
    RFPView,
    SoftLevels,
    size_bucket,
)

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.modeling.detector import FPNFasterRCNN


def _strength(fmap: Tensor, stride: int, input_size: tuple[int, int]) -> np.ndarray:
    """``Tensor[1, C, h, w]`` -> mean |activation| over channels on the cells covering the image."""
    return _crop(fmap, stride, input_size).abs().mean(dim=0).cpu().numpy()


def check_image_size(path: Path, image_size: tuple[int, int], model: FPNFasterRCNN) -> tuple[int, int]:
    """The model's input size for an image of ``image_size`` (h, w); raises when the image is
    too small for the pyramid.

    "Too small" means the resized image's shorter side is below the coarsest level's stride:
    that level would then be a single cell made mostly of padding, and its heat map, anchors
    and proposals would say nothing about the image. It happens with very elongated images
    (the longer side caps the scale) or a ``--min-size`` below the coarsest stride.
    """
    cfg: ModelConfig = model.config
    h, w = image_size
    coarsest = max(model.levels.values(), key=lambda s: s.stride)
    if min(h, w) < 1:
        raise FpnError(f"{path}: image has no pixels ({w}x{h})")
    rh, rw = resized_size(h, w, model.min_size, model.max_size)
    if min(rh, rw) < coarsest.stride:
        raise FpnError(
            f"{path}: image too small for the pyramid: {w}x{h} px is resized to {rw}x{rh} "
            f"(--min-size {cfg.min_size}, --max-size {cfg.max_size}), but the coarsest level "
            f"{coarsest.name} has stride {coarsest.stride}; the resized shorter side must be at "
            f"least {coarsest.stride} px (raise --max-size for elongated images, or --min-size)"
        )
    return rh, rw


def inspect_image(
    model: FPNFasterRCNN,
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    score_thr: float = 0.5,
    bottom_up: bool = False,
    weights: str = "",
    progress: ProgressFn | None = None,
) -> ImageInspection:
    """Run ``model`` (an :class:`~fpncli.modeling.detector.FPNFasterRCNN`) on one image and
    describe every pyramid level.

    Args:
        path: the image (read with :func:`fpncli.data.images.read_image`).
        score_thr: detections below this score are dropped.
        bottom_up: also keep the bottom-up maps ``c2..c5``.
        weights: where the weights came from (copied into the result).

    Raises:
        FpnError: unreadable image, or an image too small for the coarsest level
            (see :func:`check_image_size`).
    """
    from torchvision.transforms.functional import pil_to_tensor

    from fpncli.data.images import read_image

    path = Path(path)
    img = read_image(path)
    tensor = pil_to_tensor(img)  # uint8 [3, H, W]
    image_size = (int(tensor.shape[1]), int(tensor.shape[2]))
    check_image_size(path, image_size, model)
    device = torch.device(device)
    model.eval().to(device)
    step(progress, f"running the model on {path.name}")
    with torch.inference_mode():
        trace = level_views.trace(model, tensor.to(device).float().div_(255), bottom_up=bottom_up)
    output = trace.output
    image_list = trace.transformed[0]
    input_size = (int(image_list.image_sizes[0][0]), int(image_list.image_sizes[0][1]))
    padded = (int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1]))
    features: OrderedDict[str, Tensor] = trace.features
    levels: OrderedDict[str, LevelSpec] = model.levels
    rpn_levels, roi_levels = model.rpn_levels, model.roi_levels

    step(progress, "counting proposals per level")
    call = trace.rpn_calls[-1]
    with torch.inference_mode():
        pre, post = level_views.proposals_per_level(model, call)
    if len(call.num_anchors_per_level) != len(rpn_levels):
        raise RuntimeError(
            f"the RPN saw {len(call.num_anchors_per_level)} maps but the model declares {rpn_levels}"
        )
    rpn_counts = {name: (pre[i], post[i]) for i, name in enumerate(rpn_levels)}

    # Detections: keep those above the threshold, level by Eqn. (1) in input pixels.
    keep_mask = output["scores"] >= score_thr
    boxes = output["boxes"][keep_mask].float().cpu()
    scores = output["scores"][keep_mask].float().cpu()
    labels = output["labels"][keep_mask].cpu()
    ratio = torch.tensor([input_size[1] / image_size[1], input_size[0] / image_size[0]] * 2)
    lo, hi = level_range(levels, roi_levels)
    det_levels = assign_level(boxes * ratio, lo, hi).tolist()
    names = list(model.config.class_names)
    detections = [
        Detection(
            [float(v) for v in box],
            float(score),
            int(label),
            names[int(label) - 1] if 0 < int(label) <= len(names) else str(int(label)),
            level_name(levels, roi_levels, k),
        )
        for box, score, label, k in zip(boxes.tolist(), scores.tolist(), labels.tolist(), det_levels)
    ]
    afp = None
    if model.config.roi_pooling == "afp":
        step(progress, "re-pooling the detections from every level (adaptive feature pooling)")
        afp = afp_level_selection(model, features, boxes * ratio, detections, image_list.image_sizes)
    soft = None
    if model.config.roi_pooling == "soft":
        step(progress, "re-pooling the detections from every level (soft RoI selection)")
        soft = soft_level_selection(model, features, boxes * ratio, detections, image_list.image_sizes)
    rfp = None
    if model.config.neck == "rfp":
        step(progress, "running the recursive feature pyramid step by step")
        rfp = rfp_view(model, image_list.tensors, input_size)
    det_counts = {name: 0 for name in roi_levels}
    for det in detections:
        det_counts[det.level] = det_counts.get(det.level, 0) + 1

    sizes = dict(zip(rpn_levels, model.anchor_sizes()))
    ratios = [float(r) for r in model.config.aspect_ratios]
    rows = []
    for name, spec in levels.items():
        fmap = features[name]
        h, w = int(fmap.shape[-2]), int(fmap.shape[-1])
        anchor_sizes = [int(s) for s in sizes.get(name, ())]
        level_ratios = ratios if anchor_sizes else []
        rows.append(
            LevelRow(
                name=name,
                stride=spec.stride,
                size=(h, w),
                channels=int(fmap.shape[1]),
                anchor_sizes=anchor_sizes,
                aspect_ratios=level_ratios,
                anchors=h * w * len(anchor_sizes) * len(level_ratios),
                proposals_pre_nms=rpn_counts[name][0] if name in rpn_counts else None,
                proposals_post_nms=rpn_counts[name][1] if name in rpn_counts else None,
                detections=det_counts[name] if name in roi_levels else None,
            )
        )

    strength = OrderedDict(
        (name, _strength(features[name], levels[name].stride, input_size)) for name in levels
    )
    bottom_maps: OrderedDict[str, np.ndarray] = OrderedDict()
    bottom_strides: dict[str, int] = {}
    if bottom_up:
        # The ResNet may stop after the last stage its neck reads (c4 for the c4 neck).
        for name, spec in model.bottom_up_levels.items():
            if name in trace.bottom_up:
                bottom_maps[name] = _strength(trace.bottom_up[name], spec.stride, input_size)
                bottom_strides[name] = spec.stride
    return ImageInspection(
        image_path=path,
        image=np.asarray(img),
        image_size=image_size,
        input_size=input_size,
        padded_size=padded,
        levels=rows,
        detections=detections,
        strength=strength,
        strides={name: spec.stride for name, spec in levels.items()},
        bottom_up=bottom_maps,
        bottom_up_strides=bottom_strides,
        score_thr=score_thr,
        weights=weights,
        afp=afp,
        soft=soft,
        rfp=rfp,
    )


def rfp_view(model: FPNFasterRCNN, tensors: Tensor, input_size: tuple[int, int]) -> RFPView:
    """Every step of an RFP model's neck on one prepared, padded image ``Tensor[1, 3, H, W]``
    (the neck runs once more, step by step; its fused output is the model's pyramid)."""
    with torch.inference_mode():
        steps = model.rfp_steps(tensors)
    strides = {name: spec.stride for name, spec in model.levels.items()}

    def strengths(pyramid: OrderedDict[str, Tensor]) -> OrderedDict[str, np.ndarray]:
        return OrderedDict((n, _strength(f, strides[n], input_size)) for n, f in pyramid.items())

    first, output = steps.passes[0], steps.output
    change = {}
    for name in first:
        a, b = _crop(first[name], strides[name], input_size), _crop(output[name], strides[name], input_size)
        change[name] = float((b - a).abs().mean() / a.abs().mean().clamp_min(1e-12))
    return RFPView(
        levels=list(first),
        passes=[strengths(p) for p in steps.passes],
        gates=[strengths(g) for g in steps.gates],  # one channel, in 0..1: |g| = g
        output=strengths(output),
        change=change,
    )


def _crop(fmap: Tensor, stride: int, input_size: tuple[int, int]) -> Tensor:
    """``Tensor[1, C, h, w]`` -> the cells that cover the resized image, ``Tensor[C, h', w']``."""
    rows = min(fmap.shape[-2], math.ceil(input_size[0] / stride))
    cols = min(fmap.shape[-1], math.ceil(input_size[1] / stride))
    return fmap[0, :, :rows, :cols].float()


def afp_level_selection(
    model: FPNFasterRCNN,
    features: OrderedDict[str, Tensor],
    input_boxes: Tensor,
    detections: list[Detection],
    image_sizes: list[tuple[int, int]],
) -> AFPLevels:
    """Fill ``afp_level`` / ``afp_shares`` of ``detections`` and count them per level and size.

    Each detection's box (``input_boxes``: ``Tensor[N, 4]`` xyxy in model-input pixels) is
    pooled from every RoI level and run through the AFP head's per-level fc6; a level "wins"
    an fc6 unit when its response is the maximum the fusion keeps. The detection's level is
    the one that wins most units. The head saw the detection's *proposal*, not its regressed
    box (torchvision does not keep which proposal a detection came from); the box is what a
    second pass would pool, and the two overlap by construction.
    """
    roi_levels = model.roi_levels
    chosen = []
    if detections:
        device = next(iter(features.values())).device
        with torch.inference_mode():
            shares = (
                level_views.afp_level_wins(model, features, input_boxes.to(device), image_sizes).float().cpu()
            )
        for det, row in zip(detections, shares.tolist()):
            det.afp_shares = row
            det.afp_level = roi_levels[max(range(len(row)), key=lambda i: row[i])]
            chosen.append(det.afp_level)
    won, equation, agree = _count_level_choices(roi_levels, detections, chosen)
    return AFPLevels(roi_levels, won, equation, agree, len(detections))


def _count_level_choices(
    roi_levels: list[str], detections: list[Detection], chosen: list[str]
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]], int]:
    """Per RoI level and size bucket: how many detections a head chose that level for
    (``chosen``, one per detection), how many Eqn. (1) assigns there, and how many agree."""
    sizes = [name for name, _ in SIZE_BUCKETS]
    won = {name: dict.fromkeys(sizes, 0) for name in roi_levels}
    equation = {name: dict.fromkeys(sizes, 0) for name in roi_levels}
    for det, level in zip(detections, chosen):
        bucket = size_bucket(det.box)
        won[level][bucket] += 1
        equation[det.level][bucket] += 1
    return won, equation, sum(det.level == level for det, level in zip(detections, chosen))


def soft_level_selection(
    model: FPNFasterRCNN,
    features: OrderedDict[str, Tensor],
    input_boxes: Tensor,
    detections: list[Detection],
    image_sizes: list[tuple[int, int]],
) -> SoftLevels:
    """Fill ``soft_level`` / ``soft_weights`` of ``detections`` and count them per level and size.

    Each detection's box (``input_boxes``: ``Tensor[N, 4]`` xyxy in model-input pixels) is
    pooled from every RoI level and the soft RoI selection's attention weights each level
    (``level_views.soft_level_weights``); the detection's level is the one weighted most.
    As for AFP, the head saw the detection's proposal, not its regressed box.
    """
    roi_levels = model.roi_levels
    mean: dict[str, float | None] = dict.fromkeys(roi_levels)
    chosen = []
    if detections:
        device = next(iter(features.values())).device
        with torch.inference_mode():
            weights = (
                level_views.soft_level_weights(model, features, input_boxes.to(device), image_sizes)
                .float()
                .cpu()
            )
        mean = dict(zip(roi_levels, weights.mean(dim=0).tolist()))
        for det, row in zip(detections, weights.tolist()):
            det.soft_weights = row
            det.soft_level = roi_levels[max(range(len(row)), key=lambda i: row[i])]
            chosen.append(det.soft_level)
    won, equation, agree = _count_level_choices(roi_levels, detections, chosen)
    return SoftLevels(roi_levels, won, equation, agree, len(detections), mean_weight=mean)
