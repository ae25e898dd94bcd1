#!/usr/bin/env python
"""Time fpn eval --analyze's TIDE breakdown against tidecv on synthetic COCO-like sets.

    python scripts/bench_analyze.py                        # 3,000 images (~25k detections), then 5,000
    python scripts/bench_analyze.py --sizes 3000 --repeat 3

Each set comes from ``scripts/bench_eval.py``'s generator (seeded; COCO's 80 category ids,
crowd regions, images without objects, jittered, duplicated, mislabelled and false-positive
detections). Both sides get the same parsed lists and are timed alternately in this process
(the best of ``--repeat`` counts): tidecv from building its ``Data`` objects to its eight
numbers, ours from packing the arrays (``analysis.arrays.pack``) to the same eight numbers
(``analysis.tide.tide``). Also timed: the rest of ``--analyze``'s numbers (confusion matrix,
COCO error curves, worst images, errors.csv rows), without the pictures. Prints the CPU, the
times, the ratio and the largest difference between the two sides' numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_eval's generator
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_eval import synthesise

KEYS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss", "FalsePos", "FalseNeg")


def cpu() -> str:
    """The CPU's model name and its vector flags (from /proc/cpuinfo on Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?"
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []
    )
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "neon") if f in flags]
    import os

    return f"{name}, {os.cpu_count()} logical CPUs, flags: {' '.join(wanted) or 'none of avx2/avx512'}"


def run_tidecv(dataset: dict, dets: list[dict]) -> dict[str, float]:
    from tidecv import TIDE, Data

    gt, preds = Data("gt"), Data("preds")
    for im in dataset["images"]:
        gt.add_image(im["id"], im["file_name"])
    for c in dataset["categories"]:
        gt.add_class(c["id"], c["name"])
    for a in dataset["annotations"]:
        if a["iscrowd"]:
            gt.add_ignore_region(a["image_id"], a["category_id"], a["bbox"])
        else:
            gt.add_ground_truth(a["image_id"], a["category_id"], a["bbox"])
    for d in dets:
        preds.add_detection(d["image_id"], d["category_id"], d["score"], d["bbox"])
    tide = TIDE()
    tide.evaluate(gt, preds, mode=TIDE.BOX)
    errors = tide.get_all_errors()
    return {**errors["main"]["preds"], **errors["special"]["preds"]}


def run_ours(dataset: dict, dets: list[dict]) -> dict[str, float]:
    from fpncli.evaluation.analysis.arrays import pack
    from fpncli.evaluation.analysis.tide import tide

    result = tide(pack(dataset, dets))
    return {**result.errors, **result.special}


def run_rest(dataset: dict, dets: list[dict]) -> dict[str, float]:
    """The other numbers of --analyze, timed part by part (no pictures)."""
    import numpy as np

    from fpncli.evaluation.analysis.arrays import pack
    from fpncli.evaluation.analysis.confusion import confusion_matrix
    from fpncli.evaluation.analysis.error_curves import error_curves, error_curves_cocoeval
    from fpncli.evaluation.analysis.tide import tide
    from fpncli.evaluation.analysis.worst_images import error_rows, rows_to_csv, worst_images
    from fpncli.evaluation.coco_eval import run_cocoeval

    times = {}
    packed = pack(dataset, dets)
    result = tide(packed)
    t = time.perf_counter()
    confusion_matrix(
        packed, [c["id"] for c in dataset["categories"]], [c["name"] for c in dataset["categories"]]
    )
    times["confusion"] = time.perf_counter() - t
    t = time.perf_counter()
    worst_images(packed, result, 20)
    rows_to_csv(error_rows(packed, result, dataset))
    times["worst images + errors.csv"] = time.perf_counter() - t
    ids = {im["id"] for im in dataset["images"]}
    t = time.perf_counter()
    curves = error_curves(dataset, dets, ids)
    times["error curves (numpy)"] = time.perf_counter() - t
    for backend in ("faster-coco-eval", "pycocotools"):
        # The COCOeval reference; fpn eval's own run gives it C75/C50.
        standard = run_cocoeval(dataset, [dict(d) for d in dets], backend, ids)
        t = time.perf_counter()
        reference = error_curves_cocoeval(dataset, [dict(d) for d in dets], ids, backend, evaluation=standard)
        times[f"error curves (COCOeval, {backend})"] = time.perf_counter() - t
        same = np.array_equal(curves.precision, reference.precision, equal_nan=True)
        print(f"  numpy error curves equal to the COCOeval ({backend}) ones: {same}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 5000], help="images per set")
    parser.add_argument(
        "--boxes-per-image", type=float, default=7.3, help="mean GT boxes per image (COCO: 7.3)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs per side; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rest", action="store_true", help="time TIDE only")
    args = parser.parse_args()
    print(f"CPU: {cpu()}")
    print(f"python {platform.python_version()}, numpy {__import__('numpy').__version__}")
    for images in args.sizes:
        with tempfile.TemporaryDirectory(prefix="fpn-bench-analyze-") as tmp:
            ann, res, n_gt, n_dt = synthesise(Path(tmp), images, args.boxes_per_image, args.seed)
            dataset, dets = json.loads(ann.read_text()), json.loads(res.read_text())
        print(f"\n{images:,} images, {n_gt:,} ground-truth boxes, {n_dt:,} detections")
        best = {"tidecv": float("inf"), "ours": float("inf")}
        numbers = {}
        for _ in range(args.repeat):
            for name, fn in (("tidecv", run_tidecv), ("ours", run_ours)):
                t = time.perf_counter()
                numbers[name] = fn(dataset, dets)
                best[name] = min(best[name], time.perf_counter() - t)
        diff = max(abs(numbers["tidecv"][k] - numbers["ours"][k]) for k in KEYS)
        print(f"  tidecv:         {best['tidecv']:6.2f} s")
        print(f"  fpncli (numpy): {best['ours']:6.2f} s   ({best['tidecv'] / best['ours']:.1f}x faster)")
        print(f"  largest difference over the 8 dAP values: {diff:.1e} points")
        print("  dAP: " + "  ".join(f"{k} {numbers['ours'][k]:.2f}" for k in KEYS))
        if not args.no_rest:
            for part, seconds in run_rest(dataset, dets).items():
                print(f"  {part + ':':34s}{seconds:6.2f} s")


if __name__ == "__main__":
    main()
