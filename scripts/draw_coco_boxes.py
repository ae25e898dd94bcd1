"""Draw the boxes of a COCO annotation file on some of its images, side by side, into one
PNG: a look at whether a converted dataset's boxes sit on the objects (the picture of
docs/commands/convert.md)::

    python scripts/draw_coco_boxes.py data/voc-tiny/annotations/instances_val.json \
        data/voc-tiny/val docs/convert_voc_boxes.png --images 000000000139.jpg,000000000785.jpg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from fpncli.data.images import read_image
from fpncli.viz.draw import draw_detections


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("annotations", type=Path)
    parser.add_argument("images_dir", type=Path)
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--images", default="", help="file names, comma-separated (default: the first 3)")
    parser.add_argument("--height", type=int, default=300, help="height of each panel in pixels")
    args = parser.parse_args()
    data = json.loads(args.annotations.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    wanted = [n for n in args.images.split(",") if n] or [i["file_name"] for i in data["images"][:3]]
    records = {i["file_name"]: i for i in data["images"]}
    panels = []
    for name in wanted:
        record = records[name]
        anns = [a for a in data["annotations"] if a["image_id"] == record["id"]]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        labels = [names[a["category_id"]] + (" (crowd)" if a.get("iscrowd") else "") for a in anns]
        drawn = draw_detections(
            read_image(args.images_dir / name), boxes, labels, color_keys=[a["category_id"] for a in anns]
        )
        scale = args.height / drawn.height
        panels.append(drawn.resize((round(drawn.width * scale), args.height), Image.Resampling.LANCZOS))
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), args.height), "white")
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + 4
    # 96 colours: a docs-sized PNG (a third of the full-colour file) that still reads well.
    sheet.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, {args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
