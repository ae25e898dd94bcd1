"""``fpn data check``: what is wrong with a COCO annotation file and its images, before training.

:func:`check_coco` reads the JSON itself (not through :func:`fpncli.data.coco.load_coco`,
which stops at the first duplicate image id) and counts, with a few examples each:

* images missing, unreadable (header), or of another size than the JSON says (upright,
  EXIF rotation applied, as training reads them);
* duplicate image ids, file names, annotation ids and category ids;
* annotations naming an unknown image or category, or without 4 finite bbox numbers;
* degenerate boxes (under 1 px wide or tall: training drops them) and boxes reaching outside
  the image (training clips them; more than 0.5 px out counts);

and, as information rather than problems, empty images (no object: negatives), crowd
regions and the class histogram. The box-size histogram with each size's FPN level is added
by :mod:`fpncli.analysis.dataset_check` (it needs the model's levels).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpncli.data.coco import read_json, safe_image_path
from fpncli.data.convert.common import Progress, image_size
from fpncli.errors import FpnError

# kind -> what the table calls it (all of them make the check fail).
PROBLEMS = {
    "missing_image": "images missing",
    "unreadable_image": "images unreadable",
    "size_mismatch": "images of another size than the JSON says",
    "missing_size": "images without a positive width and height",
    "duplicate_image_id": "duplicate image ids",
    "duplicate_file_name": "images listed twice (same file_name)",
    "duplicate_annotation_id": "duplicate annotation ids",
    "duplicate_category_id": "duplicate category ids",
    "no_categories": "no categories at all",
    "unknown_image": "annotations of an unknown image",
    "unknown_category": "annotations of an unknown category",
    "invalid_bbox": "annotations without a valid bbox",
    "degenerate_box": "degenerate boxes (< 1 px wide or tall)",
    "outside_image": "boxes reaching outside the image (> 0.5 px)",
}
EXAMPLES = 3
OUTSIDE_TOLERANCE = 0.5  # px; COCO's own boxes overshoot by rounding


@dataclass
class SplitCheck:
    """The findings for one annotation file; ``problems`` counts by kind (:data:`PROBLEMS`)."""

    annotations: Path
    images_dir: Path
    images: int = 0
    boxes: int = 0
    crowd: int = 0
    empty_images: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    classes: list[dict[str, Any]] = field(default_factory=list)  # id, name, boxes, images
    levels: dict[str, Any] | None = None  # box sizes and FPN levels (analysis.dataset_check)

    def problem(self, kind: str, example: str) -> None:
        self.problems[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(example)

    @property
    def ok(self) -> bool:
        return not sum(self.problems.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "annotations": str(self.annotations),
            "images_dir": str(self.images_dir),
            "images": self.images,
            "boxes": self.boxes,
            "crowd": self.crowd,
            "empty_images": self.empty_images,
            "ok": self.ok,
            "problems": {kind: self.problems.get(kind, 0) for kind in PROBLEMS},
            "examples": self.examples,
            "classes": self.classes,
            "levels": self.levels,
        }


def _entries(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = data.get(key)
    if not isinstance(value, list):
        raise FpnError(f"{path}: no {key!r} list (not a COCO annotation file)")
    return [v for v in value if isinstance(v, dict)]


def read_lists(annotations: Path) -> tuple[list[Any], list[Any], list[Any]]:
    """The ``images``, ``annotations`` and ``categories`` lists of a COCO file.

    Raises:
        FpnError: the file is not JSON or lacks one of the lists.
    """
    data = read_json(annotations)
    if not isinstance(data, dict):
        raise FpnError(f"{annotations}: expected a JSON object with images, annotations, categories")
    return (
        _entries(data, "images", annotations),
        _entries(data, "annotations", annotations),
        _entries(data, "categories", annotations),
    )


def check_coco(
    annotations: Path, images_dir: Path, progress: Progress | None = None, read_images: bool = True
) -> SplitCheck:
    """Check one COCO annotation file and its images folder (see the module docstring).

    Raises:
        FpnError: the file is not JSON or has no ``images``/``annotations``/``categories`` lists.
    """
    images, anns, cats = read_lists(annotations)
    report = SplitCheck(annotations, images_dir, images=len(images))
    categories: dict[Any, str] = {}
    for cat in cats:
        if cat.get("id") in categories:
            report.problem("duplicate_category_id", f"category id {cat.get('id')!r}")
        categories.setdefault(cat.get("id"), str(cat.get("name", "?")))
    if not cats:
        report.problem("no_categories", "the 'categories' list is empty")
    sizes: dict[Any, tuple[float, float] | None] = {}
    names: set[str] = set()
    for done, img in enumerate(images, 1):
        image_id, name = img.get("id"), img.get("file_name")
        if image_id in sizes:
            report.problem("duplicate_image_id", f"image id {image_id!r} ({name})")
            continue
        if name in names:
            report.problem("duplicate_file_name", f"{name} (image id {image_id!r})")
        names.add(str(name))
        w, h = img.get("width"), img.get("height")
        known = isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0
        sizes[image_id] = (float(w), float(h)) if known else None
        if not known:
            report.problem("missing_size", f"{name} (image id {image_id!r}): width {w!r}, height {h!r}")
        if read_images:
            _check_file(report, img, images_dir)
        if progress is not None:
            progress(f"checking {annotations.name}", done, len(images))
    per_image: Counter[Any] = Counter()
    per_class: dict[Any, Counter[str]] = {cid: Counter() for cid in categories}
    class_images: dict[Any, set[Any]] = {cid: set() for cid in categories}
    ann_ids: set[Any] = set()
    for ann in anns:
        where = f"annotation {ann.get('id', '?')} (image {ann.get('image_id')!r})"
        if ann.get("id") in ann_ids:
            report.problem("duplicate_annotation_id", where)
        ann_ids.add(ann.get("id"))
        if ann.get("image_id") not in sizes:
            report.problem("unknown_image", where)
            continue
        if ann.get("category_id") not in categories:
            report.problem("unknown_category", f"{where}: category {ann.get('category_id')!r}")
            continue
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        ):
            report.problem("invalid_bbox", f"{where}: bbox {bbox!r}")
            continue
        report.boxes += 1
        if ann.get("iscrowd"):
            report.crowd += 1
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w < 1 or h < 1:
            report.problem("degenerate_box", f"{where}: bbox {bbox}")
            continue
        size = sizes[ann["image_id"]]
        tol = OUTSIDE_TOLERANCE
        if size is not None and (x < -tol or y < -tol or x + w > size[0] + tol or y + h > size[1] + tol):
            report.problem("outside_image", f"{where}: bbox {bbox} in a {size[0]:g}x{size[1]:g} image")
        per_image[ann["image_id"]] += 1
        per_class[ann["category_id"]]["boxes"] += 1
        class_images[ann["category_id"]].add(ann["image_id"])
    report.empty_images = sum(1 for image_id in sizes if not per_image[image_id])
    report.classes = [
        {"id": cid, "name": name, "boxes": per_class[cid]["boxes"], "images": len(class_images[cid])}
        for cid, name in categories.items()
    ]
    return report


def _check_file(report: SplitCheck, img: dict[str, Any], images_dir: Path) -> None:
    """Missing, unreadable, or another size than the JSON's (header only, upright)."""
    try:
        path = safe_image_path(images_dir, img.get("file_name"), str(report.annotations))  # type: ignore[arg-type]
    except FpnError as exc:
        report.problem("missing_image", str(exc))
        return
    if not path.is_file():
        report.problem("missing_image", str(path))
        return
    try:
        width, height = image_size(path)
    except FpnError as exc:
        report.problem("unreadable_image", str(exc))
        return
    w, h = img.get("width"), img.get("height")
    # No size in the JSON is fine: training reads it from the header.
    if w is not None and h is not None and (w, h) != (width, height):
        report.problem("size_mismatch", f"{path}: {w}x{h} in the JSON, {width}x{height} in the file")
