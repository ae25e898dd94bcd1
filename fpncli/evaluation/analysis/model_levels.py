"""The glue between a model run and :mod:`.levels`: switch level recording on, attach each
detection's levels to its COCO result while the model runs, and collect them afterwards."""

from __future__ import annotations

from typing import Any

import numpy as np

from fpncli.evaluation.analysis.report import ModelLevels

_KEY = "_levels"  # a private key on the COCO result dicts, removed before anything is written


def level_recorder(model: Any) -> Any:
    """The FPNFasterRCNN that can record levels (also inside a slicing/TTA wrapper), or None
    (an exported model runs as one graph and cannot)."""
    inner = getattr(model, "model", model)
    return inner if hasattr(inner, "roi_levels") and hasattr(inner, "rpn") else None


def attach_levels(result: Any, dets: list[dict[str, Any]], num_labels: int) -> None:
    """Put ``(rpn_level, roi_level)`` of each detection of ``result`` (an ``ImageResult``) on
    its COCO result in ``dets`` (``detections_to_coco`` keeps the order, dropping labels
    outside 1..num_labels)."""
    if "rpn_level" not in result.extra:
        return
    valid = [1 <= int(k) <= num_labels for k in result.labels.tolist()]
    pairs = zip(result.extra["rpn_level"].tolist(), result.extra["roi_level"].tolist())
    for d, lv in zip(dets, (lv for lv, ok in zip(pairs, valid) if ok)):
        d[_KEY] = lv


def collect_levels(model: Any, detections: list[dict[str, Any]]) -> ModelLevels:
    """Take the attached levels off ``detections`` (-1 where none) with the model's input
    sizes and RoI level range."""
    lv = np.asarray([d.pop(_KEY, (-1, -1)) for d in detections], dtype=np.int64).reshape(-1, 2)
    inner = level_recorder(model)
    if inner is None:
        return ModelLevels(lv[:, 0], lv[:, 1], 0, 0, (2, 5))
    ks = [inner.levels[n].level for n in inner.roi_levels]
    return ModelLevels(lv[:, 0], lv[:, 1], inner.min_size, inner.max_size, (min(ks), max(ks)))
