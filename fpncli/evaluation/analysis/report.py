"""Run every analysis of ``fpn eval --analyze`` and write ``analysis.json``, ``analysis/``
(pictures, ``errors.csv``, the ``worst/`` gallery) beside ``metrics.json``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpncli.atomic import write_json, write_text
from fpncli.data.coco import safe_image_path
from fpncli.errors import FpnError
from fpncli.evaluation.analysis.arrays import SIZE_NAMES, Packed, pack
from fpncli.evaluation.analysis.confusion import confusion_matrix
from fpncli.evaluation.analysis.error_curves import AREAS, TYPES, error_curves
from fpncli.evaluation.analysis.levels import level_breakdown
from fpncli.evaluation.analysis.tide import ERROR_TYPES, OUTCOMES, TP, tide
from fpncli.evaluation.analysis.worst_images import error_rows, rows_to_csv, worst_images

FOLDER = "analysis"


@dataclass
class AnalyzeOptions:
    """``fpn eval --analyze`` settings.

    Attributes:
        conf_thr, conf_iou: the confusion matrix's score threshold and pairing IoU.
        worst: how many worst images to draw.
        images: the folder the annotation file's ``file_name`` entries are relative to (the
            gallery is drawn only with it).
        worst_classes: classes with their own error-curve picture.
    """

    conf_thr: float = 0.3
    conf_iou: float = 0.5
    worst: int = 20
    images: Path | None = None
    worst_classes: int = 4

    def check(self) -> None:
        if not 0.0 <= self.conf_thr <= 1.0:
            raise FpnError(f"--conf-thr must be in 0..1, got {self.conf_thr}")
        if not 0.0 < self.conf_iou <= 1.0:
            raise FpnError(f"--conf-iou must be in (0, 1], got {self.conf_iou}")
        if self.worst < 0:
            raise FpnError(f"--worst must be 0 or more, got {self.worst}")


@dataclass
class ModelLevels:
    """Per detection (the order of the evaluated results list) the RPN and RoI level k, and
    what the model's input scale and RoI levels are (see :mod:`.levels`)."""

    rpn_level: np.ndarray
    roi_level: np.ndarray
    min_size: int
    max_size: int
    roi_range: tuple[int, int]


def _input_scale(dataset: dict[str, Any], packed: Packed, min_size: int, max_size: int) -> np.ndarray:
    size = {im["id"]: (im.get("height") or 0, im.get("width") or 0) for im in dataset["images"]}
    out = np.ones(packed.num_images)
    for i, img in enumerate(packed.image_ids):
        h, w = size.get(int(img), (0, 0))
        if h and w:
            out[i] = min(min_size / min(h, w), max_size / max(h, w))
    return out


