"""`fpn inspect-levels`: what each pyramid level sees in one image, and whether a dataset fits
the pyramid's anchors and levels.

Everything here returns plain data (dataclasses with ``to_json()``); pictures are drawn by
:mod:`fpncli.viz.levels` and tables by the CLI.

One image (:func:`inspect_image`) runs the model's own forward pass once, with forward hooks
on the transform, the neck and (optionally) the bottom-up ResNet to keep their outputs.
RPN proposals per level are recovered from torchvision's ``RegionProposalNetwork
.filter_proposals``: it keeps the top-n proposals of *each level*, then runs ``batched_nms``
with the level as the group, then keeps the best ``post_nms_top_n`` overall. We record the
arguments of the model's own call (an instance attribute wrapping the bound method for the
duration of the forward pass) and afterwards call the same method again on each level's
slice, on a shallow copy of the RPN whose ``post_nms_top_n`` is unlimited: with
``nms_thresh = 1.0`` (NMS removes nothing) that gives the level's candidates before NMS,
with the model's threshold its NMS survivors. Because NMS never compares boxes of
different levels, the survivors of all levels ranked by score and cut at the model's
``post_nms_top_n`` are exactly the model's proposals, so the per-level counts after NMS are
exact (ties in score at the cut aside). No torchvision code is copied.

A dataset (:func:`inspect_dataset`) needs no weights: the configuration's model skeleton is
built on PyTorch's ``meta`` device (no memory, no initialisation) only to read the levels,
strides and anchor sizes it declares, and every ground-truth box gets

* its level by FPN Eqn. (1) (:func:`fpncli.modeling.levels.assign_level`), measured in
  the model's input pixels (after resizing), as the RoI pooler measures it;
* the best IoU any anchor of the model's grid reaches with it (:func:`best_anchor_iou`).

Why the best anchor is found in O(1) per box and anchor shape: an anchor of a given shape
centred at ``(cx, cy)`` overlaps the box by ``ox(cx) * oy(cy)``, where ``ox`` is the overlap
of two intervals, a trapezoid in ``cx`` symmetric about the centre-aligned position and
non-increasing away from it (same for ``oy``). IoU = I / (A_box + A_anchor - I) grows with
I, so the best anchor of that shape is at the grid column nearest the aligned position
times the grid row nearest it: one of the two grid points either side on each axis
(clamped to the grid). ``tests/test_inspect_levels.py`` checks this against the IoU matrix
with every anchor of torchvision's generator on random boxes.
"""

from __future__ import annotations

import copy
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fpncli.config import ModelConfig
from fpncli.errors import FpnError
from fpncli.modeling.levels import CANONICAL_LEVEL, CANONICAL_SIZE, LevelSpec, assign_level

Progress = Callable[[str], None] | None

# The RPN's labelling thresholds (the paper's and torchvision's): IoU >= 0.7 makes an anchor
# positive; below 0.3 it is background. A box whose best anchor reaches 0.3 can still be
# learnt (torchvision also keeps each box's best anchor as a low-quality positive), one
# whose best anchor stays below 0.3 can hardly be proposed.
POSITIVE_IOU = 0.7
USABLE_IOU = 0.3
# COCO's size buckets, on the annotation's area in original image pixels.
SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))
# A verdict line is written when a cause leaves at least this share of boxes without a
# usable anchor.
VERDICT_SHARE = 0.05


def _say(progress: Progress, message: str) -> None:
    if progress is not None:
        progress(message)


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size torchvision's ``GeneralizedRCNNTransform`` resizes an image to (eval mode).

    Shorter side to ``min_size`` unless the longer would exceed ``max_size``; the result is
    ``floor(side * scale)``, what ``F.interpolate(scale_factor=..., recompute_scale_factor=True)``
    produces (checked against the transform in the tests).
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)


def padded_size(height: int, width: int, divisible: int) -> tuple[int, int]:
    """Batch size after the transform pads to a multiple of ``divisible`` (32)."""
    return (int(math.ceil(height / divisible) * divisible), int(math.ceil(width / divisible) * divisible))


