"""COCO's error-analysis curves (Hoiem-style, as the COCO detection challenge's analysis and
MMDetection's ``tools/analysis_tools/coco_error_analysis.py`` draw them), per object size.

Seven precision-recall curves per class and size, each with one more kind of error forgiven:

- **C75**, **C50**: PR at IoU 0.75 and 0.5 (COCOeval's own curves);
- **Loc**: PR at IoU 0.1 (localisation errors forgiven, duplicates still wrong);
- **Sim**: as Loc, and detections on an object of another class of the same supercategory
  are ignored (COCOeval sees that object as a crowd region of the detection's class);
- **Oth**: as Loc, and detections on an object of any other class are ignored;
- **BG**: every remaining false positive (background) forgiven: precision 1 up to Oth's recall;
- **FN**: precision 1 at every recall (what the missed objects cost).

MMDetection runs pycocotools' ``COCOeval`` with modified ``iouThrs`` and ``maxDets = [100]``
on a modified ground truth, once per class. :func:`error_curves_cocoeval` does the same with
one run per curve: the crowd copies of every class go into one run, and only the copies that
some detection of that class overlaps (COCOeval evaluates each image and class apart, and a
crowd region no detection reaches changes nothing; tested equal to MMDetection's
construction). :func:`error_curves`, what ``--analyze`` uses, computes the same arrays in
numpy (:mod:`.coco_pr`), tested equal to :func:`error_curves_cocoeval` with pycocotools, ten
times faster than faster-coco-eval (``scripts/bench_analyze.py``).
Unlike MMDetection, a class without ground truth of a size is left out of that size's
overall curve rather than counted as zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fpncli.evaluation.analysis.arrays import box_iou, pack, pairs
from fpncli.evaluation.analysis.coco_pr import REC_THRS, coco_precision
from fpncli.evaluation.coco_eval import CocoEvaluation, run_cocoeval

TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREAS = ("all", "small", "medium", "large")  # COCOeval's areaRng order


@dataclass
class ErrorCurves:
    """Attributes:
    precision: ``[7, R, K, 4]`` the curves (:data:`TYPES` x recall x class x
        :data:`AREAS`); NaN where a class has no ground truth of that size.
    recall: ``[R]`` COCO's 101 recall thresholds.
    cat_ids, names: ``K`` classes.
    """

    precision: np.ndarray
    recall: np.ndarray
    cat_ids: list[int]
    names: list[str]

    def overall(self, area: int) -> np.ndarray:
        """``[7, R]``: the mean curve over classes with ground truth of that size."""
        p = self.precision[:, :, :, area]
        valid = ~np.isnan(p[0, 0])
        return p[:, :, valid].mean(axis=2) if valid.any() else np.zeros(p.shape[:2])

    def areas_under(self, curves: np.ndarray) -> dict[str, float]:
        """``{"C75": ..., "FN": ...}``: the mean of each curve (the AP of that step)."""
        return {t: round(float(curves[i].mean()), 4) for i, t in enumerate(TYPES)}

    def worst_classes(self, k: int) -> list[int]:
        """Indices of the ``k`` classes with ground truth and the lowest C50 AP (all sizes)."""
        c50 = self.precision[1, :, :, 0].mean(axis=0)
        valid = np.flatnonzero(~np.isnan(c50))
        return [int(i) for i in valid[np.argsort(c50[valid], kind="stable")][:k]]

    def to_json(self, worst: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = {
            "types": list(TYPES),
            "overall": {AREAS[a]: self.areas_under(self.overall(a)) for a in range(4)},
            "worst_classes": [],
        }
        for k in self.worst_classes(worst):
            out["worst_classes"].append(
                {
                    "category_id": self.cat_ids[k],
                    "name": self.names[k],
                    **{
                        AREAS[a]: (
                            None
                            if np.isnan(self.precision[0, 0, k, a])
                            else self.areas_under(self.precision[:, :, k, a])
                        )
                        for a in range(4)
                    },
                }
            )
        return out


def _copy_keys(dataset: dict[str, Any], packed: Any, same_super: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(object, class)`` of each crowd copy: every object copied into each other class (only
    those of its supercategory with ``same_super``) with a detection in its image that the copy
    could take in (intersection over the detection's area >= 0.1, COCOeval's crowd test at IoU
    0.1). MMDetection copies into every class; a copy no detection reaches changes nothing."""
    if not len(packed.dt_img) or not len(packed.gt_img):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cats = {c["id"]: str(c.get("supercategory")) for c in dataset["categories"]}
    det, gt = pairs(packed.dt_img, packed.gt_img, packed.num_images)
    other = packed.dt_cls[det] != packed.gt_cls[gt]
    if same_super:
        sup = {name: i for i, name in enumerate(sorted(set(cats.values())))}
        g_sup = np.array([sup[cats[int(c)]] for c in packed.gt_cls], dtype=np.int64)
        d_sup = np.array([sup[cats[int(c)]] for c in packed.dt_cls], dtype=np.int64)
        other &= d_sup[det] == g_sup[gt]
    det, gt = det[other], gt[other]
    reach = box_iou(packed.dt_box[det], packed.gt_box[gt], crowd=True) >= 0.1
    keys = np.unique(np.stack((gt[reach], packed.dt_cls[det[reach]]), axis=1), axis=0).reshape(-1, 2)
    return keys[:, 0], keys[:, 1]