def analyze(
    dataset: dict[str, Any],
    detections: list[dict[str, Any]],
    image_ids: set[int],
    out_dir: str | Path,
    options: AnalyzeOptions,
    *,
    levels: ModelLevels | None = None,
) -> dict[str, Any]:
    """Every analysis of ``detections`` (checked COCO results) against ``dataset`` (a checked
    annotation dataset) on ``image_ids``; writes ``analysis.json`` and ``analysis/`` into
    ``out_dir`` and returns what ``analysis.json`` holds."""
    out = Path(out_dir)
    folder = out / FOLDER
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    packed = pack(dataset, detections, image_ids)
    result = tide(packed)
    seconds["tide"] = time.perf_counter() - t0
    cats = [c["id"] for c in dataset["categories"]]
    names = [str(c.get("name", c["id"])) for c in dataset["categories"]]
    t = time.perf_counter()
    confusion = confusion_matrix(packed, cats, names, options.conf_thr, options.conf_iou)
    seconds["confusion"] = time.perf_counter() - t
    t = time.perf_counter()
    curves = error_curves(dataset, detections, image_ids)
    seconds["error_curves"] = time.perf_counter() - t
    t = time.perf_counter()
    worst = worst_images(packed, result, options.worst)
    rows = error_rows(packed, result, dataset)
    seconds["worst_images"] = time.perf_counter() - t
    report: dict[str, Any] = {
        "tide": result.to_json(),
        "tide_ap50": round(result.ap50, 4),
        "tide_counts": result.counts,
        "tide_settings": {"foreground_iou": 0.5, "background_iou": 0.1, "max_dets": 100},
        "error_curves": curves.to_json(options.worst_classes),
        "confusion": confusion.to_json(),
        "worst_images": [vars(w) for w in worst],
        "errors_csv": str(folder / "errors.csv"),
        "levels": None,
        "notes": [],
    }
    if levels is not None:
        rpn = np.full(len(packed.dt_index), -1, dtype=np.int64)
        roi = np.full(len(packed.dt_index), -1, dtype=np.int64)
        if len(levels.rpn_level) == len(detections):
            rpn, roi = levels.rpn_level[packed.dt_index], levels.roi_level[packed.dt_index]
        else:
            report["notes"].append(
                "levels were not recorded for every detection; the level breakdown is left out"
            )
        if (rpn >= 0).any():
            scale = _input_scale(dataset, packed, levels.min_size, levels.max_size)
            report["levels"] = level_breakdown(packed, result, rpn, roi, scale, levels.roi_range).to_json()
        elif not report["notes"] and len(detections):
            report["notes"].append("this model does not report levels (an exported model runs as one graph)")
    seconds["total_analysis"] = time.perf_counter() - t0
    t = time.perf_counter()
    write_text(folder / "errors.csv", rows_to_csv(rows))
    report["pictures"] = [str(p) for p in _pictures(folder, result, curves, confusion, report)]
    report["gallery"] = [
        str(p) for p in _gallery(folder / "worst", dataset, packed, result, worst, options, report)
    ]
    seconds["pictures"] = time.perf_counter() - t
    report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    write_json(out / "analysis.json", report)
    return report


def _pictures(folder: Path, result: Any, curves: Any, confusion: Any, report: dict[str, Any]) -> list[Path]:
    from fpncli.viz.analysis import (
        save_confusion,
        save_error_curve_panels,
        save_error_curves,
        save_level_table,
        save_tide_bars,
    )

    paths = [
        save_tide_bars(result.errors, result.special, f"TIDE: AP50 {result.ap50:.1f}", folder / "tide.png")
    ]
    for a, area in enumerate(AREAS):
        if np.isnan(curves.precision[0, 0, :, a]).all():
            continue
        title = f"error analysis, {area} objects"
        paths.append(
            save_error_curves(curves.recall, curves.overall(a), TYPES, title, folder / f"curves_{area}.png")
        )
    for k in curves.worst_classes(4):
        panels = [
            (area, None if np.isnan(curves.precision[0, 0, k, a]) else curves.precision[:, :, k, a])
            for a, area in enumerate(AREAS)
        ]
        safe = "".join(ch if ch.isalnum() else "_" for ch in curves.names[k])
        title = f"error analysis: {curves.names[k]} (one of the worst classes by C50)"
        paths.append(
            save_error_curve_panels(curves.recall, panels, TYPES, title, folder / f"curves_class_{safe}.png")
        )
    labels = [*confusion.names, "background"]
    title = (
        f"confusion: colour = share of the row, number = count "
        f"(score >= {confusion.score_thr}, IoU >= {confusion.iou_thr})"
    )
    paths.append(save_confusion(confusion.matrix, labels, title, folder / "confusion.png"))
    lv = report.get("levels")
    if lv:
        for key, what in (("rpn_level", "RPN level of the proposal"), ("roi_level", "RoI level pooled from")):
            rows = [r for r in lv["rows"] if sum(lv[key][r].values())]  # Miss has no RPN level
            table = np.array([[lv[key][r][c] for c in lv["levels"]] for r in rows]).reshape(len(rows), -1)
            title = f"{what}, per outcome and size" + (
                " (Miss: Eq. 1 level of the object)" if key == "roi_level" else ""
            )
            paths.append(
                save_level_table(table, rows, lv["levels"], title, folder / f"levels_{key.split('_')[0]}.png")
            )
    return paths