def level_boundaries(min_level: int, max_level: int) -> list[tuple[str, float]]:
    """Box sizes ``sqrt(w*h)`` (input pixels) where Eqn. (1) moves a box up one level:
    ``[("p3", 112.0), ...]`` means boxes of 112 px and more (up to the next) go to P3.

    These are the sizes where ``k0 + log2(size / 224)`` crosses an integer; the tests check
    that :func:`assign_level` changes level exactly there.
    """
    return [
        (f"p{k}", CANONICAL_SIZE * 2.0 ** (k - CANONICAL_LEVEL)) for k in range(min_level + 1, max_level + 1)
    ]


def _level_range(levels: OrderedDict[str, LevelSpec], names: list[str]) -> tuple[int, int]:
    ks = [levels[n].level for n in names]
    return min(ks), max(ks)


def _level_name(levels: OrderedDict[str, LevelSpec], names: list[str], k: int) -> str:
    for name in names:
        if levels[name].level == k:
            return name
    return f"p{k}"


# --------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------


@dataclass
class LevelRow:
    """One pyramid level of one inspected image.

    ``size`` is the feature map ``(h, w)`` as the model computed it (padded input / stride,
    rounded up); ``anchors = h * w * len(anchor_sizes) * len(aspect_ratios)``. RPN and
    detection counts are None for levels that head does not use.
    """

    name: str
    stride: int
    size: tuple[int, int]
    channels: int
    anchor_sizes: list[int]
    aspect_ratios: list[float]
    anchors: int
    proposals_pre_nms: int | None
    proposals_post_nms: int | None
    detections: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stride": self.stride,
            "size": list(self.size),
            "channels": self.channels,
            # One size per level in the paper; a single-level neck carries several.
            "anchor_size": self.anchor_sizes[0] if len(self.anchor_sizes) == 1 else None,
            "anchor_sizes": list(self.anchor_sizes),
            "aspect_ratios": list(self.aspect_ratios),
            "anchors": self.anchors,
            "proposals_pre_nms": self.proposals_pre_nms,
            "proposals_post_nms": self.proposals_post_nms,
            "detections": self.detections,
        }


@dataclass
class Detection:
    """A final detection: ``box`` xyxy in original image pixels; ``level`` by Eqn. (1) on the
    box measured in the model's input pixels (as the RoI pooler measures boxes)."""

    box: list[float]
    score: float
    label: int
    name: str
    level: str

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 4),
            "label": self.label,
            "class": self.name,
            "level": self.level,
        }


@dataclass
class ImageInspection:
    """What :func:`inspect_image` found.

    Attributes:
        image: the upright RGB image, ``uint8[H, W, 3]``.
        image_size, input_size, padded_size: ``(h, w)`` of the image, after the model's
            resizing, and after padding to a multiple of 32.
        strength: per level, mean absolute activation over channels, ``float32[h_l, w_l]``,
            cropped to the cells that cover the resized image (padding cells removed).
        bottom_up: the same for ``c2..c5`` (only with ``bottom_up=True``).
    """

    image_path: Path
    image: np.ndarray
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    levels: list[LevelRow]
    detections: list[Detection]
    strength: OrderedDict[str, np.ndarray]
    strides: dict[str, int]
    bottom_up: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    bottom_up_strides: dict[str, int] = field(default_factory=dict)
    score_thr: float = 0.0
    weights: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.image_path),
            "image_size": list(self.image_size),
            "input_size": list(self.input_size),
            "padded_size": list(self.padded_size),
            "score_thr": self.score_thr,
            "weights": self.weights,
            "levels": [row.to_json() for row in self.levels],
            "detections": [d.to_json() for d in self.detections],
        }


