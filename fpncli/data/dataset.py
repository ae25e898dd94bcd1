"""The training dataset: a COCO annotation file + images folder -> (image, target) pairs.

What COCO training does with imperfect annotations, made explicit:

- crowd regions (``iscrowd: 1``) are left out of the targets: COCO's evaluation ignores
  detections on them, and torchvision's losses have no "ignore" label (Detectron2 drops
  them the same way);
- degenerate boxes (zero or negative size, or outside the image) are clipped to the image
  and dropped when nothing is left; :attr:`DetectionDataset.dropped_boxes` /
  :attr:`clipped_boxes` count them so the caller warns once, never a NaN loss;
- images without annotations stay as negatives (``drop_negatives=True`` removes them);
- image paths may not leave the images folder (:func:`fpncli.data.coco.safe_image_path`).

Items are requested as ``(index, flip)`` pairs (see :mod:`fpncli.data.sampler`), so every
random choice of the data pipeline lives in the seeded sampler: the same seed gives the same
batches whatever the number of workers, which makes resuming exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from fpncli.data.coco import CategoryMap, CocoAnnotations, load_coco, safe_image_path
from fpncli.data.images import ImageReadError, model_size_problem, read_image
from fpncli.errors import FpnError


@dataclass
class Record:
    """One training image: its file, size, and targets in the model's label space."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: list[list[float]]  # xyxy pixels, already clipped to the image
    labels: list[int]  # 1..K


@dataclass
class DatasetReport:
    """What was skipped or repaired while reading the annotations (for one warning line)."""

    images: int = 0
    negatives: int = 0
    dropped_negatives: int = 0
    crowd: int = 0
    clipped_boxes: int = 0
    dropped_boxes: int = 0
    missing_images: list[str] = field(default_factory=list)
    annotation_problems: list[str] = field(default_factory=list)
    unfit_images: list[str] = field(default_factory=list)  # "path: reason", cannot pass the model

    def warnings(self) -> list[str]:
        """At most one line per kind of problem, with counts and a first example."""
        out = []
        if self.dropped_boxes or self.clipped_boxes:
            out.append(
                f"{self.dropped_boxes} degenerate box(es) dropped (zero/negative size or outside "
                f"the image) and {self.clipped_boxes} clipped to the image"
            )
        if self.annotation_problems:
            out.append(
                f"{len(self.annotation_problems)} annotation(s) skipped, e.g. {self.annotation_problems[0]}"
            )
        if self.missing_images:
            out.append(
                f"{len(self.missing_images)} image(s) listed but not found, skipped, "
                f"e.g. {self.missing_images[0]}"
            )
        if self.unfit_images:
            out.append(f"{len(self.unfit_images)} image(s) skipped, e.g. {self.unfit_images[0]}")
        return out

    def skipped_images(self) -> list[str]:
        """One line per image left out before training (missing, unreadable header, unfit)."""
        return [
            f"{m}: not found" if not m.endswith("(unreadable)") else m for m in self.missing_images
        ] + list(self.unfit_images)


def _image_size(img: dict[str, Any], path: Path) -> tuple[int, int] | None:
    w, h = img.get("width"), img.get("height")
    if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
        return int(w), int(h)
    # No size in the annotation file: read the header only (cheap, no decode).
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


