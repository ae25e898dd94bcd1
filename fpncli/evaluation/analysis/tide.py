"""TIDE's error breakdown (Bolya et al., ECCV 2020), by its definitions, vectorised in numpy.

The ``tidecv`` package walks every image and detection in Python; this module computes the
same numbers with array operations over all images at once (``tests/evaluation/analysis``
checks equality with ``tidecv`` on COCO annotations; ``scripts/bench_analyze.py`` times both).

TIDE's rules, as ``tidecv`` 1.0.1 implements them (box mode):

- Each image keeps its 100 best-scored detections (all classes together). In score order,
  a detection matches the unused ground truth of its class with the highest IoU, if that
  IoU is >= 0.5 (foreground). An unmatched detection inside a crowd region of its class
  (intersection over its own area > 0.5) is left out of AP, but still gets an error type.
- Every other detection is a false positive of the first type that fits, in this order:
  **Bkg** if the image has no (non-crowd) ground truth; **Loc** if its best same-class IoU is
  in [0.1, 0.5]; **Cls** if its best other-class IoU is >= 0.5; **Dupe** if its best IoU
  with an already matched same-class ground truth is >= 0.5; **Bkg** if its best IoU with
  any ground truth is <= 0.1 (background); **Both** otherwise.
- A Loc or Cls error whose ground truth is unmatched makes that ground truth "usable": the
  best-scored such detection is the one fixing it. Unmatched ground truth that no error can
  use is a **Miss**.
- Each main error's dAP is AP50 with only that type fixed (Loc/Cls: the fixing detection
  becomes a true positive of the ground truth's class, the others are dropped; Dupe, Bkg,
  Both: dropped; Miss: the ground truth is removed) minus AP50, floored at 0.
  **FalsePos**: every false positive scored below every true positive; **FalseNeg**: every
  unmatched ground truth removed. AP50 is TIDE's: 101-point COCO interpolation per class,
  averaged over every class with ground truth or detections (a class with detections only
  counts as 0), in points (0-100).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fpncli.evaluation.analysis.arrays import Packed, box_iou, pairs, segment_first, starts

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")  # TIDE's printing order
SPECIAL_TYPES = ("FalsePos", "FalseNeg")
# Per-detection outcome codes.
TP, CLS, LOC, BOTH, DUPE, BKG = 0, 1, 2, 3, 4, 5
OUTCOMES = ("TP", "Cls", "Loc", "Both", "Dupe", "Bkg")
NOT_KEPT = -1  # beyond the 100 best of its image


@dataclass
class TideResult:
    """TIDE's numbers and what each detection and ground truth was.

    Attributes:
        ap50: TIDE's AP50, points.
        errors: the main errors' dAP (:data:`ERROR_TYPES`), points.
        special: ``FalsePos`` and ``FalseNeg`` dAP, points.
        counts: how many of each error (main types).
        dt_outcome: ``[D]`` per detection of the :class:`Packed` order: an index into
            :data:`OUTCOMES`, or :data:`NOT_KEPT`.
        dt_gt: ``[D]`` the ground truth (index into the packed ground truth) a detection
            matched (TP), duplicates (Dupe) or would fix (Loc, Cls); -1 otherwise.
        dt_ignored: ``[D]`` unmatched but inside a crowd region of its class (not in AP).
        gt_matched: ``[G]`` the matching detection, -1 when none (always -1 for crowd).
        gt_missed: ``[G]`` a Miss (unmatched, and no Loc or Cls error could fix it).
    """

    ap50: float
    errors: dict[str, float]
    special: dict[str, float]
    counts: dict[str, int]
    dt_outcome: np.ndarray
    dt_gt: np.ndarray
    dt_ignored: np.ndarray
    gt_matched: np.ndarray
    gt_missed: np.ndarray
    per_class_ap50: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, float]:
        """``{"Cls": ..., "FalseNeg": ...}``: the eight dAP values in points, as TIDE prints them."""
        return {
            **{k: round(v, 4) for k, v in self.errors.items()},
            **{k: round(v, 4) for k, v in self.special.items()},
        }


# --------------------------------------------------------------------------- AP


def group_ap(
    group: np.ndarray, tp: np.ndarray, npos: np.ndarray, num_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """TIDE's AP (COCO's 101-point interpolation) of many groups at once.

    Args:
        group: ``[N]`` group of each scored point, sorted; inside a group, by descending score.
        tp: ``[N]`` bool, true positive.
        npos: ``[num_groups]`` ground-truth count of each group.

    Returns:
        ``(ap, has_points)``: ``[num_groups]`` AP in points (0 where ``npos`` is 0) and
        whether the group has any point.
    """
    n = len(group)
    g0 = np.searchsorted(group, np.arange(num_groups + 1))
    size = g0[1:] - g0[:-1]
    tp = tp.astype(bool)
    ctp = np.cumsum(tp)
    before = np.concatenate(([0], ctp))[g0[:-1]]  # TPs of the groups before
    ctp_in = ctp - before[group]
    rank = np.arange(n) - g0[:-1][group]
    precision = ctp_in / (rank + 1.0)
    # Precision made non-increasing inside each group (COCO's envelope): a reversed running
    # max, kept inside its group by an offset that grows with the group (precision <= 1).
    offset = 2.0 * group
    smooth = np.maximum.accumulate((precision - offset)[::-1])[::-1] + offset
    smooth = np.minimum(smooth, 1.0)  # the offset's rounding, at most ~1e-11
    ntp = ctp_in[g0[1:] - 1] if n else np.zeros(num_groups, dtype=np.int64)
    ntp = np.where(size > 0, ntp if n else 0, 0)
    # Recall r >= j/100 <=> tp_count * 100 >= j * npos (exact in integers): the first point
    # reaching recall j/100 is the t-th true positive of the group, t = ceil(j * npos / 100).
    npos = np.asarray(npos, dtype=np.int64)
    t = (np.arange(101)[None, :] * npos[:, None] + 99) // 100  # [groups, 101]
    tp_at = np.flatnonzero(tp)
    tp_first = np.concatenate(([0], np.cumsum(ntp)))[:-1]
    reach = (t >= 1) & (t <= ntp[:, None])
    where = np.zeros(t.shape, dtype=np.int64)
    if tp_at.size:
        where[reach] = tp_at[(tp_first[:, None] + t - 1)[reach]]
    at_zero = (t == 0) & (size[:, None] > 0)
    where[at_zero] = np.broadcast_to(g0[:-1, None], t.shape)[at_zero]
    values = np.zeros(t.shape)
    ok = reach | at_zero
    values[ok] = smooth[where[ok]] if n else 0.0
    ap = np.where(npos > 0, values.sum(axis=1) / 101 * 100, 0.0)
    return ap, size > 0


def _mean_ap(
    cls: np.ndarray, score_order: np.ndarray, tp: np.ndarray, npos: np.ndarray
) -> tuple[float, np.ndarray]:
    """TIDE's mAP: the mean over classes with points or ground truth (class = index into
    ``npos``); ``score_order`` lists the points by descending score."""
    order = score_order[np.argsort(cls[score_order], kind="stable")]
    ap, has = group_ap(cls[order], tp[order], npos, len(npos))
    counted = has | (npos > 0)
    return (float(ap[counted].mean()) if counted.any() else 0.0), ap


# --------------------------------------------------------------------------- matching


def _greedy_match(
    det: np.ndarray, gt: np.ndarray, iou: np.ndarray, group: np.ndarray, num_gt: int, num_det: int
) -> np.ndarray:
    """TIDE's (and COCO's) greedy matching of candidate pairs: in score order, each detection
    takes the unused ground truth with the highest IoU (ties: the first). ``det`` is sorted
    (score order within an image); ``group`` is the detection's (image, class) group: groups
    never compete, so step ``k`` matches the k-th candidate detection of every group at once.

    Returns ``[num_det]`` the matched ground truth, -1 when none."""
    matched = np.full(num_det, -1, dtype=np.int64)
    if det.size == 0:
        return matched
    # Each detection's candidates, best IoU first (ties: ground-truth order).
    order = np.lexsort((gt, -iou, det))
    det, gt = det[order], gt[order]
    cand, first = np.unique(det, return_index=True)
    bounds = np.append(first, len(det))
    cand_group = group[cand]
    # The detection's rank among its group's candidates (candidates are in score order).
    by_group = np.argsort(cand_group, kind="stable")
    g_sorted = cand_group[by_group]
    g_start = np.searchsorted(g_sorted, g_sorted, side="left")
    step = np.empty(len(cand), dtype=np.int64)
    step[by_group] = np.arange(len(cand)) - g_start
    used = np.zeros(num_gt, dtype=bool)
    for k in range(int(step.max()) + 1):
        now = np.flatnonzero(step == k)
        lo, hi = bounds[now], bounds[now + 1]
        counts = hi - lo
        owner = np.repeat(np.arange(len(now)), counts)
        idx = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
        found, pos = segment_first(owner, ~used[gt[idx]])
        chosen = gt[idx[pos]]
        matched[cand[now[found]]] = chosen
        used[chosen] = True
    return matched


def _segment_best(owner: np.ndarray, value: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Per owner (sorted, each with entries in order): the max ``value`` and the position of
    its first occurrence (np.argmax's tie rule). Owners without entries get (0, -1)."""
    best = np.zeros(num)
    where = np.full(num, -1, dtype=np.int64)
    if owner.size == 0:
        return best, where
    present, first = np.unique(owner, return_index=True)
    best[present] = np.maximum.reduceat(value, first)
    found, pos = segment_first(owner, value == best[owner])
    where[found] = pos
    return best, where


