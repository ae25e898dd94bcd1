"""``fpn data check``: :mod:`fpncli.data.check`'s findings for every split of a COCO dataset,
plus the box-size histogram with the FPN level each size maps to.

The levels come from ``fpn inspect-levels --coco``'s dataset fit
(:func:`fpncli.analysis.inspect_levels.run_anchor_fit`): each box is measured after the
model's resizing (``--min-size`` / ``--max-size``) and given its level by FPN Eqn. (1),
``k = floor(4 + log2(sqrt(w h) / 224))`` clamped to the RoI levels. The histogram's bins are
224 · 2^j px wide apart (…, 56, 112, 224, 448, …), the edges of Eqn. (1), so each bin falls on
one level.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fpncli.analysis.inspect_levels import InspectOptions, run_anchor_fit
from fpncli.data.check import SplitCheck, check_coco
from fpncli.data.convert.common import Progress
from fpncli.errors import FpnError
from fpncli.viz.reports import AnchorFitReport

# Bin edges in the model's input pixels: 224 * 2^j, the level boundaries of Eqn. (1).
EDGES = (0.0, 7.0, 14.0, 28.0, 56.0, 112.0, 224.0, 448.0, 896.0, 1792.0, math.inf)


@dataclass
class DatasetCheck:
    """Every split's :class:`~fpncli.data.check.SplitCheck` and the model sizes used."""

    target: Path
    min_size: int
    max_size: int
    splits: dict[str, SplitCheck] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.splits.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "ok": self.ok,
            "model_input": {"min_size": self.min_size, "max_size": self.max_size},
            "splits": {name: s.to_json() for name, s in self.splits.items()},
        }


def _targets(target: Path, images: Path | None, read_images: bool) -> list[tuple[str, Path, Path]]:
    """``(split, annotation file, images folder)``: a dataset root, or one file + ``images``."""
    if target.is_dir():
        if images is not None:
            raise FpnError("--images goes with an annotation file, not a dataset folder")
        from fpncli.data.convert.coco_in import annotation_files

        return annotation_files(target)
    if not target.is_file():
        raise FpnError(f"{target}: no such file or folder")
    split = target.stem.removeprefix("instances_")
    if images is None:
        guess = target.parent.parent / split
        if not guess.is_dir() and read_images:
            from fpncli.data.check import read_lists

            read_lists(target)  # a file that is no COCO file says so first, not "give --images"
            raise FpnError(f"{target}: give its images folder with --images (no {guess})")
        images = guess
    return [(split, target, images)]


def level_histogram(box_size: np.ndarray, level: np.ndarray) -> list[dict[str, Any]]:
    """Rows ``{"low", "high", "boxes", "share", "level"}`` over :data:`EDGES`, from the first to
    the last non-empty bin; ``box_size``: ``sqrt(w h)`` in input pixels, ``level``: names."""
    rows = []
    total = max(int(box_size.size), 1)
    for low, high in itertools.pairwise(EDGES):
        inside = (box_size >= low) & (box_size < high)
        levels = Counter(level[inside].tolist())
        rows.append(
            {
                "low": low,
                "high": None if math.isinf(high) else high,
                "boxes": int(inside.sum()),
                "share": round(int(inside.sum()) / total, 4),
                "level": levels.most_common(1)[0][0] if levels else None,
            }
        )
    used = [i for i, r in enumerate(rows) if r["boxes"]]
    return rows[used[0] : used[-1] + 1] if used else []


def _fit(ann: Path, options: InspectOptions, deduplicate: bool) -> AnchorFitReport:
    """inspect-levels' dataset fit of ``ann``. It refuses an image id used for two files (which
    image would the boxes be on?); the check has counted those, so the sizes are measured on a
    copy that keeps each id's first image."""
    if not deduplicate:
        return run_anchor_fit(ann, options)[0]
    import tempfile

    from fpncli.atomic import write_json
    from fpncli.data.coco import read_json

    data = read_json(ann)
    first: dict[Any, dict[str, Any]] = {}
    for image in data["images"]:
        if isinstance(image, dict):
            first.setdefault(image.get("id"), image)
    data["images"] = list(first.values())
    with tempfile.TemporaryDirectory(prefix="fpn-check-") as folder:
        copy = write_json(Path(folder) / ann.name, data, indent=None)
        return run_anchor_fit(copy, options)[0]


def check_dataset(
    target: Path,
    images: Path | None = None,
    options: InspectOptions | None = None,
    read_images: bool = True,
    progress: Progress | None = None,
) -> DatasetCheck:
    """Check ``target`` (a COCO root with ``annotations/instances_*.json``, or one annotation
    file with its ``images`` folder); ``options`` sets the model whose levels are used
    (default: the paper's R50-FPN at 800/1333)."""
    options = options or InspectOptions()
    # A bad --min-size/--max-size is the user's mistake, not a property of the data: refuse it
    # before reading anything rather than report "box sizes: not available" and exit 0.
    for flag, value in (("--min-size", options.min_size), ("--max-size", options.max_size)):
        if value is not None and value <= 0:
            raise FpnError(f"{flag} must be a positive number of pixels, got {value}")
    splits = _targets(target, images, read_images)
    result: DatasetCheck | None = None
    checks: dict[str, SplitCheck] = {}
    for split, ann, folder in splits:
        check = check_coco(ann, folder, progress=progress, read_images=read_images)
        try:
            fit = _fit(ann, options, deduplicate=bool(check.problems["duplicate_image_id"]))
        except FpnError as exc:  # e.g. no box at all: the rest of the report still stands
            check.levels = {"error": str(exc)}
        else:
            cfg = fit.layout.config
            if result is None:
                result = DatasetCheck(target, cfg.min_size, cfg.max_size)
            check.levels = {
                "boxes": int(fit.box_size.size),
                "histogram": level_histogram(fit.box_size, fit.level),
                "per_level": {name: int((fit.level == name).sum()) for name in fit.layout.roi_levels},
                "coco_buckets": {b.name: b.boxes for b in fit.buckets},
            }
        checks[split] = check
    if result is None:
        from fpncli.config import preset_config

        cfg = preset_config(options.preset)
        result = DatasetCheck(target, options.min_size or cfg.min_size, options.max_size or cfg.max_size)
    result.splits = checks
    return result