def build_records(
    coco: CocoAnnotations, images_dir: str | os.PathLike, drop_negatives: bool = False
) -> tuple[list[Record], DatasetReport]:
    """Turn checked COCO annotations into training records (see the module docstring)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FpnError(f"{images_dir}: images folder not found")
    report = DatasetReport(annotation_problems=list(coco.problems))
    records = []
    for image_id in sorted(coco.images):
        img = coco.images[image_id]
        path = safe_image_path(images_dir, img["file_name"], str(coco.path))
        if not path.is_file():
            report.missing_images.append(str(path))
            continue
        size = _image_size(img, path)
        if size is None:
            report.missing_images.append(f"{path} (unreadable)")
            continue
        width, height = size
        boxes, labels = [], []
        for ann in coco.annotations[image_id]:
            if ann.get("iscrowd", 0):
                report.crowd += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1, x2, y2 = x, y, x + w, y + h
            cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
            cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
            # Less than a pixel wide or tall after clipping: nothing to learn, and a
            # zero-size box makes the box-regression targets infinite.
            if cx2 - cx1 < 1.0 or cy2 - cy1 < 1.0:
                report.dropped_boxes += 1
                continue
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                report.clipped_boxes += 1
            boxes.append([cx1, cy1, cx2, cy2])
            labels.append(coco.categories.id_to_label[ann["category_id"]])
        if not boxes:
            if drop_negatives:
                report.dropped_negatives += 1
                continue
            report.negatives += 1
        records.append(Record(image_id, path, width, height, boxes, labels))
    report.images = len(records)
    return records, report


class Skipped(NamedTuple):
    """A training image that could not be read (the collate drops it and reports ``reason``)."""

    path: str
    reason: str


class DetectionDataset(Dataset):
    """Training images and targets from a COCO annotation file.

    ``dataset[(index, flip)]`` -> ``(image, target)`` where image is ``uint8 Tensor[3, H, W]``
    (scaled to 0..1 on the device) and target is ``{"boxes": float32 Tensor[N, 4] xyxy
    pixels, "labels": int64 Tensor[N] in 1..K, "image_id": int}``; ``flip`` mirrors both
    horizontally. An image that fails to decode gives a :class:`Skipped` (the collate drops
    it and passes its reason on, so the training loop reports it).
    An integer index means no flip.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        images_dir: str | os.PathLike,
        drop_negatives: bool = False,
        categories: CategoryMap | None = None,
    ) -> None:
        coco = load_coco(annotation_file)
        if not coco.categories.category_ids:
            raise FpnError(f"{annotation_file}: no categories")
        if categories is not None and (categories.category_ids != coco.categories.category_ids):
            raise FpnError(
                f"{annotation_file}: categories differ from the training set's "
                f"(ids {coco.categories.category_ids[:5]}... vs {categories.category_ids[:5]}...)"
            )
        self.annotation_file = Path(annotation_file)
        self.images_dir = Path(images_dir)
        self.categories = coco.categories
        self.records, self.report = build_records(coco, images_dir, drop_negatives)

    def __len__(self) -> int:
        return len(self.records)

    def drop_unfit(self, min_sizes: Sequence[int], max_size: int) -> list[str]:
        """Remove images the model cannot take at these sizes (e.g. 3000x1 pixels would be
        resized to 0 pixels high); they are listed in ``report.unfit_images`` and returned."""
        keep, dropped = [], []
        for rec in self.records:
            problem = model_size_problem(rec.width, rec.height, min_sizes, max_size)
            if problem is None:
                keep.append(rec)
            else:
                dropped.append(f"{rec.path}: {problem}")
        self.records = keep
        self.report.unfit_images.extend(dropped)
        self.report.images = len(keep)
        return dropped

    def aspect_groups(self) -> list[int]:
        """0 for landscape (w >= h) images, 1 for portrait ones (batches never mix them)."""
        return [0 if r.width >= r.height else 1 for r in self.records]

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[Tensor, dict[str, Any]] | Skipped:
        index, flip = (item, False) if isinstance(item, int) else item
        rec = self.records[index]
        try:
            image = pil_to_tensor(read_image(rec.path))
        except ImageReadError as exc:
            return Skipped(str(rec.path), str(exc))
        except Exception as exc:  # a decoder bug must not stop training
            return Skipped(str(rec.path), f"{rec.path}: cannot decode ({type(exc).__name__}: {exc})")
        boxes = torch.tensor(rec.boxes, dtype=torch.float32).reshape(-1, 4)
        # The annotation's size may disagree with the decoded (EXIF-rotated) image; trust the pixels.
        height, width = image.shape[1:]
        if (width, height) != (rec.width, rec.height):
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
            boxes = boxes[keep]
            labels = torch.tensor(rec.labels, dtype=torch.int64)[keep]
        else:
            labels = torch.tensor(rec.labels, dtype=torch.int64)
        if flip:
            image = image.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, {"boxes": boxes, "labels": labels, "image_id": rec.image_id}


def collate(batch: list) -> tuple[list[Tensor], list[dict[str, Any]], list[str]]:
    """Lists of images and targets (sizes differ; the model batches them itself), and the
    reasons of the images that could not be read (:class:`Skipped`, dropped from the batch)."""
    skipped = [b.reason for b in batch if isinstance(b, Skipped)]
    batch = [b for b in batch if b is not None and not isinstance(b, Skipped)]
    return [b[0] for b in batch], [b[1] for b in batch], skipped