# --------------------------------------------------------------------------- TIDE


def tide(packed: Packed, pos_thr: float = 0.5, bg_thr: float = 0.1, max_dets: int = 100) -> TideResult:
    """TIDE's breakdown of ``packed`` (see the module docstring for the rules)."""
    p = packed
    n_img = p.num_images
    d_start = starts(p.dt_img, n_img)
    rank = np.arange(len(p.dt_img)) - d_start[p.dt_img]
    kept = np.flatnonzero(rank < max_dets)
    k_img, k_cls, k_box = p.dt_img[kept], p.dt_cls[kept], p.dt_box[kept]
    nk = len(kept)

    real = np.flatnonzero(~p.gt_crowd)
    crowd = np.flatnonzero(p.gt_crowd)
    g_img, g_cls, g_box = p.gt_img[real], p.gt_cls[real], p.gt_box[real]
    ng = len(real)

    # Classes: every category seen, as a compact index.
    classes = np.unique(np.concatenate((g_cls, k_cls)))
    g_c = np.searchsorted(classes, g_cls)
    k_c = np.searchsorted(classes, k_cls)

    pd, pg = pairs(k_img, g_img, n_img)
    iou = box_iou(k_box[pd], g_box[pg])
    same = k_cls[pd] == g_cls[pg]
    cand = same & (iou >= pos_thr)
    group = k_img * len(classes) + k_c
    match = _greedy_match(pd[cand], pg[cand], iou[cand], group, ng, nk)
    tp = match >= 0
    g_used = np.zeros(ng, dtype=bool)
    g_used[match[tp]] = True
    g_match = np.full(ng, -1, dtype=np.int64)
    g_match[match[tp]] = np.flatnonzero(tp)

    # Crowd regions of the detection's class take in unmatched detections (left out of AP).
    ignored = np.zeros(nk, dtype=bool)
    if crowd.size:
        cd, cg = pairs(k_img, p.gt_img[crowd], n_img)
        cg = crowd[cg]
        hit = (p.gt_cls[cg] == k_cls[cd]) & (box_iou(k_box[cd], p.gt_box[cg], crowd=True) > pos_thr)
        ignored[np.unique(cd[hit])] = True
        ignored &= ~tp

    # Error types of the unmatched, in TIDE's order.
    outcome = np.full(nk, TP, dtype=np.int64)
    target = np.where(tp, match, -1)
    g_per_img = np.bincount(g_img, minlength=n_img)
    fp = ~tp
    undecided = fp.copy()

    def decide(mask: np.ndarray, code: int, gt_of: np.ndarray | None = None) -> None:
        nonlocal undecided
        take = undecided & mask
        outcome[take] = code
        if gt_of is not None:
            target[take] = gt_of[take]
        undecided = undecided & ~take

    decide(g_per_img[k_img] == 0, BKG)
    same_iou = np.where(same, iou, 0.0)
    best, at = _segment_best(pd, same_iou, nk)
    decide((best >= bg_thr) & (best <= pos_thr), LOC, np.where(at >= 0, pg[np.maximum(at, 0)], -1))
    best, at = _segment_best(pd, np.where(same, 0.0, iou), nk)
    decide(best >= pos_thr, CLS, np.where(at >= 0, pg[np.maximum(at, 0)], -1))
    best, at = _segment_best(pd, np.where(g_used[pg], same_iou, 0.0), nk)
    decide(best >= pos_thr, DUPE, np.where(at >= 0, pg[np.maximum(at, 0)], -1))
    best, _ = _segment_best(pd, iou, nk)
    decide(best <= bg_thr, BKG)
    decide(np.ones(nk, dtype=bool), BOTH)

    # Loc/Cls errors on unmatched ground truth: the best-scored one per ground truth fixes it.
    fixing = np.flatnonzero(((outcome == LOC) | (outcome == CLS)) & (target >= 0))
    fixing = fixing[~g_used[target[fixing]]]
    usable = np.zeros(ng, dtype=bool)
    usable[target[fixing]] = True
    fixer = np.full(ng, -1, dtype=np.int64)
    # Detections are in score order inside an image, so the first per ground truth is the best.
    tgt, first = np.unique(target[fixing], return_index=True)
    fixer[tgt] = fixing[first]
    is_fixer = np.zeros(nk, dtype=bool)
    is_fixer[fixer[fixer >= 0]] = True
    missed = ~g_used & ~usable

    # AP before and after each fix. Points: kept, not-ignored detections.
    npos = np.bincount(g_c, minlength=len(classes))
    in_ap = ~ignored
    scores = p.dt_score[kept]
    base_order = np.lexsort((np.arange(nk), -scores))
    base, base_ap = _mean_ap(k_c, base_order[in_ap[base_order]], tp, npos)
    # tidecv rebuilds each fixed AP from its error list first, then the true positives: on
    # equal scores a (former) false positive ranks before a true positive.
    score_order = np.lexsort((np.arange(nk), tp, -scores))

    def fixed_ap(code: int) -> float:
        if code == -2:  # Miss: the missed ground truth leaves
            return _mean_ap(
                k_c,
                score_order[in_ap[score_order]],
                tp,
                npos - np.bincount(g_c[missed], minlength=len(classes)),
            )[0]
        err = outcome == code
        cls = k_c.copy()
        new_tp = tp.copy()
        keep = in_ap & ~err
        if code in (LOC, CLS):
            fix = err & is_fixer
            keep |= fix
            new_tp |= fix
            cls[fix] = g_c[target[fix]]
        return _mean_ap(cls, score_order[keep[score_order]], new_tp, npos)[0]

    codes = {"Cls": CLS, "Loc": LOC, "Both": BOTH, "Dupe": DUPE, "Bkg": BKG, "Miss": -2}
    errors = {name: max(fixed_ap(code) - base, 0.0) for name, code in codes.items()}
    # FalsePos: true positives first (score 1), false positives after (score 0).
    fp_order = score_order[in_ap[score_order]]
    fp_order = fp_order[np.argsort(~tp[fp_order], kind="stable")]
    false_pos = _mean_ap(k_c, fp_order, tp, npos)[0] - base
    false_neg = (
        _mean_ap(k_c, score_order[in_ap[score_order]], tp, np.bincount(k_c[tp], minlength=len(classes)))[0]
        - base
    )

    counts = {name: int(np.sum(outcome == code)) for name, code in codes.items() if code >= 0}
    counts["Miss"] = int(missed.sum())
    dt_outcome = np.full(len(p.dt_img), NOT_KEPT, dtype=np.int64)
    dt_outcome[kept] = outcome
    dt_gt = np.full(len(p.dt_img), -1, dtype=np.int64)
    dt_gt[kept[target >= 0]] = real[target[target >= 0]]
    dt_ignored = np.zeros(len(p.dt_img), dtype=bool)
    dt_ignored[kept] = ignored
    gt_matched = np.full(len(p.gt_img), -1, dtype=np.int64)
    gt_matched[real[g_match >= 0]] = kept[g_match[g_match >= 0]]
    gt_missed = np.zeros(len(p.gt_img), dtype=bool)
    gt_missed[real] = missed
    counted = (npos > 0) | np.isin(np.arange(len(classes)), k_c[in_ap])
    return TideResult(
        ap50=base,
        errors=errors,
        special={"FalsePos": false_pos, "FalseNeg": false_neg},
        counts=counts,
        dt_outcome=dt_outcome,
        dt_gt=dt_gt,
        dt_ignored=dt_ignored,
        gt_matched=gt_matched,
        gt_missed=gt_missed,
        per_class_ap50={int(c): float(a) for c, a, k in zip(classes, base_ap, counted) if k},
    )
