"""Build a Pascal VOC or a YOLO (Ultralytics) folder from a COCO-layout dataset, with its own
small writer (independent of ``fpn data convert``), so the docs' example runs of
``fpn data convert --from voc`` / ``--from yolo`` start from real images and can be redone::

    python scripts/coco_to_voc_yolo.py ../shared/data/coco-tiny /tmp/voc-tiny --format voc
    python scripts/coco_to_voc_yolo.py ../shared/data/coco-tiny /tmp/yolo-tiny --format yolo

VOC: ``JPEGImages/`` (copies), ``Annotations/<stem>.xml`` with 1-based inclusive pixel
corners (``xmin = round(x) + 1``, ``xmax = round(x + w)``), crowd regions as
``<difficult>1</difficult>``, and ``ImageSets/Main/{train,val}.txt``. YOLO: ``images/<split>/``
(copies), ``labels/<split>/*.txt`` (``class cx cy w h``, normalised; crowd regions left out)
and ``data.yaml`` with ``names`` as a list. Splits: ``train2017`` -> ``train``, ``val2017`` -> ``val``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from xml.sax.saxutils import escape


def _split(name: str) -> str:
    return "train" if name.startswith("train") else "val" if name.startswith("val") else name


def _voc_xml(record: dict, objects: list[tuple[str, list[float], bool]]) -> str:
    rows = [
        "<annotation>",
        "  <folder>JPEGImages</folder>",
        f"  <filename>{escape(record['file_name'])}</filename>",
        f"  <size><width>{record['width']}</width><height>{record['height']}</height><depth>3</depth></size>",
    ]
    for name, (x, y, w, h), crowd in objects:
        xmin, ymin = max(1, round(x) + 1), max(1, round(y) + 1)
        xmax, ymax = min(record["width"], round(x + w)), min(record["height"], round(y + h))
        rows += [
            "  <object>",
            f"    <name>{escape(name)}</name>",
            f"    <difficult>{int(crowd)}</difficult>",
            f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "  </object>",
        ]
    return "\n".join([*rows, "</annotation>"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("coco", type=Path, help="COCO root: annotations/instances_<split>.json + <split>/")
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--format", choices=("voc", "yolo"), required=True)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out}: already exists")
    names: list[str] = []
    splits: list[str] = []
    for ann_file in sorted((args.coco / "annotations").glob("instances_*.json")):
        coco_split = ann_file.stem.removeprefix("instances_")
        split = _split(coco_split)
        splits.append(split)
        data = json.loads(ann_file.read_text())
        cats = sorted(data["categories"], key=lambda c: c["id"])
        names = [c["name"] for c in cats]
        index = {c["id"]: i for i, c in enumerate(cats)}
        per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            per_image[ann["image_id"]].append(ann)
        ids = []
        for record in data["images"]:
            source = args.coco / coco_split / record["file_name"]
            anns = per_image[record["id"]]
            stem = Path(record["file_name"]).stem
            if args.format == "voc":
                (args.out / "JPEGImages").mkdir(parents=True, exist_ok=True)
                (args.out / "Annotations").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, args.out / "JPEGImages" / record["file_name"])
                objects = [(names[index[a["category_id"]]], a["bbox"], bool(a.get("iscrowd"))) for a in anns]
                (args.out / "Annotations" / f"{stem}.xml").write_text(_voc_xml(record, objects))
                ids.append(stem)
            else:
                (args.out / "images" / split).mkdir(parents=True, exist_ok=True)
                (args.out / "labels" / split).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, args.out / "images" / split / record["file_name"])
                w, h = record["width"], record["height"]
                lines = [
                    f"{index[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                    for a in anns
                    if not a.get("iscrowd")
                    for x, y, bw, bh in [a["bbox"]]
                ]
                (args.out / "labels" / split / f"{stem}.txt").write_text("".join(s + "\n" for s in lines))
        if args.format == "voc":
            (args.out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (args.out / "ImageSets" / "Main" / f"{split}.txt").write_text(
                "".join(i + "\n" for i in sorted(ids))
            )
    if args.format == "yolo":
        yaml = [f"{s}: images/{s}" for s in splits] + [f"names: {json.dumps(names)}"]
        (args.out / "data.yaml").write_text("\n".join(yaml) + "\n")
    print(f"wrote {args.out} ({args.format}, splits {', '.join(splits)}, {len(names)} classes)")


if __name__ == "__main__":
    main()
