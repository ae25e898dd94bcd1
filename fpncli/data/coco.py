"""COCO-format annotation files: reading, checking, category mapping, safe image paths, and
which image of a file each input picture is.

COCO category ids are not contiguous (1..90 with gaps in COCO itself); the model predicts
contiguous labels 1..K. :class:`CategoryMap` converts both ways.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fpncli.errors import FpnError

REQUIRED_KEYS = ("images", "annotations", "categories")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file is one :class:`FpnError` with the position."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FpnError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FpnError(f"{path}: is a folder, expected a JSON file") from None
    except json.JSONDecodeError as exc:
        raise FpnError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError:
        raise FpnError(f"{path}: not a UTF-8 text file") from None


@dataclass
class CategoryMap:
    """Dataset category ids and names <-> the model's contiguous labels (1..K, 0 = background)."""

    category_ids: list[int]
    names: list[str]
    id_to_label: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.category_ids) != len(self.names):
            raise ValueError("category_ids and names differ in length")
        self.id_to_label = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

    def label_to_id(self, label: int) -> int:
        return self.category_ids[label - 1]

    def label_name(self, label: int) -> str:
        return self.names[label - 1]

    def __len__(self) -> int:
        return len(self.category_ids)


@dataclass
class CocoAnnotations:
    """A checked COCO annotation file.

    Attributes:
        path: the file.
        images: ``image id -> image record`` (``file_name``, ``width``, ``height``).
        annotations: ``image id -> [annotation]`` for every image (empty list if none).
        categories: the dataset's categories, sorted by id.
        problems: one line per annotation that was skipped (unknown image or category,
            missing/invalid bbox), naming the entry.
    """

    path: Path
    raw: dict[str, Any]
    images: dict[int, dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]
    categories: CategoryMap
    problems: list[str]


def load_coco(path: str | os.PathLike) -> CocoAnnotations:
    """Read and check a COCO detection annotation file.

    Missing top-level keys, non-list sections, images without an id, or categories without
    id/name are fatal (:class:`FpnError` naming the file and entry). Annotations that point
    to unknown images or categories, or have no usable ``bbox``, are skipped and listed in
    ``problems``. A missing ``info``/``licenses`` key is fine.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise FpnError(f"{path}: expected a JSON object with {', '.join(REQUIRED_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise FpnError(f"{path}: missing the {key!r} key")
        if not isinstance(data[key], list):
            raise FpnError(f"{path}: {key!r} must be a list")
    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise FpnError(f"{path}: images[{i}] needs an 'id' and a 'file_name'")
        image_id = img["id"]
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            raise FpnError(f"{path}: images[{i}] has id {image_id!r}; expected an integer")
        if image_id in images and images[image_id].get("file_name") != img["file_name"]:
            # Annotations name images by id: which picture would these boxes belong to?
            raise FpnError(
                f"{path}: image id {image_id!r} is used for two different files "
                f"({images[image_id].get('file_name')!r} and {img['file_name']!r}); ids must be unique"
            )
        images[image_id] = img  # type: ignore[index]  # str ids are COCO-legal; pycocotools takes either
    cats = []
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise FpnError(f"{path}: categories[{i}] needs an 'id' and a 'name'")
        cats.append(cat)
    cats.sort(key=lambda c: c["id"])
    categories = CategoryMap([c["id"] for c in cats], [str(c["name"]) for c in cats])
    per_image: dict[int, list[dict[str, Any]]] = {img_id: [] for img_id in images}
    problems: list[str] = []
    for i, ann in enumerate(data["annotations"]):
        where = (
            f"annotations[{i}] (id {ann.get('id', '?')})" if isinstance(ann, dict) else f"annotations[{i}]"
        )
        if not isinstance(ann, dict):
            problems.append(f"{where}: not an object")
        elif ann.get("image_id") not in images:
            problems.append(f"{where}: unknown image_id {ann.get('image_id')!r}")
        elif ann.get("category_id") not in categories.id_to_label:
            problems.append(f"{where}: unknown category_id {ann.get('category_id')!r}")
        elif not _valid_bbox(ann.get("bbox")):
            problems.append(f"{where}: bbox must be 4 numbers [x, y, w, h], got {ann.get('bbox')!r}")
        else:
            per_image[ann["image_id"]].append(ann)
    return CocoAnnotations(path, data, images, per_image, categories, problems)


def _valid_bbox(bbox: Any) -> bool:
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and v == v for v in bbox)
    )


def safe_image_path(images_dir: str | os.PathLike, file_name: str, source: str = "") -> Path:
    """``images_dir / file_name``, refusing names that escape the folder.

    Absolute paths and ``..`` components are an :class:`FpnError`: an annotation file must
    not make us read (or train on) files outside its images folder.
    """
    where = f"{source}: " if source else ""
    if not isinstance(file_name, str) or not file_name:
        raise FpnError(f"{where}bad file_name {file_name!r}")
    posix = PurePosixPath(file_name.replace("\\", "/"))
    if (
        posix.is_absolute()
        or file_name.startswith(("/", "\\"))
        or (len(file_name) > 1 and file_name[1] == ":")
    ):
        raise FpnError(f"{where}image path {file_name!r} is absolute; paths must be inside the images folder")
    if ".." in posix.parts:
        raise FpnError(f"{where}image path {file_name!r} leaves the images folder ('..')")
    return Path(images_dir, *posix.parts)


def xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` (pixels)."""
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` -> COCO ``[x, y, w, h]`` (pixels)."""
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def coco_image_ids(paths: Sequence[Path], annotations: Path | None) -> tuple[dict[int, int], list[str]]:
    """Input index -> COCO image id, and the files the annotation file does not list.

    With an annotation file an image matches the entry whose ``file_name`` ends its path
    (so ``val2017/x.jpg`` and ``x.jpg`` both work); otherwise ids are 1..N in input order.
    """
    if annotations is None:
        return {i: i + 1 for i in range(len(paths))}, []
    data = read_json(annotations)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FpnError(f"{annotations}: not a COCO annotation file (no 'images' list)")
    by_name: dict[str, list[tuple[str, int]]] = {}
    for entry in data["images"]:
        if isinstance(entry, dict) and "file_name" in entry and "id" in entry:
            name = str(entry["file_name"]).replace("\\", "/")
            by_name.setdefault(name.rsplit("/", 1)[-1], []).append((name, entry["id"]))
    ids, unmatched = {}, []
    for i, p in enumerate(paths):
        posix = Path(os.path.abspath(p)).as_posix()
        candidates = [c for c in by_name.get(p.name, []) if posix.endswith("/" + c[0]) or posix == c[0]]
        if candidates:
            ids[i] = candidates[0][1]
        else:
            unmatched.append(str(p))
    return ids, unmatched
