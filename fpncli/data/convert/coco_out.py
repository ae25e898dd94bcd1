""":class:`~fpncli.data.convert.common.Dataset` -> COCO, the layout ``fpn train --data`` reads::

    OUT/annotations/instances_<split>.json    OUT/<split>/<image>   (a link or a copy)

Image ids are 1..N over the whole dataset (an image in two splits, e.g. VOC's ``train`` and
``trainval``, keeps one id); annotation ids are 1..M. Category ids are the source's (COCO)
or 1..K in class order. Boxes are ``[x, y, w, h]`` rounded to 1/1000 px; ``area = w * h``.
Each split's annotation file is written (atomically) once its images are in place, so an
interruption keeps every split finished before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fpncli.atomic import write_json
from fpncli.data.convert.common import Dataset, Progress, place_image, split_names


def coco_files(out: Path, ds: Dataset) -> list[Path]:
    """The annotation files :func:`write_coco` writes."""
    return [out / "annotations" / f"instances_{split}.json" for split in split_names(ds.splits)]


def write_coco(
    ds: Dataset, out: Path, images: str = "link", source: str = "", progress: Progress | None = None
) -> dict[str, dict[str, Any]]:
    """Write ``ds`` under ``out``; returns per split ``{"images", "boxes", "crowd", "file"}``."""
    ids: dict[Path, int] = {}
    for split in split_names(ds.splits):
        for item in ds.splits[split]:
            ids.setdefault(item.source, len(ids) + 1)
    categories = [
        {"id": cid, "name": name, "supercategory": ""} for cid, name in zip(ds.category_ids, ds.names)
    ]
    summary: dict[str, dict[str, Any]] = {}
    next_ann = 1
    for split in split_names(ds.splits):
        items = ds.splits[split]
        records, annotations = [], []
        crowd = 0
        for done, item in enumerate(items, 1):
            place_image(item.source, out / split / item.name, images)
            image_id = ids[item.source]
            records.append(
                {"id": image_id, "file_name": item.name, "width": item.width, "height": item.height}
            )
            for box in item.boxes:
                x1, y1, x2, y2 = box.xyxy
                bbox = [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]
                ann = {
                    "id": next_ann,
                    "image_id": image_id,
                    "category_id": ds.category_ids[box.category],
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], 3),
                    "iscrowd": int(box.iscrowd),
                }
                if box.difficult:
                    ann["difficult"] = 1
                crowd += int(box.iscrowd)
                annotations.append(ann)
                next_ann += 1
            if progress is not None:
                progress(f"writing {split}", done, len(items))
        path = out / "annotations" / f"instances_{split}.json"
        info = {"description": f"converted by fpn data convert{' from ' + source if source else ''}"}
        write_json(
            path,
            {"info": info, "images": records, "annotations": annotations, "categories": categories},
            indent=None,
        )
        summary[split] = {
            "images": len(records),
            "boxes": len(annotations),
            "crowd": crowd,
            "file": str(path),
        }
    return summary
