"""Time `fpn inspect-levels --coco` on a synthetic COCO-sized annotation file.

    python scripts/bench_inspect_levels.py [--boxes 50000] [--images 5000] [--preset default]

Writes a seeded random annotation file (COCO-like image sizes and box sizes) to a temporary
folder, then prints how long reading + analysing it takes (torch import excluded), and the
best-anchor IoU step alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_coco(path: Path, boxes: int, images: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([(480, 640), (640, 480), (427, 640), (640, 427), (500, 375), (612, 612)], images)
    imgs = [
        {"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": int(h), "width": int(w)}
        for i, (h, w) in enumerate(sizes)
    ]
    image_of = rng.integers(0, images, boxes)
    side = np.exp(rng.uniform(np.log(4), np.log(600), boxes))
    ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), boxes))
    anns = []
    for k in range(boxes):
        h_img, w_img = sizes[image_of[k]]
        w = float(min(w_img - 1, side[k] / np.sqrt(ratio[k])))
        h = float(min(h_img - 1, side[k] * np.sqrt(ratio[k])))
        x = float(rng.uniform(0, w_img - w))
        y = float(rng.uniform(0, h_img - h))
        anns.append(
            {
                "id": k + 1,
                "image_id": int(image_of[k]) + 1,
                "category_id": 1,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
        )
    path.write_text(
        json.dumps({"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]})
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--boxes", type=int, default=50_000)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()

    from fpncli.analysis.anchor_fit import anchor_layout, best_anchor_iou, inspect_dataset
    from fpncli.config import preset_config

    cfg = preset_config(args.preset, class_names=["thing"], category_ids=[1])
    anchor_layout(cfg)  # first build imports torchvision's detection modules; not what we time
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.json"
        synthetic_coco(path, args.boxes, args.images)
        start = time.perf_counter()
        report = inspect_dataset(path, cfg)
        total = time.perf_counter() - start
    n = report.best_iou.size
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 700, (n, 2))
    wh = np.exp(rng.uniform(np.log(4), np.log(800), (n, 2)))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    layout = anchor_layout(cfg)
    start = time.perf_counter()
    best_anchor_iou(boxes, np.tile([800, 1088], (n, 1)), layout)
    iou_time = time.perf_counter() - start
    print(f"preset {args.preset}: {n:,} boxes in {args.images:,} images, {len(layout.shapes)} anchor shapes")
    print(f"inspect_dataset (read JSON + analyse): {total:.2f} s")
    print(f"best_anchor_iou alone: {iou_time:.3f} s ({n / iou_time:,.0f} boxes/s)")
    print(f"usable {report.overall.usable / n:.1%}, positive {report.overall.positive / n:.1%}")


if __name__ == "__main__":
    main()
