""":class:`~fpncli.data.convert.common.Dataset` -> YOLO, Ultralytics' layout::

    OUT/data.yaml                    the splits (relative to it), nc, names ({index: name}) and
                                     coco_category_ids (so ids survive a round trip)
    OUT/images/<split>/<image>       a link or a copy
    OUT/labels/<split>/<image>.txt   ``class cx cy w h`` per object, normalised, 6 decimals

``cx = (x1 + x2) / 2 / width`` ... with the box clipped to the image. 6 decimals keep every
coordinate within ``5e-7 * side`` pixels (0.0003 px on a 640 px side). YOLO has no crowd
flag: crowd regions are left out and counted. An image without objects gets an empty label
file (a background image for Ultralytics).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fpncli.atomic import write_text
from fpncli.data.convert.common import Dataset, Problems, Progress, place_image, split_names, write_small


def yolo_files(out: Path) -> list[Path]:
    """The files besides images and labels that :func:`write_yolo` writes."""
    return [out / "data.yaml"]


def _yaml_key(text: str) -> str:
    return (
        text
        if text.isidentifier() and text.lower() not in ("yes", "no", "on", "off", "true", "false", "null")
        else _yaml_string(text)
    )


def _yaml_string(text: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar (same escapes).
    return json.dumps(text, ensure_ascii=False)


def yaml_keys(splits: list[str]) -> dict[str, str]:
    """data.yaml key -> split: Ultralytics reads ``train``, ``val`` and ``test``, so a split
    named after one (``train2017``) is listed under it; others keep their own name."""
    keys: dict[str, str] = {}
    for split in splits:
        role = next((k for k in ("train", "val", "test") if split.startswith(k)), split)
        keys[role if role not in keys else split] = split
    return keys


def data_yaml(ds: Dataset, splits: list[str]) -> str:
    """The ``data.yaml`` text (written by hand: YAML's simple subset, no dependency to write it)."""
    # No ``path`` key: Ultralytics resolves a relative ``path`` against its datasets folder,
    # not this file's; without one, the splits are read relative to this file's folder.
    lines = [
        "# written by fpn data convert (Ultralytics layout)",
        "# the splits are relative to this file's folder",
    ]
    for key, split in yaml_keys(splits).items():
        lines.append(f"{_yaml_key(key)}: {_yaml_string('images/' + split)}")
    lines.append(f"nc: {len(ds.names)}")
    lines.append("names:")
    lines += [f"  {i}: {_yaml_string(name)}" for i, name in enumerate(ds.names)]
    lines.append(f"coco_category_ids: [{', '.join(str(i) for i in ds.category_ids)}]")
    return "\n".join(lines) + "\n"


def write_yolo(
    ds: Dataset, out: Path, problems: Problems, images: str = "link", progress: Progress | None = None
) -> dict[str, dict[str, Any]]:
    """Write ``ds`` under ``out``; returns per split ``{"images", "boxes", "crowd", "file"}``."""
    summary: dict[str, dict[str, Any]] = {}
    splits = split_names(ds.splits)
    for split in splits:
        items = ds.splits[split]
        boxes = crowd = 0
        for done, item in enumerate(items, 1):
            place_image(item.source, out / "images" / split / item.name, images)
            lines = []
            for box in item.boxes:
                if box.iscrowd:
                    crowd += 1
                    continue
                x1, y1, x2, y2 = box.xyxy
                cx, cy = (x1 + x2) / 2 / item.width, (y1 + y2) / 2 / item.height
                w, h = (x2 - x1) / item.width, (y2 - y1) / item.height
                lines.append(f"{box.category} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            label = (out / "labels" / split / item.name).with_suffix(".txt")
            write_small(label, "".join(line + "\n" for line in lines))
            boxes += len(lines)
            if progress is not None:
                progress(f"writing {split}", done, len(items))
        if crowd:
            problems.note("crowd regions left out (YOLO has no crowd flag)", crowd)
        summary[split] = {
            "images": len(items),
            "boxes": boxes,
            "crowd": crowd,
            "file": str(out / "labels" / split),
        }
    write_text(out / "data.yaml", data_yaml(ds, splits))
    return summary
