"""Per-image AP and the error list: which images a detector does worst on, and every error
with its box, class, score and ground truth (``errors.csv``) for scripts.

Per-image AP is TIDE's AP50 (its matching and 101-point interpolation) of one image: the
mean over the classes with ground truth or detections in it. An image with neither has none.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from fpncli.evaluation.analysis.arrays import Packed
from fpncli.evaluation.analysis.tide import NOT_KEPT, OUTCOMES, TP, TideResult, group_ap

CSV_FIELDS = (
    "image_id", "file_name", "error", "category_id", "category", "score",
    "x", "y", "w", "h", "gt_annotation_id", "gt_category_id",
)  # fmt: skip


@dataclass
class ImageScore:
    image_id: int
    ap50: float  # points
    detections: int
    objects: int
    errors: dict[str, int]


def per_image_ap(packed: Packed, result: TideResult) -> np.ndarray:
    """``[I]`` TIDE's AP50 of each image (points), NaN for images without objects or detections."""
    p = packed
    kept = (result.dt_outcome != NOT_KEPT) & ~result.dt_ignored
    real = ~p.gt_crowd
    keys = np.concatenate(
        (p.dt_img[kept] * (2**32) + p.dt_cls[kept], p.gt_img[real] * (2**32) + p.gt_cls[real])
    )
    groups, inverse = np.unique(keys, return_inverse=True)
    d_group, g_group = inverse[: int(kept.sum())], inverse[int(kept.sum()) :]
    # Detections are packed by image and descending score: a stable sort by group keeps that.
    order = np.argsort(d_group, kind="stable")
    tp = result.dt_outcome[kept] == TP
    ap, _ = group_ap(d_group[order], tp[order], np.bincount(g_group, minlength=len(groups)), len(groups))
    image = groups // (2**32)
    total = np.bincount(image, weights=ap, minlength=p.num_images)
    count = np.bincount(image, minlength=p.num_images)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def worst_images(packed: Packed, result: TideResult, k: int) -> list[ImageScore]:
    """The ``k`` images with the lowest AP50 (ties: more objects first), worst first."""
    p = packed
    ap = per_image_ap(p, result)
    valid = np.flatnonzero(~np.isnan(ap))
    objects = np.bincount(p.gt_img[~p.gt_crowd], minlength=p.num_images)
    dets = np.bincount(p.dt_img[result.dt_outcome != NOT_KEPT], minlength=p.num_images)
    chosen = valid[np.lexsort((valid, -objects[valid], ap[valid]))][:k]
    out = []
    for i in chosen:
        mine = (p.dt_img == i) & (result.dt_outcome > TP)
        errors = {
            OUTCOMES[c]: int(n) for c, n in zip(*np.unique(result.dt_outcome[mine], return_counts=True))
        }
        missed = int(np.sum(result.gt_missed & (p.gt_img == i)))
        if missed:
            errors["Miss"] = missed
        out.append(
            ImageScore(int(p.image_ids[i]), round(float(ap[i]), 2), int(dets[i]), int(objects[i]), errors)
        )
    return out


def error_rows(packed: Packed, result: TideResult, dataset: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One row per error (the columns of :data:`CSV_FIELDS`): every false positive of the kept
    detections (crowd-ignored ones say so) and every missed object; boxes xywh in image pixels;
    "" where a field does not apply."""
    p = packed
    anns = dataset["annotations"]
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset["categories"]}
    files = {im["id"]: im.get("file_name", "") for im in dataset["images"]}
    ann_ids = [a.get("id", "") for a in anns]
    det = np.flatnonzero(result.dt_outcome > TP)
    miss = np.flatnonzero(result.gt_missed)
    g = result.dt_gt[det]
    kinds = np.array(OUTCOMES, dtype=object)[result.dt_outcome[det]]
    kinds = np.where(result.dt_ignored[det], kinds + " (in crowd)", kinds)
    image = np.concatenate((p.image_ids[p.dt_img[det]], p.image_ids[p.gt_img[miss]])).tolist()
    cat = np.concatenate((p.dt_cls[det], p.gt_cls[miss])).tolist()
    boxes = np.round(np.concatenate((p.dt_box[det], p.gt_box[miss])), 2).tolist()
    gt_ann = [ann_ids[p.gt_ann[i]] if i >= 0 else "" for i in g.tolist()]
    gt_ann += [ann_ids[i] for i in p.gt_ann[miss].tolist()]
    gt_cat = [int(p.gt_cls[i]) if i >= 0 else "" for i in g.tolist()] + p.gt_cls[miss].tolist()
    scores = np.round(p.dt_score[det], 5).tolist() + [""] * len(miss)
    errors = kinds.tolist() + ["Miss"] * len(miss)
    return [
        (img, files.get(img, ""), err, c, names.get(c, ""), sc, *box, ga, gc)
        for img, err, c, sc, box, ga, gc in zip(image, errors, cat, scores, boxes, gt_ann, gt_cat)
    ]


def rows_to_csv(rows: list[tuple[Any, ...]]) -> str:
    """The rows as CSV text with a header."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows(rows)
    return buffer.getvalue()