@contextmanager
def _record_filter_proposals(rpn: torch.nn.Module) -> Iterator[list[tuple]]:
    """While active, every ``rpn.filter_proposals(...)`` call runs unchanged and its
    arguments and results are appended to the yielded list."""
    calls: list[tuple] = []
    original = rpn.filter_proposals

    def recording(proposals, objectness, image_shapes, num_anchors_per_level):
        boxes, scores = original(proposals, objectness, image_shapes, num_anchors_per_level)
        calls.append((proposals, objectness, image_shapes, list(num_anchors_per_level), boxes, scores))
        return boxes, scores

    rpn.filter_proposals = recording  # instance attribute shadows the method
    try:
        yield calls
    finally:
        del rpn.filter_proposals


def proposals_per_level(
    rpn: torch.nn.Module,
    proposals: Tensor,
    objectness: Tensor,
    image_shapes: list[tuple[int, int]],
    num_anchors_per_level: list[int],
    kept: int,
) -> tuple[list[int], list[int]]:
    """Per RPN level, how many proposals of image 0 enter NMS and how many the RPN finally keeps.

    Args:
        rpn: the model's ``RegionProposalNetwork``; its own ``filter_proposals`` is called
            on each level's slice (see the module docstring).
        proposals: ``Tensor[B, A, 4]`` decoded boxes for all anchors, levels concatenated.
        objectness: ``Tensor[B * A, 1]`` logits, same order.
        num_anchors_per_level: ``A_l`` per level (they sum to ``A``).
        kept: how many proposals the model's call returned for image 0.

    Returns:
        ``(pre_nms, post_nms)``, one count per level; ``sum(post_nms) == kept``.
    """
    num_images = proposals.shape[0]
    obj = objectness.reshape(num_images, -1)
    unlimited = {"training": proposals.shape[1], "testing": proposals.shape[1]}
    everything = copy.copy(rpn)  # shallow: shares the modules, own thresholds
    everything._post_nms_top_n = unlimited
    everything.nms_thresh = 1.0  # IoU never exceeds 1: NMS removes nothing
    survivors = copy.copy(rpn)
    survivors._post_nms_top_n = unlimited
    pre: list[int] = []
    scores: list[Tensor] = []
    start = 0
    for n in num_anchors_per_level:
        part = (proposals[:, start : start + n], obj[:, start : start + n], image_shapes, [n])
        pre.append(int(everything.filter_proposals(*part)[0][0].shape[0]))
        scores.append(survivors.filter_proposals(*part)[1][0])
        start += n
    level_of = torch.cat([torch.full((len(s),), i, dtype=torch.int64) for i, s in enumerate(scores)])
    order = torch.sort(torch.cat(scores).cpu(), descending=True, stable=True).indices[:kept]
    post = torch.bincount(level_of[order], minlength=len(scores)).tolist()
    return pre, post


def _strength(fmap: Tensor, stride: int, input_size: tuple[int, int]) -> np.ndarray:
    """``Tensor[1, C, h, w]`` -> mean |activation| over channels on the cells covering the image."""
    rows = min(fmap.shape[-2], math.ceil(input_size[0] / stride))
    cols = min(fmap.shape[-1], math.ceil(input_size[1] / stride))
    return fmap[0, :, :rows, :cols].abs().mean(dim=0).float().cpu().numpy()


def check_image_size(path: Path, image_size: tuple[int, int], model: torch.nn.Module) -> tuple[int, int]:
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
    rh, rw = resized_size(h, w, model.transform.min_size[-1], model.transform.max_size)
    if min(rh, rw) < coarsest.stride:
        raise FpnError(
            f"{path}: image too small for the pyramid: {w}x{h} px is resized to {rw}x{rh} "
            f"(--min-size {cfg.min_size}, --max-size {cfg.max_size}), but the coarsest level "
            f"{coarsest.name} has stride {coarsest.stride}; the resized shorter side must be at "
            f"least {coarsest.stride} px (raise --max-size for elongated images, or --min-size)"
        )
    return rh, rw


