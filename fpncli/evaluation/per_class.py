"""The per-class table of ``fpn eval``: AP, AP50, AP75, APs/m/l and AR100 of each category,
from COCOeval's accumulated arrays, as ``COCOeval.summarize`` computes the overall numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fpncli.data.coco import CocoAnnotations
from fpncli.evaluation.coco_eval import CocoEvaluation

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def per_class_table(
    ev: CocoEvaluation, gt: CocoAnnotations, detections: list[dict], image_ids: set[int]
) -> list[dict[str, Any]]:
    """AP, AP50, AP75, APs/m/l and AR100 per category, as COCOeval.summarize computes the
    overall ones (mean over entries > -1), with instance and detection counts; best AP first."""
    import numpy as np

    t50 = np.where(ev.iou_thrs == 0.5)[0]
    t75 = np.where(ev.iou_thrs == 0.75)[0]
    instances: dict[int, int] = {}
    crowds: dict[int, int] = {}
    for img_id in image_ids:
        for a in gt.annotations.get(img_id, []):
            bucket = crowds if a.get("iscrowd") else instances
            bucket[a["category_id"]] = bucket.get(a["category_id"], 0) + 1
    dets: dict[int, int] = {}
    for d in detections:
        if d["image_id"] in image_ids:
            dets[d["category_id"]] = dets.get(d["category_id"], 0) + 1
    rows = []
    for k, cid in enumerate(ev.cat_ids):
        p = ev.precision[:, :, k, :, -1]  # [T, R, A] at maxDets=100
        row: dict[str, Any] = {
            "category_id": cid,
            "name": gt.categories.names[gt.categories.id_to_label[cid] - 1],
            "instances": instances.get(cid, 0),
            "crowd": crowds.get(cid, 0),
            "detections": dets.get(cid, 0),
            "AP": _mean_valid(p[:, :, 0]),
            "AP50": _mean_valid(p[t50, :, 0]),
            "AP75": _mean_valid(p[t75, :, 0]),
            "APs": _mean_valid(p[:, :, 1]),
            "APm": _mean_valid(p[:, :, 2]),
            "APl": _mean_valid(p[:, :, 3]),
            "AR100": _mean_valid(ev.recall[:, k, 0, -1]),
        }
        rows.append(row)
    rows.sort(key=lambda r: (r["AP"] == -1, -r["AP"], r["name"]))
    return rows
