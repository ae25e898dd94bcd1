"""The reports ``fpn inspect-levels`` draws and prints, as plain data: one image's levels and
detections (:class:`ImageInspection`), a dataset's fit to the anchors (:class:`AnchorFitReport`),
each with its ``to_json()``, and the thresholds the pictures mark.

They live here, below both :mod:`fpncli.analysis` (which fills them) and :mod:`fpncli.viz.levels`
(which draws them), so that pictures never import the analysis code.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.config import ModelConfig
    from fpncli.modeling.levels import LevelSpec

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
    # Adaptive feature pooling models only: the level that won most fc6 units of the max
    # fusion, and each RoI level's share of the units (finest first).
    afp_level: str | None = None
    afp_shares: list[float] | None = None
    # Soft RoI selection models only: each RoI level's attention weight (sigmoid, averaged
    # over the pooled grid; independent per level, not shares) and the level weighted most.
    soft_level: str | None = None
    soft_weights: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 4),
            "label": self.label,
            "class": self.name,
            "level": self.level,
        }
        if self.afp_level is not None:
            out["afp_level"] = self.afp_level
            out["afp_shares"] = [round(v, 4) for v in self.afp_shares or []]
        if self.soft_level is not None:
            out["soft_level"] = self.soft_level
            out["soft_weights"] = [round(v, 4) for v in self.soft_weights or []]
        return out


# COCO's size buckets (area in original-image pixels): small < 32^2 <= medium < 96^2 <= large.
SIZE_BUCKETS = (("small", 32**2), ("medium", 96**2), ("large", float("inf")))


def size_bucket(box: list[float]) -> str:
    """COCO size bucket of an xyxy box in original-image pixels."""
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    return next(name for name, limit in SIZE_BUCKETS if area < limit)


@dataclass
class AFPLevels:
    """For an adaptive-feature-pooling model: which RoI level won the max fusion for the
    image's detections, next to the level Eqn. (1) would have chosen, per object size.

    ``won[level][size]`` and ``equation[level][size]`` count detections; ``agree`` is how
    many detections the two put on the same level.
    """

    levels: list[str]
    won: dict[str, dict[str, int]]
    equation: dict[str, dict[str, int]]
    agree: int
    total: int

    def to_json(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "sizes": [name for name, _ in SIZE_BUCKETS],
            "won": self.won,
            "equation": self.equation,
            "agree": self.agree,
            "detections": self.total,
        }


@dataclass
class SoftLevels(AFPLevels):
    """For a soft-RoI-selection model (AugFPN): the level each detection's attention weighted
    most (``won``), next to Eqn. (1)'s level, per object size; ``mean_weight[level]`` is the
    level's weight averaged over the detections (None without detections)."""

    mean_weight: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["mean_weight"] = {k: None if v is None else round(v, 4) for k, v in self.mean_weight.items()}
        return out


@dataclass
class RFPView:
    """For a Recursive Feature Pyramid model: the pyramid of every step and the gates.

    Attributes:
        levels: level names, finest first.
        passes: per bottom-up + FPN pass (0: the first, plain FPN; k: the k-th recursive
            one), per level, mean |activation| over channels, ``float32[h, w]`` on the image's cells.
        gates: per recursive step, per level, the gate ``g`` (the share of that step's pass
            in the fused map: ``out = g * pass_k + (1 - g) * previous``), ``float32[h, w]``.
        output: the fused pyramid the heads see, as ``passes``.
        change: per level, ``mean |output - pass 0| / mean |pass 0|`` over the image's cells:
            how far the recursion moved the pyramid from the FPN's.
    """

    levels: list[str]
    passes: list[OrderedDict[str, np.ndarray]]
    gates: list[OrderedDict[str, np.ndarray]]
    output: OrderedDict[str, np.ndarray]
    change: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        def stats(a: np.ndarray) -> dict[str, float]:
            return {
                "mean": round(float(a.mean()), 4),
                "min": round(float(a.min()), 4),
                "max": round(float(a.max()), 4),
            }

        return {
            "steps": len(self.passes),
            "levels": list(self.levels),
            "mean_abs_activation": [
                {name: round(float(m.mean()), 4) for name, m in p.items()} for p in self.passes
            ],
            "output_mean_abs_activation": {
                name: round(float(m.mean()), 4) for name, m in self.output.items()
            },
            "gate": [{name: stats(g) for name, g in step.items()} for step in self.gates],
            "change_from_first_pass": {name: round(v, 4) for name, v in self.change.items()},
        }


@dataclass
class ImageInspection:
    """What :func:`fpncli.analysis.inspect_image.inspect_image` found.

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
    afp: AFPLevels | None = None
    soft: SoftLevels | None = None
    rfp: RFPView | None = None

    def to_json(self) -> dict[str, Any]:
        out = self._to_json()
        if self.afp is not None:
            out["afp"] = self.afp.to_json()
        if self.soft is not None:
            out["soft"] = self.soft.to_json()
        if self.rfp is not None:
            out["rfp"] = self.rfp.to_json()
        return out

    def _to_json(self) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------
# A dataset
# --------------------------------------------------------------------------------------

# The RPN's labelling thresholds (the paper's and torchvision's): IoU >= 0.7 makes an anchor
# positive; below 0.3 it is background. A box whose best anchor reaches 0.3 can still be
# learnt (torchvision also keeps each box's best anchor as a low-quality positive), one
# whose best anchor stays below 0.3 can hardly be proposed.
POSITIVE_IOU = 0.7
USABLE_IOU = 0.3


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


@dataclass
class AnchorFitReport:
    """What :func:`fpncli.analysis.anchor_fit.inspect_dataset` found. Per-box arrays (one
    entry per analysed box):

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