def inspect_image(
    model: torch.nn.Module,
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    score_thr: float = 0.5,
    bottom_up: bool = False,
    weights: str = "",
    progress: Progress = None,
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
    captured: dict[str, Any] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output

        return hook

    hooks = [
        model.transform.register_forward_hook(keep("transform")),
        model.backbone.register_forward_hook(keep("features")),
    ]
    if bottom_up:
        hooks.append(model.backbone.bottom_up.register_forward_hook(keep("bottom_up")))
    _say(progress, f"running the model on {path.name}")
    try:
        with torch.inference_mode(), _record_filter_proposals(model.rpn) as calls:
            output = model([tensor.to(device).float().div_(255)])[0]
    finally:
        for hook in hooks:
            hook.remove()

    image_list = captured["transform"][0]
    input_size = tuple(int(v) for v in image_list.image_sizes[0])
    padded = (int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1]))
    features: OrderedDict[str, Tensor] = captured["features"]
    levels: OrderedDict[str, LevelSpec] = model.levels
    rpn_levels, roi_levels = model.rpn_levels, model.roi_levels

    _say(progress, "counting proposals per level")
    props, objectness, image_shapes, per_level, kept_boxes, _ = calls[-1]
    with torch.inference_mode():
        pre, post = proposals_per_level(
            model.rpn, props, objectness, image_shapes, per_level, int(kept_boxes[0].shape[0])
        )
    if len(per_level) != len(rpn_levels):
        raise RuntimeError(f"the RPN saw {len(per_level)} maps but the model declares {rpn_levels}")
    rpn_counts = {name: (pre[i], post[i]) for i, name in enumerate(rpn_levels)}

    # Detections: keep those above the threshold, level by Eqn. (1) in input pixels.
    keep_mask = output["scores"] >= score_thr
    boxes = output["boxes"][keep_mask].float().cpu()
    scores = output["scores"][keep_mask].float().cpu()
    labels = output["labels"][keep_mask].cpu()
    ratio = torch.tensor([input_size[1] / image_size[1], input_size[0] / image_size[0]] * 2)
    lo, hi = _level_range(levels, roi_levels)
    det_levels = assign_level(boxes * ratio, lo, hi).tolist()
    names = list(model.config.class_names)
    detections = [
        Detection(
            [float(v) for v in box],
            float(score),
            int(label),
            names[int(label) - 1] if 0 < int(label) <= len(names) else str(int(label)),
            _level_name(levels, roi_levels, k),
        )
        for box, score, label, k in zip(boxes.tolist(), scores.tolist(), labels.tolist(), det_levels)
    ]
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
        for name, spec in model.backbone.bottom_up.output_specs.items():
            if name in captured["bottom_up"]:
                bottom_maps[name] = _strength(captured["bottom_up"][name], spec.stride, input_size)
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
    )


# --------------------------------------------------------------------------------------
# A dataset
# --------------------------------------------------------------------------------------


@dataclass
class AnchorShape:
    """One base anchor of one RPN level: offsets from its centre (xyxy, input pixels), as
    torchvision's ``AnchorGenerator.generate_anchors`` rounds them."""

    level: str
    stride: int
    size: int
    ratio: float
    offsets: tuple[float, float, float, float]


@dataclass
class AnchorLayout:
    """The anchors and levels a configuration implies, without weights."""

    config: ModelConfig
    levels: OrderedDict[str, LevelSpec]
    rpn_levels: list[str]
    roi_levels: list[str]
    anchor_sizes: dict[str, list[int]]
    shapes: list[AnchorShape]
    size_divisible: int


def anchor_layout(cfg: ModelConfig) -> AnchorLayout:
    """Levels, strides and anchor shapes of the model ``cfg`` describes.

    The model is built on the ``meta`` device (no memory, no weights, ~0.2 s for R50-FPN)
    so that the neck's declared levels and the detector's per-level anchor sizes are read
    from the model code itself, whatever the neck.
    """
    from fpncli.modeling.detector import build_model

    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except ValueError as exc:  # e.g. 2 anchor sizes for 5 RPN levels
        raise FpnError(f"bad model configuration: {exc}") from None
    levels = model.levels
    sizes = {name: [int(s) for s in group] for name, group in zip(model.rpn_levels, model.anchor_sizes())}
    generator = model.rpn.anchor_generator
    shapes = []
    for name in model.rpn_levels:
        # generate_anchors orders anchors ratio-major (all sizes of ratio 0, then ratio 1, ...).
        base = generator.generate_anchors(sizes[name], list(cfg.aspect_ratios), device=torch.device("cpu"))
        combos = [(ratio, size) for ratio in cfg.aspect_ratios for size in sizes[name]]
        for (ratio, size), row in zip(combos, base.tolist()):
            shapes.append(AnchorShape(name, levels[name].stride, size, float(ratio), tuple(row)))
    return AnchorLayout(
        model.config,
        levels,
        model.rpn_levels,
        model.roi_levels,
        sizes,
        shapes,
        int(model.transform.size_divisible),
    )