def _crowd_copies(
    dataset: dict[str, Any], detections: list[dict], image_ids: set[int], same_super: bool
) -> list[dict[str, Any]]:
    """The crowd copies of :func:`_copy_keys` as annotations (for COCOeval)."""
    packed = pack(dataset, detections, image_ids)
    gt, cls = _copy_keys(dataset, packed, same_super)
    anns = dataset["annotations"]
    next_id = max((a["id"] for a in anns), default=0) + 1
    return [
        {**anns[packed.gt_ann[g]], "id": next_id + i, "category_id": int(k), "iscrowd": 1, "ignore": 1}
        for i, (g, k) in enumerate(zip(gt.tolist(), cls.tolist()))
    ]


def error_curves(dataset: dict[str, Any], detections: list[dict], image_ids: set[int]) -> ErrorCurves:
    """The seven curves for every class and size, in numpy (:mod:`.coco_pr`: COCOeval's
    matching and accumulation at one IoU threshold; tested equal to the COCOeval runs of
    :func:`error_curves_cocoeval`, which MMDetection's construction is tested equal to)."""
    packed = pack(dataset, detections, image_ids)
    cat_ids = [int(c["id"]) for c in dataset["categories"]]
    order = np.argsort(packed.image_ids, kind="stable")  # COCOeval: images by ascending id
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    p = packed
    dets = (p.dt_img, p.dt_cls, p.dt_box, p.dt_score)
    gts = (p.gt_img, p.gt_cls, p.gt_box, p.gt_area, p.gt_crowd)
    ps = np.full((7, 101, len(cat_ids), 4), np.nan)
    for row, iou in ((0, 0.75), (1, 0.5), (2, 0.1)):
        ps[row] = coco_precision(*dets, *gts, cat_ids, iou, rank_of)
    for row, same_super in ((3, True), (4, False)):
        g, k = _copy_keys(dataset, p, same_super)
        with_copies = (
            np.concatenate((p.gt_img, p.gt_img[g])),
            np.concatenate((p.gt_cls, k)),
            np.concatenate((p.gt_box, p.gt_box[g])),
            np.concatenate((p.gt_area, p.gt_area[g])),
            np.concatenate((p.gt_crowd, np.ones(len(g), dtype=bool))),
        )
        ps[row] = coco_precision(*dets, *with_copies, cat_ids, 0.1, rank_of)
    return _finish(ps, cat_ids, dataset)


def _finish(ps: np.ndarray, cat_ids: list[int], dataset: dict[str, Any]) -> ErrorCurves:
    """MMDetection's fill-ins: -1 -> 0, BG = (Oth > 0), FN = 1; NaN where no ground truth."""
    missing = ps[0] == -1  # [R, K, A]: no ground truth of that class and size
    ps[ps == -1] = 0
    ps[5] = (ps[4] > 0).astype(np.float64)
    ps[6] = 1.0
    ps[:, missing] = np.nan
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset["categories"]}
    return ErrorCurves(ps, REC_THRS.copy(), cat_ids, [names[c] for c in cat_ids])


def error_curves_cocoeval(
    dataset: dict[str, Any],
    detections: list[dict],
    image_ids: set[int],
    backend: str = "auto",
    evaluation: CocoEvaluation | None = None,
) -> ErrorCurves:
    """The seven curves from pycocotools' (or faster-coco-eval's) COCOeval with modified
    parameters, as MMDetection computes them: the reference :func:`error_curves` is tested
    equal to (several times slower).

    Args:
        dataset: a checked annotation dataset (``checks.load_ground_truth(...).dataset``).
        detections: checked COCO results (fresh dicts; the backends add keys).
        image_ids: the evaluated images.
        backend: COCOeval backend (see ``coco_eval.resolve_backend``).
        evaluation: the standard COCOeval of the same inputs, if already run: its IoU 0.75
            and 0.5 curves at 100 detections are C75 and C50 (COCOeval matches each IoU
            threshold apart), which saves one run.
    """
    thrs = [0.1] if evaluation is not None else [0.75, 0.5, 0.1]
    base = run_cocoeval(
        dataset, [dict(d) for d in detections], backend, image_ids, max_dets=[100], iou_thrs=thrs
    )
    ps = np.full((7, *base.precision.shape[1:4]), np.nan)  # [7, R, K, A]
    if evaluation is not None:
        for row, iou in ((0, 0.75), (1, 0.5)):
            t = int(np.argmin(np.abs(evaluation.iou_thrs - iou)))
            ps[row] = evaluation.precision[t, :, :, :, -1]
        ps[2] = base.precision[0, :, :, :, 0]
    else:
        ps[:3] = base.precision[:, :, :, :, 0]
    for row, same_super in ((3, True), (4, False)):
        copies = _crowd_copies(dataset, detections, image_ids, same_super)
        modified = {**dataset, "annotations": list(dataset["annotations"]) + copies}
        ev = run_cocoeval(
            modified, [dict(d) for d in detections], backend, image_ids, max_dets=[100], iou_thrs=[0.1]
        )
        ps[row] = ev.precision[0, :, :, :, 0]
    missing = ps[0] == -1  # [R, K, A]: no ground truth of that class and size
    ps[ps == -1] = 0
    ps[5] = (ps[4] > 0).astype(np.float64)
    ps[6] = 1.0
    ps[:, missing] = np.nan
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset["categories"]}
    return ErrorCurves(ps, np.asarray(base.rec_thrs), base.cat_ids, [names[c] for c in base.cat_ids])
