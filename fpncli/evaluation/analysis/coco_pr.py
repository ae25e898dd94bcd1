"""COCOeval's interpolated precision at one IoU threshold, in numpy over all images at once:
what the error curves' IoU 0.1 runs need, without three more COCOeval passes.

The rules are pycocotools' ``evaluateImg`` and ``accumulate`` (``maxDets = [100]``, the four
area ranges), checked equal to COCOeval in ``tests/evaluation/analysis``: per image and class,
the 100 best-scored detections, in score order, each take the unmatched non-ignored object
with the highest IoU >= t (ties: the later one); failing that, an ignored one (crowd regions
any number of times, objects outside the area range once); a detection matched to an ignored
object, or unmatched and outside the area range, is ignored. Crowd IoU is the intersection
over the detection's area.
"""

from __future__ import annotations

import numpy as np

from fpncli.evaluation.analysis.arrays import box_iou, segment_first

AREA_RANGES = ((0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))
REC_THRS = np.linspace(0.0, 1.00, 101, endpoint=True)


def _match(
    det: np.ndarray, gt: np.ndarray, iou: np.ndarray, step: np.ndarray, ignored: np.ndarray, crowd: np.ndarray,
    num_det: int, num_gt: int,
) -> np.ndarray:  # fmt: skip
    """COCOeval's greedy matching of candidate pairs (``iou`` >= t, same image and class),
    step ``k`` taking the k-th detection of every (image, class) at once. Returns ``[num_det]``
    the matched object, -1 when none."""
    matched = np.full(num_det, -1, dtype=np.int64)
    if det.size == 0:
        return matched
    # Each detection's candidates: non-ignored first, then best IoU, ties to the later object.
    order = np.lexsort((-gt, -iou, ignored[gt], det))
    det, gt = det[order], gt[order]
    used = np.zeros(num_gt, dtype=bool)
    pair_step = step[det]
    by_step = np.argsort(pair_step, kind="stable")
    bounds = np.searchsorted(pair_step[by_step], np.arange(int(pair_step.max()) + 2))
    for k in range(len(bounds) - 1):
        idx = by_step[bounds[k] : bounds[k + 1]]  # this step's pairs, grouped by detection
        free = crowd[gt[idx]] | ~used[gt[idx]]
        found, pos = segment_first(det[idx], free)
        chosen = gt[idx[pos]]
        matched[found] = chosen
        used[chosen] = True
    return matched


def coco_precision(
    d_img: np.ndarray, d_cls: np.ndarray, d_box: np.ndarray, d_score: np.ndarray,
    g_img: np.ndarray, g_cls: np.ndarray, g_box: np.ndarray, g_area: np.ndarray, g_crowd: np.ndarray,
    cat_ids: list[int], iou_thr: float, image_ids: np.ndarray, max_det: int = 100,
) -> np.ndarray:  # fmt: skip
    """``[R=101, K, A=4]`` COCOeval's ``eval["precision"][0, :, :, :, 0]`` at one IoU
    threshold (-1 where a class has no non-ignored object of that size).

    Detections must be sorted by image, then descending score, ties in results order
    (``arrays.pack``'s order); objects by image, in file order; ``image_ids[i]`` is the id of
    image index ``i`` (COCOeval breaks score ties across images by ascending id). Boxes xywh
    pixels.
    """
    k_of = {c: i for i, c in enumerate(cat_ids)}
    d_c = np.array([k_of[int(c)] for c in d_cls], dtype=np.int64)
    g_c = np.array([k_of[int(c)] for c in g_cls], dtype=np.int64)
    # The best max_det of each (image, class), and each one's rank (its matching step).
    group = d_img * len(cat_ids) + d_c
    order = np.argsort(group, kind="stable")  # keeps score order inside a group
    g_sorted = group[order]
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - np.searchsorted(g_sorted, g_sorted, side="left")
    keep = np.flatnonzero(rank < max_det)
    d_img, d_c, d_box, d_score, rank = d_img[keep], d_c[keep], d_box[keep], d_score[keep], rank[keep]
    # Candidate pairs: same image and class (image-major lists, so a merge by key).
    d_key = d_img * len(cat_ids) + d_c
    g_key = g_img * len(cat_ids) + g_c
    g_order = np.argsort(g_key, kind="stable")
    lo = np.searchsorted(g_key[g_order], d_key, side="left")
    hi = np.searchsorted(g_key[g_order], d_key, side="right")
    counts = hi - lo
    det = np.repeat(np.arange(len(d_key)), counts)
    gt = g_order[
        np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
    ]
    iou = box_iou(d_box[det], g_box[gt], crowd=g_crowd[gt])
    hit = iou >= min(iou_thr, 1 - 1e-10)
    det, gt, iou = det[hit], gt[hit], iou[hit]
    d_area = d_box[:, 2] * d_box[:, 3]
    n_k = len(cat_ids)
    out = np.full((len(REC_THRS), n_k, len(AREA_RANGES)), -1.0)
    for a, (lo_a, hi_a) in enumerate(AREA_RANGES):
        g_ign = g_crowd | (g_area < lo_a) | (g_area > hi_a)
        matched = _match(det, gt, iou, rank, g_ign, g_crowd, len(d_key), len(g_key))
        d_ign = np.where(matched >= 0, g_ign[np.maximum(matched, 0)], (d_area < lo_a) | (d_area > hi_a))
        npig = np.bincount(g_c[~g_ign], minlength=n_k)
        # Accumulate per class: detections of all images by score (mergesort: ties in image order).
        for k in np.flatnonzero(npig > 0):
            mine = np.flatnonzero(d_c == k)
            mine = mine[np.lexsort((rank[mine], image_ids[d_img[mine]], -d_score[mine]))]
            mine = mine[~d_ign[mine]]
            tp = np.cumsum(matched[mine] >= 0).astype(np.float64)
            fp = np.cumsum(matched[mine] < 0).astype(np.float64)
            q = np.zeros(len(REC_THRS))
            if len(mine):
                rc = tp / npig[k]
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]
                inds = np.searchsorted(rc, REC_THRS, side="left")
                ok = inds < len(pr)
                q[ok] = pr[inds[ok]]
            out[:, k, a] = q
    return out