def best_anchor_iou(
    boxes: np.ndarray, padded: np.ndarray, layout: AnchorLayout
) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU of each box with any anchor of the model's grid.

    Args:
        boxes: ``float[N, 4]`` xyxy in the model's input pixels (after resizing), positive area.
        padded: ``int[N, 2]`` the padded input ``(h, w)`` of each box's image: level ``l``
            has ``ceil(h / stride) x ceil(w / stride)`` cells and anchors centred at
            ``(col * stride, row * stride)``, as torchvision places them. (The image padded
            alone, as at inference; a training batch pads to its largest image, which only
            adds anchors beyond this image's right and bottom edges.)
        layout: from :func:`anchor_layout`.

    Returns:
        ``(iou float[N], shape_index int[N])``: the best IoU and which of ``layout.shapes``
        reached it. O(N * shapes) time and memory (see the module docstring).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    padded = np.asarray(padded, dtype=np.int64).reshape(-1, 2)
    n = len(boxes)
    best = np.zeros(n)
    which = np.zeros(n, dtype=np.int64)
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for index, shape in enumerate(layout.shapes):
        ax1, ay1, ax2, ay2 = shape.offsets
        s = shape.stride
        overlap = []
        for axis, (a1, a2) in enumerate(((ax1, ax2), (ay1, ay2))):
            b1, b2 = boxes[:, axis], boxes[:, axis + 2]
            cells = np.ceil(padded[:, 1 - axis] / s)  # padded is (h, w): x uses w
            aligned = (b1 + b2) / 2 - (a1 + a2) / 2  # centre where the anchor lines up with the box
            lower = np.clip(np.floor(aligned / s), 0, cells - 1) * s
            upper = np.clip(np.floor(aligned / s) + 1, 0, cells - 1) * s
            o_lower = np.clip(np.minimum(b2, lower + a2) - np.maximum(b1, lower + a1), 0, None)
            o_upper = np.clip(np.minimum(b2, upper + a2) - np.maximum(b1, upper + a1), 0, None)
            overlap.append(np.maximum(o_lower, o_upper))
        inter = overlap[0] * overlap[1]
        iou = inter / (box_area + (ax2 - ax1) * (ay2 - ay1) - inter)
        better = iou > best
        best[better] = iou[better]
        which[better] = index
    return best, which


@dataclass
class Coverage:
    """How many boxes of a group have a positive (IoU >= 0.7) or usable (>= 0.3) anchor."""

    name: str
    boxes: int
    positive: int
    usable: int

    def to_json(self) -> dict[str, Any]:
        share = (lambda k: round(k / self.boxes, 4)) if self.boxes else (lambda k: None)
        return {
            "name": self.name,
            "boxes": self.boxes,
            "positive": self.positive,
            "usable": self.usable,
            "none": self.boxes - self.usable,
            "share_positive": share(self.positive),
            "share_usable": share(self.usable),
            "share_none": share(self.boxes - self.usable),
        }


def _coverage(name: str, best: np.ndarray) -> Coverage:
    return Coverage(name, int(best.size), int((best >= POSITIVE_IOU).sum()), int((best >= USABLE_IOU).sum()))


@dataclass
class DatasetReport:
    """What :func:`inspect_dataset` found. Per-box arrays (one entry per analysed box):

    Attributes:
        box_size: ``sqrt(w * h)`` in the model's input pixels.
        area: the COCO area (``area`` field, else ``w * h``) in original pixels.
        best_iou: best IoU with any anchor.
        level: the level name Eqn. (1) assigns.
        anchor_level: the level of the best anchor.
        levels, buckets, overall: coverage summaries; ``skipped``: boxes not analysed, by reason.
        verdict: plain-language lines; ``fits`` is False when any names a setting to change.
    """

    annotations: Path
    images: int
    layout: AnchorLayout
    box_size: np.ndarray
    area: np.ndarray
    best_iou: np.ndarray
    level: np.ndarray
    anchor_level: np.ndarray
    levels: list[dict[str, Any]]
    buckets: list[Coverage]
    overall: Coverage
    skipped: dict[str, int]
    skipped_examples: dict[str, list[str]]
    verdict: list[str]
    fits: bool

    def to_json(self) -> dict[str, Any]:
        cfg = self.layout.config
        return {
            "annotations": str(self.annotations),
            "images": self.images,
            "boxes": int(self.best_iou.size),
            "config": {
                "min_size": cfg.min_size,
                "max_size": cfg.max_size,
                "neck": cfg.neck,
                "anchor_sizes": self.layout.anchor_sizes,
                "aspect_ratios": list(cfg.aspect_ratios),
            },
            "thresholds": {"positive": POSITIVE_IOU, "usable": USABLE_IOU},
            "overall": self.overall.to_json(),
            "levels": self.levels,
            "buckets": [b.to_json() for b in self.buckets],
            "skipped": self.skipped,
            "skipped_examples": self.skipped_examples,
            "fits": self.fits,
            "verdict": self.verdict,
        }


def inspect_dataset(
    annotations: str | os.PathLike, cfg: ModelConfig, progress: Progress = None
) -> DatasetReport:
    """Check every ground-truth box of a COCO annotation file against the pyramid of ``cfg``.

    Crowd regions (``iscrowd``) are left out, as COCO evaluation ignores them; boxes with
    zero width or height, and boxes of images without ``width``/``height``, are counted in
    ``skipped`` (with a few annotation ids) instead of analysed.

    Raises:
        FpnError: unreadable or empty annotation file, or no box left to analyse.
    """
    from fpncli.data.coco import load_coco

    path = Path(annotations)
    if path.is_file() and path.stat().st_size == 0:
        raise FpnError(f"{path}: empty file (0 bytes), expected COCO annotations")
    _say(progress, f"reading {path}")
    coco = load_coco(path)
    layout = anchor_layout(cfg)
    skipped = {"zero_area": 0, "crowd": 0, "unknown_image_size": 0, "invalid": len(coco.problems)}
    examples: dict[str, list[str]] = {key: [] for key in skipped}
    examples["invalid"] = coco.problems[:5]
    rows: list[tuple[float, float, float, float, float, int, int]] = []
    for image_id, anns in coco.annotations.items():
        record = coco.images[image_id]
        width, height = record.get("width"), record.get("height")
        known = (
            isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0
        )
        for ann in anns:
            reason = None
            x, y, w, h = (float(v) for v in ann["bbox"])
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                reason = "invalid"
            elif ann.get("iscrowd"):
                reason = "crowd"
            elif w <= 0 or h <= 0:
                reason = "zero_area"
            elif not known:
                reason = "unknown_image_size"
            if reason is not None:
                skipped[reason] += 1
                if len(examples[reason]) < 5:
                    what = "non-finite bbox" if reason == "invalid" else reason.replace("_", " ")
                    examples[reason].append(f"annotation {ann.get('id', '?')} (image {image_id}): {what}")
                continue
            area = ann.get("area")
            area = float(area) if isinstance(area, (int, float)) and area > 0 else w * h
            rows.append((x, y, x + w, y + h, area, int(height), int(width)))
    total = sum(len(a) for a in coco.annotations.values()) + len(coco.problems)
    if not rows:
        detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items() if v)
        raise FpnError(
            f"{path}: no boxes to inspect ({len(coco.images)} images, {total} annotations"
            + (f": {detail}" if detail else "")
            + ")"
        )
    _say(progress, f"matching {len(rows):,} boxes against the anchors")
    data = np.asarray(rows, dtype=np.float64)
    boxes, area = data[:, :4], data[:, 4]
    img_hw = data[:, 5:7].astype(np.int64)
    # Resize per distinct image size (few in practice), exactly as the transform does.
    sizes = {}
    for h, w in {(int(a), int(b)) for a, b in img_hw}:
        rh, rw = resized_size(h, w, cfg.min_size, cfg.max_size)
        sizes[(h, w)] = (rh, rw, *padded_size(rh, rw, layout.size_divisible))
    resized = np.asarray([sizes[(int(h), int(w))] for h, w in img_hw], dtype=np.float64)
    # torchvision's resize_boxes scales x by new_w / w and y by new_h / h.
    scale = np.stack([resized[:, 1] / img_hw[:, 1], resized[:, 0] / img_hw[:, 0]], axis=1)
    boxes_in = boxes * np.tile(scale, 2)
    best, which = best_anchor_iou(boxes_in, resized[:, 2:4], layout)
    lo, hi = _level_range(layout.levels, layout.roi_levels)
    ks = assign_level(torch.from_numpy(boxes_in), lo, hi).numpy()
    level_names = np.asarray(
        [_level_name(layout.levels, layout.roi_levels, int(k)) for k in range(lo, hi + 1)]
    )
    level = level_names[ks - lo]
    anchor_level = np.asarray([layout.shapes[i].level for i in range(len(layout.shapes))])[which]
    box_size = np.sqrt((boxes_in[:, 2] - boxes_in[:, 0]) * (boxes_in[:, 3] - boxes_in[:, 1]))

    level_rows = []
    for name, spec in layout.levels.items():
        cov = _coverage(name, best[level == name]).to_json()
        cov.update(
            {
                "stride": spec.stride,
                "anchor_sizes": layout.anchor_sizes.get(name, []),
                "best_anchor_boxes": int((anchor_level == name).sum()),
                "assigned_by_equation": name in layout.roi_levels,
            }
        )
        level_rows.append(cov)
    buckets = []
    for name, low, high in SIZE_BUCKETS:
        buckets.append(_coverage(name, best[(area >= low) & (area < high)]))
    overall = _coverage("all", best)
    verdict, fits = _verdict(layout, box_size, boxes_in, best, overall, skipped)
    return DatasetReport(
        path,
        len(coco.images),
        layout,
        box_size,
        area,
        best,
        level,
        anchor_level,
        level_rows,
        buckets,
        overall,
        skipped,
        {k: v for k, v in examples.items() if v},
        verdict,
        fits,
    )


