"""A confusion matrix with a background row and column.

Rows are the ground-truth class, columns the predicted class; the last row and column are
background. Detections scored below ``score_thr`` are left out. A detection and a ground
truth pair up when their IoU is >= ``iou_thr``, whatever their classes, one to one, the
highest IoU first (Ultralytics' and supervision's rule): a paired detection counts in
(its object's class, its class); an unpaired one in (background, its class) - a false
positive - unless it lies in a crowd region; an unpaired object in (its class, background) -
missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fpncli.evaluation.analysis.arrays import Packed, box_iou, pairs


@dataclass
class Confusion:
    """Attributes:
    matrix: ``[K + 1, K + 1]`` counts; ``[i, j]``: objects of class i detected as class j;
        index K is background.
    cat_ids, names: the K classes, in the annotation file's order.
    score_thr, iou_thr: the settings.
    """

    matrix: np.ndarray
    cat_ids: list[int]
    names: list[str]
    score_thr: float
    iou_thr: float

    def normalised(self) -> np.ndarray:
        """Each row divided by its sum (the share of a class's objects per prediction; the
        background row: the share of false positives per predicted class)."""
        sums = self.matrix.sum(axis=1, keepdims=True)
        return np.divide(self.matrix, sums, out=np.zeros(self.matrix.shape), where=sums > 0)

    def top_confusions(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` largest off-diagonal cells between two classes, largest first."""
        m = self.matrix[:-1, :-1].astype(np.float64).copy()
        np.fill_diagonal(m, 0)
        flat = np.argsort(-m, axis=None, kind="stable")[:k]
        norm = self.normalised()
        out = []
        for i, j in zip(*np.unravel_index(flat, m.shape)):
            if m[i, j] <= 0:
                break
            out.append(
                {
                    "true": self.names[i],
                    "predicted": self.names[j],
                    "count": int(m[i, j]),
                    "share_of_true": round(float(norm[i, j]), 4),
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "score_thr": self.score_thr,
            "iou_thr": self.iou_thr,
            "labels": [*self.names, "background"],
            "category_ids": [*self.cat_ids, None],
            "matrix": self.matrix.tolist(),
            "normalised": np.round(self.normalised(), 4).tolist(),
            "top_confusions": self.top_confusions(),
            "false_positives": int(self.matrix[-1, :-1].sum()),
            "missed": int(self.matrix[:-1, -1].sum()),
        }


def class_index(cat_ids: list[int], values: np.ndarray) -> np.ndarray:
    """The position of each category id of ``values`` in ``cat_ids`` (all must be there)."""
    ids = np.asarray(cat_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids[order], values)] if len(values) else np.zeros(0, dtype=np.int64)


def confusion_matrix(
    packed: Packed, cat_ids: list[int], names: list[str], score_thr: float = 0.3, iou_thr: float = 0.5
) -> Confusion:
    """The confusion matrix of ``packed`` over the classes ``cat_ids`` (file order)."""
    p = packed
    k = len(cat_ids)
    det = np.flatnonzero(p.dt_score >= score_thr)
    real = np.flatnonzero(~p.gt_crowd)
    d_lab = class_index(cat_ids, p.dt_cls[det])
    g_lab = class_index(cat_ids, p.gt_cls[real])
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)

    pd, pg = pairs(p.dt_img[det], p.gt_img[real], p.num_images)
    iou = box_iou(p.dt_box[det][pd], p.gt_box[real][pg])
    hit = iou >= iou_thr
    pd, pg, iou = pd[hit], pg[hit], iou[hit]
    order = np.argsort(-iou, kind="stable")
    pd, pg = pd[order], pg[order]
    _, first = np.unique(pd, return_index=True)  # each detection's best object
    pd, pg = pd[np.sort(first)], pg[np.sort(first)]
    _, first = np.unique(pg, return_index=True)  # each object's best remaining detection
    pd, pg = pd[first], pg[first]
    np.add.at(matrix, (g_lab[pg], d_lab[pd]), 1)

    paired = np.zeros(len(det), dtype=bool)
    paired[pd] = True
    crowd = np.flatnonzero(p.gt_crowd)
    if crowd.size:
        cd, cg = pairs(p.dt_img[det], p.gt_img[crowd], p.num_images)
        inside = box_iou(p.dt_box[det][cd], p.gt_box[crowd][cg], crowd=True) >= iou_thr
        paired[cd[inside]] = True  # in a crowd region: neither right nor wrong
    unpaired = d_lab[~paired]
    np.add.at(matrix, (np.full(len(unpaired), k), unpaired), 1)
    found = np.zeros(len(real), dtype=bool)
    found[pg] = True
    missed = g_lab[~found]
    np.add.at(matrix, (missed, np.full(len(missed), k)), 1)
    return Confusion(matrix, list(cat_ids), list(names), score_thr, iou_thr)
