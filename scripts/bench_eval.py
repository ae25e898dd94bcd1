#!/usr/bin/env python
"""Time COCO box evaluation: pycocotools vs faster-coco-eval on one large synthetic set.

    python scripts/bench_eval.py                      # 6,000 images, ~48k GT boxes, ~60k detections
    python scripts/bench_eval.py --images 10000 --repeat 3

Writes a synthetic COCO annotation file (80 categories with COCO's non-contiguous ids,
crowd regions, images without objects) and a results file made from it (seeded jitter,
dropped boxes, duplicates, false positives) into a temporary folder. Each backend then runs
`fpncli.evaluation.evaluate.evaluate_results` in a fresh Python process, so the times include
everything a user waits for (JSON loading, indexing, matching, accumulation, per-class
table) and one backend's warm caches never help the other. Prints both times, the ratio,
and whether the 12 numbers are equal.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# COCO's 80 category ids: 1..90 without the ten unused ones.
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]


def synthesise(folder: Path, images: int, boxes_per_image: float, seed: int) -> tuple[Path, Path, int, int]:
    rng = random.Random(seed)
    imgs, anns, dets = [], [], []
    for img_id in range(1, images + 1):
        W, H = rng.choice([(640, 480), (480, 640), (640, 427), (500, 375)])
        imgs.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": W, "height": H})
        n = 0 if rng.random() < 0.02 else max(1, int(rng.expovariate(1 / boxes_per_image)))
        for _ in range(n):
            # Log-uniform sizes: COCO's mix of small, medium and large objects.
            w = min(W - 1, 2 ** rng.uniform(2.5, 9))
            h = min(H - 1, w * 2 ** rng.uniform(-1.5, 1.5))
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            crowd = int(rng.random() < 0.01)
            ann = {
                "id": len(anns) + 1,
                "image_id": img_id,
                "category_id": rng.choice(COCO_IDS),
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                "area": round(w * h * rng.uniform(0.5, 0.9), 2),
                "iscrowd": crowd,
            }
            anns.append(ann)
            if crowd or rng.random() < 0.2:
                continue
            box = [
                x + rng.gauss(0, 0.07 * w),
                y + rng.gauss(0, 0.07 * h),
                w * rng.uniform(0.85, 1.15),
                h * rng.uniform(0.85, 1.15),
            ]
            cat = ann["category_id"] if rng.random() < 0.9 else rng.choice(COCO_IDS)
            dets.append(
                {
                    "image_id": img_id,
                    "category_id": cat,
                    "bbox": [round(v, 2) for v in box],
                    "score": round(rng.random(), 4),
                }
            )
            if rng.random() < 0.15:
                dets.append(
                    {
                        **dets[-1],
                        "bbox": [round(v + rng.gauss(0, 3), 2) for v in box],
                        "score": round(rng.random() * 0.5, 4),
                    }
                )
        for _ in range(int(rng.expovariate(1 / (boxes_per_image / 2)))):  # false positives
            w, h = 2 ** rng.uniform(3, 8), 2 ** rng.uniform(3, 8)
            dets.append(
                {
                    "image_id": img_id,
                    "category_id": rng.choice(COCO_IDS),
                    "bbox": [
                        round(rng.uniform(0, W - 8), 2),
                        round(rng.uniform(0, H - 8), 2),
                        round(w, 2),
                        round(h, 2),
                    ],
                    "score": round(rng.random() * 0.6, 4),
                }
            )
    cats = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in COCO_IDS]
    ann_file, res_file = folder / "instances_synthetic.json", folder / "detections_synthetic.json"
    ann_file.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    res_file.write_text(json.dumps(dets))
    return ann_file, res_file, len(anns), len(dets)


def worker(backend: str, ann: str, res: str) -> None:
    """Runs in the child process: one evaluation, its time and numbers as JSON on stdout."""
    t0 = time.perf_counter()
    from fpncli.evaluation.coco_eval import METRIC_KEYS
    from fpncli.evaluation.evaluate import evaluate_results

    metrics = evaluate_results(ann, res, backend=backend)
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {"seconds": elapsed, "stats": [metrics[k] for k in METRIC_KEYS], "torch": "torch" in sys.modules}
        )
    )


def run(backend: str, ann: Path, res: Path) -> tuple[float, float, list[float]]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--worker", backend, str(ann), str(res)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, data["seconds"], data["stats"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=6000, help="synthetic images (default 6000)")
    parser.add_argument("--boxes-per-image", type=float, default=8.0, help="mean GT boxes per image")
    parser.add_argument("--repeat", type=int, default=2, help="runs per backend; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=3, metavar=("BACKEND", "ANN", "RES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    from fpncli.evaluation.coco_eval import available_backends

    if "faster-coco-eval" not in available_backends():
        sys.exit('faster-coco-eval is not installed: pip install "fpncli[fast]"')
    with tempfile.TemporaryDirectory(prefix="fpn-bench-eval-") as tmp:
        ann, res, n_gt, n_dt = synthesise(Path(tmp), args.images, args.boxes_per_image, args.seed)
        print(f"synthetic set: {args.images:,} images, {n_gt:,} ground-truth boxes, {n_dt:,} detections")
        print(
            f"command: python scripts/bench_eval.py --images {args.images} "
            f"--boxes-per-image {args.boxes_per_image:g} --repeat {args.repeat} --seed {args.seed}"
        )
        best: dict[str, tuple[float, float, list[float]]] = {}
        for i in range(args.repeat):
            for backend in ("pycocotools", "faster-coco-eval"):
                wall, inner, stats = run(backend, ann, res)
                print(f"  run {i + 1} {backend:17s} process {wall:6.2f} s   evaluate_results {inner:6.2f} s")
                if backend not in best or wall < best[backend][0]:
                    best[backend] = (wall, inner, stats)
    (pw, pi, ps), (fw, fi, fs) = best["pycocotools"], best["faster-coco-eval"]
    diff = max(abs(a - b) for a, b in zip(ps, fs))
    print(f"pycocotools:      {pw:6.2f} s per process ({pi:.2f} s in evaluate_results)")
    print(f"faster-coco-eval: {fw:6.2f} s per process ({fi:.2f} s in evaluate_results)")
    print(f"ratio: {pw / fw:.1f}x faster per process, {pi / fi:.1f}x in evaluate_results")
    print(f"12 numbers equal: {'exactly' if diff == 0 else f'to {diff:.1e}'}  (AP {ps[0]:.4f} / {fs[0]:.4f})")


if __name__ == "__main__":
    main()
