"""Synthetic multi-scale shapes in COCO layout: data a detector can learn from scratch, offline.

No pretrained weights or datasets can be downloaded here, so `fpn data synth` draws its own:
dark shapes of four classes on light, noisy backgrounds with unlabelled clutter (thin lines,
specks). Object sizes are drawn log-uniformly from about 8 px to most of the image, so COCO's
small (< 32²), medium and large (> 96²) buckets all occur — the regime the FPN paper is about.
(MEASURED.md: dark-on-light shapes of this kind are learnable from scratch on a CPU in minutes.)

Layout written (the same as COCO 2017's)::

    OUT/annotations/instances_train.json   OUT/train/000000.png ...
    OUT/annotations/instances_val.json     OUT/val/000000.png ...

Every image is a pure function of ``(seed, split, index)``: the same command always writes
the same files, and changing ``--train`` does not change the validation images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fpncli.atomic import write_json
from fpncli.errors import FpnError
from fpncli.outputs import check_outputs

CLASSES = ("circle", "square", "triangle", "cross")
# Image sizes (width, height): mixed orientations, so aspect-ratio grouping has work to do.
SIZES = ((256, 256), (320, 224), (224, 320))
MIN_OBJECT = 8  # px, the shorter box side of the smallest object
MAX_OBJECT_FRACTION = 0.8  # of the image's shorter side
NEGATIVE_FRACTION = 0.05  # images with no object (background only)
SPLIT_IDS = {"train": 1, "val": 2}


def _shape(
    draw: ImageDraw.ImageDraw,
    cls: str,
    x: float,
    y: float,
    w: float,
    h: float,
    colour: tuple[int, int, int],
    rng: np.random.Generator,
) -> list[float]:
    """Draw one shape in the box (x, y, w, h); returns its tight COCO bbox [x, y, w, h]."""
    x2, y2 = x + w, y + h
    if cls == "circle":
        draw.ellipse([x, y, x2 - 1, y2 - 1], fill=colour)
    elif cls == "square":
        draw.rectangle([x, y, x2 - 1, y2 - 1], fill=colour)
    elif cls == "triangle":
        # Apex up or down at random; the base spans the box.
        if rng.random() < 0.5:
            pts = [(x + w / 2, y), (x, y2 - 1), (x2 - 1, y2 - 1)]
        else:
            pts = [(x, y), (x2 - 1, y), (x + w / 2, y2 - 1)]
        draw.polygon(pts, fill=colour)
    else:  # cross: two bars a third of the box thick
        tw, th = max(w / 3, 2), max(h / 3, 2)
        draw.rectangle([x + (w - tw) / 2, y, x + (w + tw) / 2 - 1, y2 - 1], fill=colour)
        draw.rectangle([x, y + (h - th) / 2, x2 - 1, y + (h + th) / 2 - 1], fill=colour)
    return [float(x), float(y), float(w), float(h)]


def _overlaps(
    box: tuple[float, float, float, float],
    placed: list[tuple[float, float, float, float]],
    margin: float = 2.0,
) -> bool:
    x, y, w, h = box
    for px, py, pw, ph in placed:
        if x < px + pw + margin and px < x + w + margin and y < py + ph + margin and py < y + h + margin:
            return True
    return False


def render_image(
    seed: int, split: str, index: int, sizes: tuple[tuple[int, int], ...] = SIZES
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One synthetic image and its objects ``[{"category": name, "bbox": [x, y, w, h]}]``;
    its (width, height) is drawn from ``sizes``."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    width, height = sizes[int(rng.integers(len(sizes)))]
    # Light background: a random light colour, a gentle gradient and pixel noise.
    base = rng.uniform(170, 245, size=3)
    ramp = np.linspace(-1.0, 1.0, width)[None, :, None] * rng.uniform(-20, 20, size=3)
    noise = rng.normal(0, 6, size=(height, width, 1))
    background = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(img)
    # Clutter: thin mid-grey lines and specks that belong to no class.
    for _ in range(int(rng.integers(2, 7))):
        grey = tuple(int(v) for v in rng.uniform(120, 165, size=3))
        pts = [tuple(float(v) for v in (rng.uniform(0, width), rng.uniform(0, height))) for _ in range(2)]
        draw.line(pts, fill=grey, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(3, 12))):
        grey = tuple(int(v) for v in rng.uniform(110, 160, size=3))
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, 3)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=grey)

    objects: list[dict[str, Any]] = []
    if rng.random() < NEGATIVE_FRACTION:
        return img, objects
    wanted = int(rng.integers(1, 7))
    limit = MAX_OBJECT_FRACTION * min(width, height)
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(wanted):
        # Log-uniform size: as many small objects as large ones per octave.
        side = math.exp(rng.uniform(math.log(MIN_OBJECT), math.log(limit)))
        aspect = math.exp(rng.uniform(-0.4, 0.4))
        w = max(MIN_OBJECT, min(limit, side * aspect))
        h = max(MIN_OBJECT, min(limit, side / aspect))
        for _attempt in range(20):
            x = float(rng.uniform(0, width - w))
            y = float(rng.uniform(0, height - h))
            if not _overlaps((x, y, w, h), placed):
                break
        else:
            continue  # no room left for this one
        x, y, w, h = round(x), round(y), round(w), round(h)
        placed.append((x, y, w, h))
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        r, g, b = (int(v) for v in rng.uniform(0, 90, size=3))
        colour = (r, g, b)
        bbox = _shape(draw, cls, x, y, w, h, colour, rng)
        objects.append({"category": cls, "bbox": bbox})
    return img, objects


def synthesize(
    out: str | os.PathLike,
    train: int = 800,
    val: int = 100,
    seed: int = 0,
    overwrite: bool = False,
    sizes: tuple[tuple[int, int], ...] = SIZES,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a synthetic COCO-layout dataset to ``out``.

    Args:
        out: dataset root (created).
        train, val: number of images per split (0 skips that split's images but still
            writes a valid, empty annotation file).
        seed: every image is a pure function of (seed, split, index).
        overwrite: replace existing annotation files; without it an existing dataset is an
            :class:`FpnError`.
        sizes: image (width, height) choices; the default mixes orientations.
        progress: called as ``progress(split, done, total)`` after each image.

    Returns:
        ``{"root", "splits": {split: {"images", "objects", "annotation_file", "images_dir",
        "per_class", "small", "medium", "large"}}}``.
    """
    root = Path(out)
    if not sizes or any(min(wh) < 32 for wh in sizes):
        raise FpnError(f"image sizes must be at least 32 px, got {sizes}")
    if train < 0 or val < 0:
        raise FpnError("--train and --val must be zero or more")
    ann_dir = root / "annotations"
    check_outputs(
        folders=[root, ann_dir, root / "train", root / "val"],
        files=[ann_dir / "instances_train.json", ann_dir / "instances_val.json"],
    )
    existing = [p for p in (ann_dir / "instances_train.json", ann_dir / "instances_val.json") if p.exists()]
    if existing and not overwrite:
        raise FpnError(f"{existing[0]}: already exists; pass --overwrite to replace the dataset")
    ann_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    summary: dict[str, Any] = {"root": str(root), "seed": seed, "splits": {}}
    for split, count in (("train", train), ("val", val)):
        img_dir = root / split
        img_dir.mkdir(parents=True, exist_ok=True)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        per_class = {name: 0 for name in CLASSES}
        buckets = {"small": 0, "medium": 0, "large": 0}
        for index in range(count):
            img, objects = render_image(seed, split, index, sizes)
            name = f"{index:06d}.png"
            img.save(img_dir / name, compress_level=1)
            image_id = index + 1
            images.append({"id": image_id, "file_name": name, "width": img.width, "height": img.height})
            for obj in objects:
                x, y, w, h = obj["bbox"]
                area = w * h
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cat_id[obj["category"]],
                        "bbox": [x, y, w, h],
                        "area": area,
                        "iscrowd": 0,
                    }
                )
                per_class[obj["category"]] += 1
                buckets["small" if area < 32**2 else "medium" if area < 96**2 else "large"] += 1
            if progress is not None:
                progress(split, index + 1, count)
        ann_file = ann_dir / f"instances_{split}.json"
        data = {
            "info": {"description": f"fpncli synthetic shapes, seed {seed}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        write_json(ann_file, data, indent=None)
        summary["splits"][split] = {
            "images": count,
            "objects": len(annotations),
            "annotation_file": str(ann_file),
            "images_dir": str(img_dir),
            "per_class": per_class,
            **buckets,
        }
    return summary
