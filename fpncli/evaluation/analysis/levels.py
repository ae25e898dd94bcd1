"""Errors by pyramid level: for each TIDE outcome and object size, which FPN level the
detections' proposals came from (the RPN's anchor level) and which level their RoIs were
pooled from (Eq. 1, or AFP's / soft selection's winning level).

Missed objects have no detection; their row gives the level Eq. (1) assigns the object's own
box at the model's input scale: where the box head would have pooled it had a proposal found
it. The per-detection levels come from ``modeling/level_record.py`` while the model runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fpncli.evaluation.analysis.arrays import SIZE_NAMES, Packed, size_index
from fpncli.evaluation.analysis.tide import NOT_KEPT, OUTCOMES, TideResult

ROW_KINDS = (*OUTCOMES, "Miss")


@dataclass
class LevelBreakdown:
    """Attributes:
    levels: the level numbers k of the columns (P_k), finest first.
    rows: ``"<outcome> <size>"`` labels.
    rpn: ``[rows, levels]`` detections per RPN level (Miss rows: zero).
    roi: ``[rows, levels]`` detections per RoI level (Miss rows: the Eq. 1 level of the object).
    """

    levels: list[int]
    rows: list[str]
    rpn: np.ndarray
    roi: np.ndarray

    def to_json(self) -> dict[str, Any]:
        names = [f"p{k}" for k in self.levels]
        return {
            "levels": names,
            "rows": self.rows,
            "rpn_level": {r: dict(zip(names, map(int, v))) for r, v in zip(self.rows, self.rpn)},
            "roi_level": {r: dict(zip(names, map(int, v))) for r, v in zip(self.rows, self.roi)},
        }


def _eq1_levels(area: np.ndarray, scale: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Eq. (1) for boxes of ``area`` (original pixels²) seen at ``scale`` (input / original)."""
    size = np.sqrt(np.maximum(area, 0)) * scale
    with np.errstate(divide="ignore"):
        k = np.floor(4 + np.log2(size / 224) + 1e-6)
    return np.clip(np.nan_to_num(k, neginf=lo), lo, hi).astype(np.int64)


def level_breakdown(
    packed: Packed,
    result: TideResult,
    rpn_level: np.ndarray,
    roi_level: np.ndarray,
    input_scale: np.ndarray,
    roi_range: tuple[int, int],
) -> LevelBreakdown:
    """Count the kept detections per (outcome, size) and level.

    Args:
        rpn_level, roi_level: ``[D]`` per packed detection, the level k (-1: unknown).
        input_scale: ``[I]`` per image, the model input's size over the original's.
        roi_range: the lowest and highest RoI level (Eq. 1's clamp).
    """
    p = packed
    kept = np.flatnonzero((result.dt_outcome != NOT_KEPT) & (rpn_level >= 0) & (roi_level >= 0))
    miss = np.flatnonzero(result.gt_missed)
    miss_level = _eq1_levels(p.gt_area[miss], input_scale[p.gt_img[miss]], *roi_range)
    found = [*rpn_level[kept], *roi_level[kept], *miss_level, *range(roi_range[0], roi_range[1] + 1)]
    levels = sorted({int(k) for k in found})
    col = {k: j for j, k in enumerate(levels)}
    det_size = size_index(p.dt_box[kept, 2] * p.dt_box[kept, 3])
    rows = [f"{kind} {size}" for kind in ROW_KINDS for size in SIZE_NAMES]
    rpn = np.zeros((len(rows), len(levels)), dtype=np.int64)
    roi = np.zeros_like(rpn)
    row = result.dt_outcome[kept] * len(SIZE_NAMES) + det_size
    cols = np.array([col[int(k)] for k in rpn_level[kept]], dtype=np.int64)
    np.add.at(rpn, (row, cols), 1)
    cols = np.array([col[int(k)] for k in roi_level[kept]], dtype=np.int64)
    np.add.at(roi, (row, cols), 1)
    miss_row = len(OUTCOMES) * len(SIZE_NAMES) + size_index(p.gt_area[miss])
    np.add.at(roi, (miss_row, np.array([col[int(k)] for k in miss_level], dtype=np.int64)), 1)
    used = (rpn.sum(axis=1) + roi.sum(axis=1)) > 0
    return LevelBreakdown(levels, [r for r, u in zip(rows, used) if u], rpn[used], roi[used])
