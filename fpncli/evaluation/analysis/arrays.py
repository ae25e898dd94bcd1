"""Ground truth and detections as flat numpy arrays, and the (detection, ground truth) pairs
of each image with their IoU: what every analysis reads.

Boxes are COCO's ``[x, y, w, h]`` in image pixels. IoU is pycocotools' ``maskUtils.iou`` for
boxes, computed the same way (no +1, zero where the boxes do not overlap), vectorised over
all pairs of an image at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SIZE_NAMES = ("small", "medium", "large")
SIZE_LIMITS = (32.0**2, 96.0**2)  # COCO's area ranges


@dataclass
class Packed:
    """One evaluation's inputs, sorted by image.

    Attributes:
        image_ids: ``[I]`` the evaluated images' ids, in the annotation file's order.
        gt_img, gt_cls, gt_box, gt_area, gt_crowd, gt_ann: ground truth (crowd included),
            sorted by image then file order: ``[G]`` image index, category id, ``[G, 4]``
            xywh, COCO ``area``, iscrowd, index in the dataset's annotation list.
        dt_img, dt_cls, dt_box, dt_score, dt_index: detections sorted by image, score
            (descending) then results order: ``[D]`` image index, category id, ``[D, 4]``
            xywh, score, index in the results list.
    """

    image_ids: np.ndarray
    gt_img: np.ndarray
    gt_cls: np.ndarray
    gt_box: np.ndarray
    gt_area: np.ndarray
    gt_crowd: np.ndarray
    gt_ann: np.ndarray
    dt_img: np.ndarray
    dt_cls: np.ndarray
    dt_box: np.ndarray
    dt_score: np.ndarray
    dt_index: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


def pack(
    dataset: dict[str, Any], detections: Sequence[dict[str, Any]], image_ids: Iterable[int] | None = None
) -> Packed:
    """Flatten a checked annotation ``dataset`` (see ``checks.load_ground_truth``) and checked
    ``detections`` (``check_results``); only the images in ``image_ids`` (default: all)."""
    order = [im["id"] for im in dataset["images"]]
    wanted = set(order) if image_ids is None else set(image_ids)
    ids = np.array([i for i in order if i in wanted], dtype=np.int64)
    position = {int(i): k for k, i in enumerate(ids)}

    anns = dataset["annotations"]
    g_img = np.array([position.get(a["image_id"], -1) for a in anns], dtype=np.int64)
    keep = np.flatnonzero(g_img >= 0)
    g_sort = keep[np.argsort(g_img[keep], kind="stable")]
    g_box = np.array([anns[i]["bbox"] for i in g_sort], dtype=np.float64).reshape(-1, 4)
    g_cls = np.array([anns[i]["category_id"] for i in g_sort], dtype=np.int64)
    g_area = np.array([anns[i].get("area", 0.0) for i in g_sort], dtype=np.float64)
    g_crowd = np.array([bool(anns[i].get("iscrowd", 0)) for i in g_sort], dtype=bool)

    d_img = np.array([position.get(d["image_id"], -1) for d in detections], dtype=np.int64)
    d_score = np.array([d["score"] for d in detections], dtype=np.float64)
    keep = np.flatnonzero(d_img >= 0)
    # TIDE and COCOeval both take an image's detections by descending score, ties in file order.
    d_sort = keep[np.lexsort((keep, -d_score[keep], d_img[keep]))]
    d_box = np.array([detections[i]["bbox"] for i in d_sort], dtype=np.float64).reshape(-1, 4)
    d_cls = np.array([detections[i]["category_id"] for i in d_sort], dtype=np.int64)
    return Packed(
        ids, g_img[g_sort], g_cls, g_box, g_area, g_crowd, g_sort,
        d_img[d_sort], d_cls, d_box, d_score[d_sort], d_sort,
    )  # fmt: skip


def starts(image_index: np.ndarray, num_images: int) -> np.ndarray:
    """``[I + 1]`` offsets: the entries of image ``i`` are ``[out[i], out[i + 1])`` of a
    sorted ``image_index``."""
    return np.searchsorted(image_index, np.arange(num_images + 1))


def pairs(det_img: np.ndarray, gt_img: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair of the same image: ``(det, gt)`` index arrays,
    grouped by detection, each detection's ground truth in order. Both inputs sorted."""
    g0 = starts(gt_img, num_images)
    counts = (g0[1:] - g0[:-1])[det_img]
    det = np.repeat(np.arange(len(det_img)), counts)
    # Position inside each detection's run of pairs, added to its image's first ground truth.
    run_start = np.repeat(np.cumsum(counts) - counts, counts)
    gt = np.arange(len(det)) - run_start + np.repeat(g0[:-1][det_img], counts)
    return det, gt


def box_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray | bool = False) -> np.ndarray:
    """Element-wise IoU of ``a[i]`` and ``b[i]`` (both ``[N, 4]`` xywh), as pycocotools'
    ``bbIou``: with ``crowd`` the union is ``a``'s area (a detection inside a crowd region)."""
    w = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    area_a = a[:, 2] * a[:, 3]
    union = np.where(crowd, area_a, area_a + b[:, 2] * b[:, 3] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def size_index(area: np.ndarray) -> np.ndarray:
    """0 small, 1 medium, 2 large, by COCO's area ranges (``area`` in pixels²)."""
    return np.searchsorted(np.asarray(SIZE_LIMITS), area, side="left").astype(np.int64)


def segment_first(owner: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct ``owner`` (sorted) with a True ``mask`` entry: (owner, the position
    of its first True entry)."""
    hits = np.flatnonzero(mask)
    found, first = np.unique(owner[hits], return_index=True)
    return found, hits[first]
