"""`fpn inspect-levels --dataset`: whether a dataset's boxes fit the pyramid's anchors and levels.

Everything here returns the plain-data reports of :mod:`fpncli.viz.reports` (dataclasses
with ``to_json()``); pictures are drawn by :mod:`fpncli.viz.levels` and tables by the CLI.

A dataset (:func:`inspect_dataset`) needs no weights: the configuration's model skeleton is
built on PyTorch's ``meta`` device (no memory, no initialisation) only to read the levels,
strides and anchor sizes it declares, and every ground-truth box gets

* its level by FPN Eqn. (1) (:func:`fpncli.modeling.levels.assign_level`), measured in
  the model's input pixels (after resizing), as the RoI pooler measures it;
* the best IoU any anchor of the model's grid reaches with it (:func:`best_anchor_iou`).

Why the best anchor is found in O(1) per box and anchor shape: an anchor of a given shape
centred at ``(cx, cy)`` overlaps the box by ``ox(cx) * oy(cy)``, where ``ox`` is the overlap
of two intervals, a trapezoid in ``cx`` symmetric about the centre-aligned position and
non-increasing away from it (same for ``oy``). IoU = I / (A_box + A_anchor - I) grows with
I, so the best anchor of that shape is at the grid column nearest the aligned position
times the grid row nearest it: one of the two grid points either side on each axis
(clamped to the grid). ``tests/analysis/test_inspect_levels.py`` checks this against the IoU matrix
with every anchor of torchvision's generator on random boxes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from fpncli.analysis.level_views import base_anchors
from fpncli.config import ModelConfig
from fpncli.errors import FpnError
from fpncli.modeling.levels import (
    assign_level,
    level_name,
    level_range,
    padded_size,
    resized_size,
)
from fpncli.runtime.events import ProgressFn, step
from fpncli.viz.reports import (
    POSITIVE_IOU,
    USABLE_IOU,
    AnchorFitReport,
    AnchorLayout,
    AnchorShape,
    Coverage,
)

# COCO's size buckets, on the annotation's area in original image pixels.
SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))
# A verdict line is written when a cause leaves at least this share of boxes without a
# usable anchor.
VERDICT_SHARE = 0.05


# --------------------------------------------------------------------------------------
# A dataset
# --------------------------------------------------------------------------------------


def anchor_layout(cfg: ModelConfig) -> AnchorLayout:
    """Levels, strides and anchor shapes of the model ``cfg`` describes.

    The model is built on the ``meta`` device (no memory, no weights, ~0.2 s for R50-FPN)
    so that the neck's declared levels and the detector's per-level anchor sizes are read
    from the model code itself, whatever the neck.
    """
    from fpncli.modeling.detector import build_model

    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except ValueError as exc:  # e.g. 2 anchor sizes for 5 RPN levels
        raise FpnError(f"bad model configuration: {exc}") from None
    levels = model.levels
    sizes = {name: [int(s) for s in group] for name, group in zip(model.rpn_levels, model.anchor_sizes())}
    shapes = []
    for name in model.rpn_levels:
        base = base_anchors(model, name)  # ratio-major: all sizes of ratio 0, then ratio 1, ...
        combos = [(ratio, size) for ratio in cfg.aspect_ratios for size in sizes[name]]
        for (ratio, size), row in zip(combos, base.tolist()):
            shapes.append(AnchorShape(name, levels[name].stride, size, float(ratio), tuple(row)))
    return AnchorLayout(
        model.config,
        levels,
        model.rpn_levels,
        model.roi_levels,
        sizes,
        shapes,
        model.size_divisible,
    )


def best_anchor_iou(
    boxes: np.ndarray, padded: np.ndarray, layout: AnchorLayout
) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU of each box with any anchor of the model's grid.

    Args:
        boxes: ``float[N, 4]`` xyxy in the model's input pixels (after resizing), positive area.
        padded: ``int[N, 2]`` the padded input ``(h, w)`` of each box's image: level ``l``
            has ``ceil(h / stride) x ceil(w / stride)`` cells and anchors centred at
            ``(col * step, row * step)``: ``step`` is the stride, or with the config's
            ``anchor_grid="torchvision"`` ``padded // cells`` per axis, as the model's anchor
            generator places them. (The image padded
            alone, as at inference; a training batch pads to its largest image, which only
            adds anchors beyond this image's right and bottom edges.)
        layout: from :func:`anchor_layout`.

    Returns:
        ``(iou float[N], shape_index int[N])``: the best IoU and which of ``layout.shapes``
        reached it. O(N * shapes) time and memory (see the module docstring).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    padded = np.asarray(padded, dtype=np.int64).reshape(-1, 2)
    n = len(boxes)
    best = np.zeros(n)
    which = np.zeros(n, dtype=np.int64)
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    torchvision_grid = layout.config.anchor_grid == "torchvision"
    for index, shape in enumerate(layout.shapes):
        ax1, ay1, ax2, ay2 = shape.offsets
        s = shape.stride
        overlap = []
        for axis, (a1, a2) in enumerate(((ax1, ax2), (ay1, ay2))):
            b1, b2 = boxes[:, axis], boxes[:, axis + 2]
            side = padded[:, 1 - axis]  # padded is (h, w): x uses w
            cells = np.ceil(side / s)
            # torchvision's grid spaces anchors by padded size // cells, which is not the
            # level's stride where the map was rounded up (P6 of a 96-px side: 2 cells, 48 px).
            step = np.floor(side / cells) if torchvision_grid else np.full(n, float(s))
            aligned = (b1 + b2) / 2 - (a1 + a2) / 2  # centre where the anchor lines up with the box
            lower = np.clip(np.floor(aligned / step), 0, cells - 1) * step
            upper = np.clip(np.floor(aligned / step) + 1, 0, cells - 1) * step
            o_lower = np.clip(np.minimum(b2, lower + a2) - np.maximum(b1, lower + a1), 0, None)
            o_upper = np.clip(np.minimum(b2, upper + a2) - np.maximum(b1, upper + a1), 0, None)
            overlap.append(np.maximum(o_lower, o_upper))
        inter = overlap[0] * overlap[1]
        iou = inter / (box_area + (ax2 - ax1) * (ay2 - ay1) - inter)
        better = iou > best
        best[better] = iou[better]
        which[better] = index
    return best, which


def _coverage(name: str, best: np.ndarray) -> Coverage:
    return Coverage(name, int(best.size), int((best >= POSITIVE_IOU).sum()), int((best >= USABLE_IOU).sum()))


def inspect_dataset(
    annotations: str | os.PathLike, cfg: ModelConfig, progress: ProgressFn | None = None
) -> AnchorFitReport:
    """Check every ground-truth box of a COCO annotation file against the pyramid of ``cfg``.

    Crowd regions (``iscrowd``) are left out, as COCO evaluation ignores them; boxes with
    zero width or height, and boxes of images without ``width``/``height``, are counted in
    ``skipped`` (with a few annotation ids) instead of analysed.

    Raises:
        FpnError: unreadable or empty annotation file, or no box left to analyse.
    """
    from fpncli.data.coco import load_coco

    path = Path(annotations)
    if path.is_file() and path.stat().st_size == 0:
        raise FpnError(f"{path}: empty file (0 bytes), expected COCO annotations")
    step(progress, f"reading {path}")
    coco = load_coco(path)
    layout = anchor_layout(cfg)
    skipped = {"zero_area": 0, "crowd": 0, "unknown_image_size": 0, "invalid": len(coco.problems)}
    examples: dict[str, list[str]] = {key: [] for key in skipped}
    examples["invalid"] = coco.problems[:5]
    rows: list[tuple[float, float, float, float, float, int, int]] = []
    for image_id, anns in coco.annotations.items():
        record = coco.images[image_id]
        width, height = record.get("width"), record.get("height")
        known = (
            isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0
        )
        size = (int(height), int(width)) if known else (0, 0)  # type: ignore[arg-type]  # numbers when known
        for ann in anns:
            reason = None
            x, y, w, h = (float(v) for v in ann["bbox"])
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                reason = "invalid"
            elif ann.get("iscrowd"):
                reason = "crowd"
            elif w <= 0 or h <= 0:
                reason = "zero_area"
            elif not known:
                reason = "unknown_image_size"
            if reason is not None:
                skipped[reason] += 1
                if len(examples[reason]) < 5:
                    what = "non-finite bbox" if reason == "invalid" else reason.replace("_", " ")
                    examples[reason].append(f"annotation {ann.get('id', '?')} (image {image_id}): {what}")
                continue
            area = ann.get("area")
            area = float(area) if isinstance(area, (int, float)) and area > 0 else w * h
            rows.append((x, y, x + w, y + h, area, *size))
    total = sum(len(a) for a in coco.annotations.values()) + len(coco.problems)
    if not rows:
        detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items() if v)
        raise FpnError(
            f"{path}: no boxes to inspect ({len(coco.images)} images, {total} annotations"
            + (f": {detail}" if detail else "")
            + ")"
        )
    step(progress, f"matching {len(rows):,} boxes against the anchors")
    data = np.asarray(rows, dtype=np.float64)
    boxes, area = data[:, :4], data[:, 4]
    img_hw = data[:, 5:7].astype(np.int64)
    # Resize per distinct image size (few in practice), exactly as the transform does.
    sizes = {}
    for h, w in {(int(a), int(b)) for a, b in img_hw}:
        rh, rw = resized_size(h, w, cfg.min_size, cfg.max_size)
        sizes[(h, w)] = (rh, rw, *padded_size(rh, rw, layout.size_divisible))
    resized = np.asarray([sizes[(int(h), int(w))] for h, w in img_hw], dtype=np.float64)
    # torchvision's resize_boxes scales x by new_w / w and y by new_h / h.
    scale = np.stack([resized[:, 1] / img_hw[:, 1], resized[:, 0] / img_hw[:, 0]], axis=1)
    boxes_in = boxes * np.tile(scale, 2)
    best, which = best_anchor_iou(boxes_in, resized[:, 2:4], layout)
    lo, hi = level_range(layout.levels, layout.roi_levels)
    ks = assign_level(torch.from_numpy(boxes_in), lo, hi).numpy()
    level_names = np.asarray(
        [level_name(layout.levels, layout.roi_levels, int(k)) for k in range(lo, hi + 1)]
    )
    level = level_names[ks - lo]
    anchor_level = np.asarray([layout.shapes[i].level for i in range(len(layout.shapes))])[which]
    box_size = np.sqrt((boxes_in[:, 2] - boxes_in[:, 0]) * (boxes_in[:, 3] - boxes_in[:, 1]))

    level_rows = []
    for name, spec in layout.levels.items():
        cov = _coverage(name, best[level == name]).to_json()
        cov.update(
            {
                "stride": spec.stride,
                "anchor_sizes": layout.anchor_sizes.get(name, []),
                "best_anchor_boxes": int((anchor_level == name).sum()),
                "assigned_by_equation": name in layout.roi_levels,
            }
        )
        level_rows.append(cov)
    buckets = []
    for name, low, high in SIZE_BUCKETS:
        buckets.append(_coverage(name, best[(area >= low) & (area < high)]))
    overall = _coverage("all", best)
    verdict, fits = _verdict(layout, box_size, boxes_in, best, overall, skipped)
    return AnchorFitReport(
        path,
        len(coco.images),
        layout,
        box_size,
        area,
        best,
        level,
        anchor_level,
        level_rows,
        buckets,
        overall,
        skipped,
        {k: v for k, v in examples.items() if v},
        verdict,
        fits,
    )


def _pct(share: float) -> str:
    return f"{100 * share:.0f} %" if share >= 0.01 or share == 0 else f"{100 * share:.1f} %"


def _sizes_arg(sizes: list[int]) -> str:
    return ",".join(str(s) for s in sizes)


def _verdict(
    layout: AnchorLayout,
    box_size: np.ndarray,
    boxes: np.ndarray,
    best: np.ndarray,
    overall: Coverage,
    skipped: dict[str, int],
) -> tuple[list[str], bool]:
    """Plain-language lines; each problem names the setting that would change it."""
    cfg = layout.config
    n = best.size
    all_sizes = sorted({s for group in layout.anchor_sizes.values() for s in group})
    smallest, largest = all_sizes[0], all_sizes[-1]
    ratios = sorted(float(r) for r in cfg.aspect_ratios)
    flat = [s for name in layout.rpn_levels for s in layout.anchor_sizes[name]]
    unusable = best < USABLE_IOU
    too_small = unusable & (box_size < smallest)
    too_large = unusable & (box_size > largest)
    # height / width, the convention of torchvision's aspect ratios
    box_ratio = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])
    elongated = (
        unusable & ~too_small & ~too_large & ((box_ratio < ratios[0] / 2) | (box_ratio > ratios[-1] * 2))
    )
    lines: list[str] = []
    fits = True
    # Anchors closer together than ~4x their stride's worth of size rarely line up with a box
    # well enough for IoU >= 0.7 (the paper's are 8x: 32 px every 4 px on P2).
    strides = {name: layout.levels[name].stride for name in layout.rpn_levels}
    halved = [max(1, s // 2) for s in flat]
    halved_ok = len(layout.rpn_levels) > 1 and all(
        s >= 4 * strides[name] for name, s in zip(layout.rpn_levels, halved)
    )
    share = too_small.sum() / n
    if share >= VERDICT_SHARE:
        fits = False
        median = float(np.median(box_size[too_small]))
        fix = f"Use larger input images (--min-size {cfg.min_size * 2} --max-size {cfg.max_size * 2})"
        if halved_ok:
            fix += f" or smaller anchors (--anchor-sizes {_sizes_arg(halved)})"
        lines.append(
            f"{_pct(share)} of boxes are smaller than the smallest anchor can match (best IoU < "
            f"{USABLE_IOU} with every anchor; median {median:.0f} px after resizing, smallest anchor "
            f"{smallest} px). {fix}."
        )
    share = too_large.sum() / n
    if share >= VERDICT_SHARE:
        fits = False
        lines.append(
            f"{_pct(share)} of boxes are larger than the largest anchor can match (largest anchor "
            f"{largest} px). Use larger anchors (--anchor-sizes {_sizes_arg([s * 2 for s in flat])}) "
            f"or smaller input images (--min-size {max(1, cfg.min_size // 2)} --max-size {max(1, cfg.max_size // 2)})."
        )
    share = elongated.sum() / n
    if share >= VERDICT_SHARE:
        fits = False
        wider = sorted({*ratios, ratios[0] / 4, ratios[-1] * 4})
        lines.append(
            f"{_pct(share)} of boxes are more elongated than any anchor (aspect ratios h/w "
            f"{', '.join(f'{r:g}' for r in ratios)}). Add ratios (--aspect-ratios {','.join(f'{r:g}' for r in wider)})."
        )
    rest = unusable.sum() / n - (too_small.sum() + too_large.sum() + elongated.sum()) / n
    if rest >= VERDICT_SHARE:
        fits = False
        lines.append(
            f"{_pct(rest)} of boxes have no usable anchor although their size and shape are "
            f"within the anchors' range; a denser set of anchor sizes would help (--anchor-sizes)."
        )
    usable = overall.usable / n
    positive = overall.positive / n
    if positive < 0.2:
        fits = False
        density = min(s / strides[name] for name in layout.rpn_levels for s in layout.anchor_sizes[name])
        if density < 4:
            lines.append(
                f"Only {_pct(positive)} of boxes have a positive anchor (IoU >= {POSITIVE_IOU}): some "
                f"anchors are only {density:g}x their level's stride, too sparse to line up with boxes. "
                f"Keep each anchor size at least 4x its stride (--anchor-sizes) and enlarge the images "
                f"instead (--min-size)."
            )
        else:
            lines.append(
                f"Only {_pct(positive)} of boxes have a positive anchor (IoU >= {POSITIVE_IOU}); the "
                f"RPN then learns them from their best (low-quality) matches. Larger input images "
                f"(--min-size) make small boxes easier to match."
            )
    if fits:
        lines.insert(
            0,
            f"The pyramid fits this dataset: {_pct(usable)} of boxes have a usable anchor "
            f"(IoU >= {USABLE_IOU}) and {_pct(positive)} a positive one (IoU >= {POSITIVE_IOU}).",
        )
    else:
        lines.insert(
            0,
            f"The pyramid does not fit this dataset well: {_pct(1 - usable)} of boxes have no "
            f"usable anchor (IoU >= {USABLE_IOU}); {_pct(positive)} have a positive one "
            f"(IoU >= {POSITIVE_IOU}).",
        )
    if skipped.get("zero_area"):
        lines.append(
            f"{skipped['zero_area']} boxes have zero width or height and were left out; "
            f"fix or remove them in the annotation file."
        )
    return lines, fits