def _gallery(
    folder: Path,
    dataset: dict[str, Any],
    packed: Packed,
    result: Any,
    worst: list[Any],
    options: AnalyzeOptions,
    report: dict[str, Any],
) -> list[Path]:
    """The worst images drawn: objects white (missed ones magenta), detections scored at
    least ``conf_thr`` in their outcome's colour."""
    if not worst:
        return []
    if options.images is None:
        report["notes"].append("give --images to draw the worst images (their list is in analysis.json)")
        return []
    from PIL import Image, ImageOps

    from fpncli.viz.analysis import draw_error_image

    files = {im["id"]: im.get("file_name", "") for im in dataset["images"]}
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset["categories"]}
    position = {int(i): k for k, i in enumerate(packed.image_ids)}
    written = []
    for rank, w in enumerate(worst, start=1):
        i = position[w.image_id]
        try:
            path = safe_image_path(options.images, files[w.image_id])
            with Image.open(path) as im:
                image = ImageOps.exif_transpose(im).convert("RGB")
        except (FpnError, OSError) as exc:
            report["notes"].append(f"worst image {w.image_id} not drawn: {exc}")
            continue
        boxes, kinds, labels = [], [], []
        for g in np.flatnonzero((packed.gt_img == i) & ~packed.gt_crowd):
            x, y, bw, bh = packed.gt_box[g]
            boxes.append([x, y, x + bw, y + bh])
            kinds.append("Miss" if result.gt_missed[g] else "GT")
            labels.append(
                f"{names.get(int(packed.gt_cls[g]), '')}" + (" MISSED" if result.gt_missed[g] else "")
            )
        for d in np.flatnonzero(
            (packed.dt_img == i) & (result.dt_outcome >= TP) & (packed.dt_score >= options.conf_thr)
        ):
            x, y, bw, bh = packed.dt_box[d]
            boxes.append([x, y, x + bw, y + bh])
            kind = OUTCOMES[result.dt_outcome[d]]
            kinds.append(kind)
            labels.append(f"{kind} {names.get(int(packed.dt_cls[d]), '')} {packed.dt_score[d]:.2f}")
        errors = ", ".join(f"{k} {v}" for k, v in w.errors.items()) or "none"
        title = f"#{rank} image {w.image_id}: AP50 {w.ap50:.1f}, {w.objects} objects; errors: {errors}"
        page = draw_error_image(image, boxes, kinds, labels, title)
        target = folder / f"{rank:02d}_{w.image_id}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        page.save(target, quality=88)
        written.append(target)
    return written


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) lines for the terminal table."""
    tide_ = report["tide"]
    rows = [
        ("TIDE AP50", f"{report['tide_ap50']:.2f}"),
        ("main dAP", "  ".join(f"{k} {tide_[k]:.2f}" for k in ERROR_TYPES)),
        ("special dAP", f"FalsePos {tide_['FalsePos']:.2f}  FalseNeg {tide_['FalseNeg']:.2f}"),
        ("error counts", "  ".join(f"{k} {v}" for k, v in report["tide_counts"].items())),
    ]
    curves = report["error_curves"]["overall"]["all"]
    rows.append(("COCO curves (all)", "  ".join(f"{k} {v:.3f}" for k, v in curves.items())))
    top = report["confusion"]["top_confusions"][:3]
    if top:
        rows.append(
            ("top confusions", "; ".join(f"{c['true']} -> {c['predicted']} ({c['count']})" for c in top))
        )
    worst = report["worst_images"][:3]
    if worst:
        rows.append(("worst images", ", ".join(f"{w['image_id']} (AP50 {w['ap50']:.1f})" for w in worst)))
    lv = report.get("levels")
    if lv:
        for size in SIZE_NAMES:
            key = f"TP {size}"
            if key in lv["rpn_level"]:
                counts = lv["rpn_level"][key]
                rows.append((f"TP {size}: RPN level", "  ".join(f"{k} {v}" for k, v in counts.items() if v)))
    return rows
