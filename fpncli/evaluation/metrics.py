"""COCO box metrics of a list of detections: the numbers, the per-class table, metrics.json,
PR curves and (``--analyze``) the error analysis. :mod:`fpncli.evaluation.evaluate` runs a
model to get the detections; this module needs neither torch nor a model."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpncli.atomic import write_json
from fpncli.evaluation.checks import GroundTruth, check_results, load_ground_truth
from fpncli.evaluation.coco_eval import METRIC_KEYS, resolve_backend, run_cocoeval
from fpncli.evaluation.per_class import per_class_table

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.evaluation.analysis.report import AnalyzeOptions

PER_CLASS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def evaluate_results(
    annotation_file: str | os.PathLike,
    results: str | os.PathLike | Sequence[dict[str, Any]],
    *,
    out_dir: str | os.PathLike | None = None,
    plots: bool = False,
    backend: str = "auto",
    image_ids: Iterable[int] | None = None,
    weights: str | None = None,
    extra: dict[str, Any] | None = None,
    analyze: AnalyzeOptions | None = None,
) -> dict[str, Any]:
    """COCO box metrics of a results list (or results JSON file) against an annotation file.

    Args:
        annotation_file: COCO annotations (``images``, ``annotations``, ``categories``).
        results: COCO results, ``[{"image_id", "category_id", "bbox": [x, y, w, h] (absolute
            pixels), "score"}]``, or the path of such a JSON file. Detections that cannot be
            evaluated (unknown image or category, bad bbox/score) are skipped and reported
            under ``problems``; when none can be, :class:`FpnError`.
        out_dir: when given, ``metrics.json`` (and with ``plots`` the PR curves) go there.
        plots: save precision-recall curves (``pr_overall.png``, ``pr_per_class.png``).
        backend: ``auto`` (faster-coco-eval if installed, else pycocotools), ``pycocotools``
            or ``faster-coco-eval``; all give the same numbers.
        image_ids: evaluate only these images (default: all images of the annotation file).
        weights: recorded in the metrics (what produced the results).
        extra: more keys to record in the metrics (e.g. ``missing_images``).
        analyze: also run ``fpn eval --analyze``'s error analysis into ``out_dir``
            (:func:`fpncli.evaluation.analysis.report.analyze`); its report is returned under
            ``analysis``.

    Returns:
        The metrics (the schema of ``metrics.json``): the 12 COCO numbers under
        :data:`METRIC_KEYS` (fractions in 0..1, -1 where COCO gives -1), ``per_class`` (one
        dict per category: ``category_id``, ``name``, ``instances``, ``crowd``, ``detections``
        and :data:`PER_CLASS_KEYS`, best AP first), ``annotation_file``, ``results_file``,
        ``weights``, ``num_images``, ``num_detections``, ``backend``, ``problems``.
    """
    gt = load_ground_truth(annotation_file)
    return _evaluate(
        gt,
        results,
        out_dir=out_dir,
        plots=plots,
        backend=backend,
        image_ids=image_ids,
        weights=weights,
        extra=extra,
        analyze=analyze,
    )


def _evaluate(
    gt: GroundTruth,
    results: Any,
    *,
    out_dir,
    plots,
    backend,
    image_ids,
    weights,
    extra,
    analyze=None,
    levels=None,
) -> dict[str, Any]:
    backend = resolve_backend(backend)
    detections, problems, source = check_results(results, gt.coco)
    ids = set(gt.coco.images) if image_ids is None else set(image_ids) & set(gt.coco.images)
    ev = run_cocoeval(gt.dataset, detections, backend, image_ids=ids)
    metrics: dict[str, Any] = dict(zip(METRIC_KEYS, ev.stats))
    metrics["per_class"] = per_class_table(ev, gt.coco, detections, ids)
    metrics.update(
        {
            "annotation_file": str(gt.coco.path),
            "results_file": source if isinstance(results, (str, os.PathLike)) else None,
            "weights": weights,
            "num_images": len(ids),
            "num_detections": sum(1 for d in detections if d["image_id"] in ids),
            "backend": backend,
            "problems": gt.notes + problems,
        }
    )
    if extra:
        metrics.update(extra)
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "metrics.json", metrics)
        if plots:
            from fpncli.viz.pr_curves import plot_pr_curves

            names = {r["category_id"]: r["name"] for r in metrics["per_class"]}
            metrics["plots"] = [
                str(p)
                for p in plot_pr_curves(
                    ev.precision[:, :, :, 0, -1],
                    ev.rec_thrs,
                    ev.iou_thrs,
                    [names[c] for c in ev.cat_ids],
                    out,
                )
            ]
            write_json(out / "metrics.json", metrics)
    if analyze is not None and out_dir is not None:
        from fpncli.evaluation.analysis.report import analyze as run_analysis

        metrics["analysis"] = run_analysis(gt.dataset, detections, ids, out_dir, analyze, levels=levels)
    return metrics
