"""COCO -> :class:`~fpncli.data.convert.common.Dataset` (for ``--from coco``).

Layout read (COCO 2017's, and what ``fpn data synth`` and ``--to coco`` write)::

    SRC/annotations/instances_<split>.json    SRC/<split>/<file_name>

Each annotation file is one split. Crowd regions (``iscrowd: 1``) are kept (YOLO, which has
no crowd flag, leaves them out and counts them); bad annotations are problems.
"""

from __future__ import annotations

import math
from pathlib import Path

from fpncli.data.coco import load_coco, safe_image_path
from fpncli.data.convert.common import Box, Dataset, Item, Problems, Progress, add_box, image_size
from fpncli.errors import FpnError


def annotation_files(root: Path) -> list[tuple[str, Path, Path]]:
    """``(split, annotation file, images folder)`` for each ``annotations/instances_*.json``;
    the images folder is ``root/<split>`` (e.g. ``train2017``), else the one folder named
    ``<train|val|test>*`` as ``fpn train --data`` finds it.

    Raises:
        FpnError: no annotation file; an annotation file without its images folder.
    """
    files = sorted((root / "annotations").glob("instances_*.json"))
    if not files:
        raise FpnError(f"{root}: no annotations/instances_<split>.json (COCO layout expected)")
    out = []
    for path in files:
        split = path.stem.removeprefix("instances_")
        images = root / split
        if not images.is_dir():
            prefix = next((p for p in ("train", "val", "test") if split.startswith(p)), split)
            found = sorted(p for p in root.glob(f"{prefix}*") if p.is_dir())
            if not found:
                raise FpnError(f"{root}: found {path.name} but no {split}/ images folder")
            images = found[0]
        out.append((split, path, images))
    return out


def read_coco(root: Path, problems: Problems, progress: Progress | None = None) -> Dataset:
    """Read every split of a COCO-layout folder. Category names and ids are the first file's;
    a later file with other categories is an :class:`FpnError` (one class list per dataset)."""
    splits: dict[str, list[Item]] = {}
    names: list[str] = []
    ids: list[int] = []
    files = annotation_files(root)
    for split, path, images_dir in files:
        coco = load_coco(path)
        if not names:
            names, ids = list(coco.categories.names), list(coco.categories.category_ids)
        elif coco.categories.category_ids != ids or coco.categories.names != names:
            raise FpnError(
                f"{path}: categories differ from {files[0][1].name}'s; convert the splits separately"
            )
        for line in coco.problems:
            problems.add(path, f"{line}; skipped")
        index = {cid: i for i, cid in enumerate(ids)}
        items = []
        for done, (image_id, record) in enumerate(coco.images.items(), 1):
            if progress is not None:
                progress(f"reading {split}", done, len(coco.images))
            try:
                source = safe_image_path(images_dir, record["file_name"], str(path))
                w, h = record.get("width"), record.get("height")
                if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
                    if not source.is_file():
                        raise FpnError(f"{source}: no such file")
                    width, height = int(w), int(h)
                else:
                    width, height = image_size(source)
            except FpnError as exc:
                problems.add(str(exc), f"image {image_id} skipped")
                continue
            item = Item(source, Path(record["file_name"]).as_posix(), width, height)
            for ann in coco.annotations[image_id]:
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                where = f"{path}: annotation {ann.get('id', '?')}"
                if not all(math.isfinite(v) for v in (x, y, bw, bh)):
                    problems.add(where, f"bbox {ann['bbox']} is not finite; skipped")
                    continue
                box = Box(
                    (x, y, x + bw, y + bh), index[ann["category_id"]], iscrowd=bool(ann.get("iscrowd", 0))
                )
                box.difficult = bool(ann.get("difficult", 0))
                add_box(item, box, problems, where)
            items.append(item)
        splits[split] = items
    return Dataset(names, ids, splits)
