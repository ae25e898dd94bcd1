"""The one place that drives COCOeval: backends, results conversion, box AP and proposal recall.

``fpn eval``, ``fpn detect --coco-results``, training's validation and ``fpn ablation`` all
go through here, so every figure fpncli prints comes from the same COCO API calls.

The numbers are pycocotools' ``COCOeval`` numbers on the same inputs. ``faster-coco-eval``
(the optional extra ``fast``: ``pip install "fpncli[fast]"``) implements the same matching
and accumulation in C++; ``backend="auto"`` uses it when it is installed and falls back to
pycocotools otherwise. ``tests/evaluation/test_eval_coco.py`` checks both against pycocotools' own
``COCOeval``.

This module imports neither torch nor matplotlib.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fpncli.data.coco import xyxy_to_xywh
from fpncli.errors import FpnError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# The 12 numbers of COCOeval.summarize() for boxes, in its order.
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
METRIC_DESCRIPTIONS = {
    "AP": "AP   IoU=0.50:0.95  area=all     maxDets=100",
    "AP50": "AP   IoU=0.50       area=all     maxDets=100",
    "AP75": "AP   IoU=0.75       area=all     maxDets=100",
    "APs": "AP   IoU=0.50:0.95  area=small   maxDets=100",
    "APm": "AP   IoU=0.50:0.95  area=medium  maxDets=100",
    "APl": "AP   IoU=0.50:0.95  area=large   maxDets=100",
    "AR1": "AR   IoU=0.50:0.95  area=all     maxDets=1",
    "AR10": "AR   IoU=0.50:0.95  area=all     maxDets=10",
    "AR100": "AR   IoU=0.50:0.95  area=all     maxDets=100",
    "ARs": "AR   IoU=0.50:0.95  area=small   maxDets=100",
    "ARm": "AR   IoU=0.50:0.95  area=medium  maxDets=100",
    "ARl": "AR   IoU=0.50:0.95  area=large   maxDets=100",
}
BACKENDS = ("pycocotools", "faster-coco-eval")
# Proposal recall: (name in results, COCOeval area index, maxDets index).
RECALL_KEYS = (("AR100", 0, 0), ("AR1k", 0, 1), ("AR1k_s", 1, 1), ("AR1k_m", 2, 1), ("AR1k_l", 3, 1))


# --------------------------------------------------------------------------- backends


def available_backends() -> list[str]:
    """The installed evaluation backends, fastest first."""
    found = []
    for name, module in (("faster-coco-eval", "faster_coco_eval"), ("pycocotools", "pycocotools.cocoeval")):
        try:
            __import__(module)
        except ImportError:
            continue
        found.append(name)
    return found


def resolve_backend(backend: str = "auto") -> str:
    """``auto`` -> faster-coco-eval when installed, else pycocotools; a named one must be installed."""
    backend = (backend or "auto").strip().lower().replace("_", "-")
    if backend in ("fast", "faster"):
        backend = "faster-coco-eval"
    found = available_backends()
    if backend == "auto":
        if not found:
            raise FpnError("no COCO evaluation backend installed: pip install pycocotools")
        return found[0]
    if backend not in BACKENDS:
        raise FpnError(f"unknown evaluation backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if backend not in found:
        hint = 'pip install "fpncli[fast]"' if backend == "faster-coco-eval" else "pip install pycocotools"
        raise FpnError(f"evaluation backend {backend!r} is not installed ({hint})")
    return backend


# --------------------------------------------------------------------------- running COCOeval


@dataclass
class CocoEvaluation:
    stats: list[float]  # the 12 numbers
    precision: np.ndarray  # [T, R, K, A, M] as in COCOeval.eval["precision"] (-1 = no GT)
    recall: np.ndarray  # [T, K, A, M]
    iou_thrs: np.ndarray  # [T]
    rec_thrs: np.ndarray  # [R]
    cat_ids: list[int]  # K, the order of the class axis


def run_cocoeval(
    dataset: dict[str, Any],
    detections: list[dict],
    backend: str = "auto",
    image_ids: Iterable[int] | None = None,
    *,
    class_agnostic: bool = False,
    max_dets: Sequence[int] | None = None,
    iou_thrs: Sequence[float] | None = None,
) -> CocoEvaluation:
    """COCOeval (``iouType="bbox"``) of ``detections`` against a COCO ``dataset`` dict.

    Args:
        dataset: a parsed annotation file (``images``, ``annotations``, ``categories``).
        detections: checked COCO results (fresh dicts: the backends add keys to them).
        backend: ``auto``, ``pycocotools`` or ``faster-coco-eval``.
        image_ids: evaluate only these images (default: every image of ``dataset``).
        class_agnostic: ``useCats = 0`` (proposals: any box may match any object).
        max_dets: COCOeval's ``maxDets`` (default ``[1, 10, 100]``); ``stats`` holds the 12
            standard numbers only with the default.
        iou_thrs: COCOeval's ``iouThrs`` (default 0.50:0.05:0.95; error analysis uses others).

    Everything the backends print is captured: the caller owns the output.
    """
    import numpy as np

    backend = resolve_backend(backend)
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    standard = (max_dets is None or list(max_dets) == [1, 10, 100]) and iou_thrs is None
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"info": {}, **dataset}
        gt.createIndex()
        if detections:
            dt = gt.loadRes(detections)
        else:  # pycocotools' loadRes cannot take an empty list; this is what it would build
            dt = COCO()
            dt.dataset = {
                "info": {},
                "images": list(dataset["images"]),
                "categories": list(dataset["categories"]),
                "annotations": [],
            }
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        if class_agnostic:
            ev.params.useCats = 0
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        ev.params.imgIds = sorted(
            set(image_ids) if image_ids is not None else {im["id"] for im in dataset["images"]}
        )
        ev.evaluate()
        ev.accumulate()
        if standard:
            ev.summarize()
    return CocoEvaluation(
        [float(v) for v in list(ev.stats)[:12]] if standard else [],
        np.asarray(ev.eval["precision"]),
        np.asarray(ev.eval["recall"]),
        np.asarray(ev.params.iouThrs),
        np.asarray(ev.params.recThrs),
        [int(c) for c in ev.params.catIds],
    )


def detections_to_coco(
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    labels: Sequence[int],
    image_id: int,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """One image's detections as COCO results.

    Args:
        boxes: ``[N, 4]`` xyxy, absolute pixels of the original image.
        scores: ``[N]`` in 0..1.
        labels: ``[N]`` the model's contiguous labels 1..K (0 = background never appears).
        image_id: the annotation file's id of the image.
        category_ids: ``ModelConfig.category_ids``: label ``i`` is ``category_ids[i - 1]``.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``; boxes rounded to
        0.01 px and scores to 1e-5 (results files stay small; the evaluation uses the same
        rounded values as the file).
    """
    out = []
    for box, score, label in zip(boxes, scores, labels):
        label = int(label)
        if not 1 <= label <= len(category_ids):
            continue
        cid = int(category_ids[label - 1])
        out.append(
            {
                "image_id": image_id,
                "category_id": cid,
                "bbox": [round(float(v), 2) for v in xyxy_to_xywh([float(b) for b in box])],
                "score": round(float(score), 5),
            }
        )
    return out


def proposal_recall(
    dataset: dict[str, Any],
    proposals: Mapping[int, Sequence[Sequence[float]]],
    max_dets: tuple[int, int] = (100, 1000),
    backend: str = "auto",
) -> dict[str, float]:
    """COCO average recall of class-agnostic proposals.

    Args:
        dataset: a parsed COCO annotation file (``images``, ``annotations``, ``categories``).
        proposals: ``image_id -> [[x1, y1, x2, y2], ...]`` in pixels, best first. Images of
            ``dataset`` missing here count as having no proposals.
        max_dets: the two proposal budgets (AR@100 and AR@1000 in the paper).
        backend: evaluation backend (see :func:`resolve_backend`).

    Returns:
        ``AR100``, ``AR1k``, ``AR1k_s``, ``AR1k_m``, ``AR1k_l`` as fractions (IoU 0.50:0.95;
        -1 where a size has no ground truth), plus ``num_proposals``.
    """
    cat_id = dataset["categories"][0]["id"] if dataset.get("categories") else 1
    dets = []
    for image_id, boxes in proposals.items():
        n = len(boxes)
        for rank, (x1, y1, x2, y2) in enumerate(boxes):
            # Scores only carry the RPN's order (which the maxDets cut reads).
            dets.append(
                {
                    "image_id": int(image_id),
                    "category_id": cat_id,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": 1.0 - rank / max(n, 1),
                }
            )
    ev = run_cocoeval(dataset, dets, backend, class_agnostic=True, max_dets=list(max_dets))
    recall = ev.recall  # [T, K=1, A, M]
    out: dict[str, float] = {}
    for key, area, m in RECALL_KEYS:
        values = recall[:, 0, area, m]
        values = values[values > -1]
        out[key] = float(values.mean()) if values.size else -1.0
    out["num_proposals"] = len(dets)
    return out