def _pct(share: float) -> str:
    return f"{100 * share:.0f} %" if share >= 0.01 or share == 0 else f"{100 * share:.1f} %"


def _sizes_arg(sizes: list[int]) -> str:
    return ",".join(str(s) for s in sizes)


def _verdict(
    layout: AnchorLayout,
    box_size: np.ndarray,
    boxes: np.ndarray,
    best: np.ndarray,
    overall: Coverage,
    skipped: dict[str, int],
) -> tuple[list[str], bool]:
    """Plain-language lines; each problem names the setting that would change it."""
    cfg = layout.config
    n = best.size
    all_sizes = sorted({s for group in layout.anchor_sizes.values() for s in group})
    smallest, largest = all_sizes[0], all_sizes[-1]
    ratios = sorted(float(r) for r in cfg.aspect_ratios)
    flat = [s for name in layout.rpn_levels for s in layout.anchor_sizes[name]]
    unusable = best < USABLE_IOU
    too_small = unusable & (box_size < smallest)
    too_large = unusable & (box_size > largest)
    # height / width, the convention of torchvision's aspect ratios
    box_ratio = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])
    elongated = (
        unusable & ~too_small & ~too_large & ((box_ratio < ratios[0] / 2) | (box_ratio > ratios[-1] * 2))
    )
    lines: list[str] = []
    fits = True
    # Anchors closer together than ~4x their stride's worth of size rarely line up with a box
    # well enough for IoU >= 0.7 (the paper's are 8x: 32 px every 4 px on P2).
    strides = {name: layout.levels[name].stride for name in layout.rpn_levels}
    halved = [max(1, s // 2) for s in flat]
    halved_ok = len(layout.rpn_levels) > 1 and all(
        s >= 4 * strides[name] for name, s in zip(layout.rpn_levels, halved)
    )
    share = too_small.sum() / n
    if share >= VERDICT_SHARE:
        fits = False
        median = float(np.median(box_size[too_small]))
        fix = f"Use larger input images (--min-size {cfg.min_size * 2} --max-size {cfg.max_size * 2})"
        if halved_ok:
            fix += f" or smaller anchors (--anchor-sizes {_sizes_arg(halved)})"
        lines.append(
            f"{_pct(share)} of boxes are smaller than the smallest anchor can match (best IoU < "
            f"{USABLE_IOU} with every anchor; median {median:.0f} px after resizing, smallest anchor "
            f"{smallest} px). {fix}."
        )
    share = too_large.sum() / n
    if share >= VERDICT_SHARE:
        fits = False
        lines.append(
            f"{_pct(share)} of boxes are larger than the largest anchor can match (largest anchor "
            f"{largest} px). Use larger anchors (--anchor-sizes {_sizes_arg([s * 2 for s in flat])}) "
            f"or smaller input images (--min-size {max(1, cfg.min_size // 2)} --max-size {max(1, cfg.max_size // 2)})."
        )
    share = elongated.sum() / n
    if share >= VERDICT_SHARE:
        fits = False
        wider = sorted({*ratios, ratios[0] / 4, ratios[-1] * 4})
        lines.append(
            f"{_pct(share)} of boxes are more elongated than any anchor (aspect ratios h/w "
            f"{', '.join(f'{r:g}' for r in ratios)}). Add ratios (--aspect-ratios {','.join(f'{r:g}' for r in wider)})."
        )
    rest = unusable.sum() / n - (too_small.sum() + too_large.sum() + elongated.sum()) / n
    if rest >= VERDICT_SHARE:
        fits = False
        lines.append(
            f"{_pct(rest)} of boxes have no usable anchor although their size and shape are "
            f"within the anchors' range; a denser set of anchor sizes would help (--anchor-sizes)."
        )
    usable = overall.usable / n
    positive = overall.positive / n
    if positive < 0.2:
        fits = False
        density = min(s / strides[name] for name in layout.rpn_levels for s in layout.anchor_sizes[name])
        if density < 4:
            lines.append(
                f"Only {_pct(positive)} of boxes have a positive anchor (IoU >= {POSITIVE_IOU}): some "
                f"anchors are only {density:g}x their level's stride, too sparse to line up with boxes. "
                f"Keep each anchor size at least 4x its stride (--anchor-sizes) and enlarge the images "
                f"instead (--min-size)."
            )
        else:
            lines.append(
                f"Only {_pct(positive)} of boxes have a positive anchor (IoU >= {POSITIVE_IOU}); the "
                f"RPN then learns them from their best (low-quality) matches. Larger input images "
                f"(--min-size) make small boxes easier to match."
            )
    if fits:
        lines.insert(
            0,
            f"The pyramid fits this dataset: {_pct(usable)} of boxes have a usable anchor "
            f"(IoU >= {USABLE_IOU}) and {_pct(positive)} a positive one (IoU >= {POSITIVE_IOU}).",
        )
    else:
        lines.insert(
            0,
            f"The pyramid does not fit this dataset well: {_pct(1 - usable)} of boxes have no "
            f"usable anchor (IoU >= {USABLE_IOU}); {_pct(positive)} have a positive one "
            f"(IoU >= {POSITIVE_IOU}).",
        )
    if skipped.get("zero_area"):
        lines.append(
            f"{skipped['zero_area']} boxes have zero width or height and were left out; "
            f"fix or remove them in the annotation file."
        )
    return lines, fits
