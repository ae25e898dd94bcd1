"""AP and time per image of plain, sliced and test-time-augmented inference with one model.

    python scripts/bench_augment.py --weights RUN/last.pt --coco ANN.json --images DIR \\
        --setting plain --setting "slice=256" --setting "tta=flip" --max-images 30

Each setting runs ``evaluate_model`` (the code behind ``fpn eval``) over the same images with
the model loaded once; the time per image is the wall-clock of that call divided by the
images (detection and the COCO evaluation, which is a small share here). Settings:
``plain``, ``slice=SIZE[@OVERLAP]``, ``tta=ITEMS`` (as ``--tta``), ``keepcut`` (keep the boxes a
tile cuts at its inner edges; by default they are dropped), joined by ``+``.
"""

from __future__ import annotations

import argparse
import json
import time

from fpncli.evaluation.evaluate import evaluate_model
from fpncli.inference.augment import AugmentedDetector, check_slice, parse_tta
from fpncli.modeling.weights import load_detector


def _setting(text: str) -> tuple:
    slicing, tta, drop_cut = None, None, True
    for part in text.split("+"):
        key, _, value = part.partition("=")
        if key == "keepcut":
            drop_cut = False
        elif key == "slice":
            size, _, overlap = value.partition("@")
            slicing = check_slice(int(size), float(overlap) if overlap else 0.2)
        elif key == "tta":
            tta = parse_tta(value)
        elif key != "plain":
            raise SystemExit(f"unknown setting {part!r}")
    return slicing, tta, drop_cut


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True)
    parser.add_argument("--coco", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--setting", action="append", default=[])
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    model = load_detector(args.weights).model
    rows = []
    print(f"{'setting':32} {'AP':>6} {'AP50':>6} {'APs':>6} {'APm':>6} {'APl':>6} {'s/img':>7}")
    for text in args.setting or ["plain"]:
        slicing, tta, drop_cut = _setting(text)
        start = time.perf_counter()
        metrics = evaluate_model(
            AugmentedDetector(model, slicing, tta, drop_cut=drop_cut),
            args.coco,
            args.images,
            max_images=args.max_images,
            backend="auto",
        )
        assert metrics is not None
        seconds = (time.perf_counter() - start) / metrics["num_images"]
        row = {
            "setting": text,
            **{k: metrics[k] for k in ("AP", "AP50", "APs", "APm", "APl")},
            "s_per_image": seconds,
        }
        rows.append(row)
        print(
            f"{text:32} {row['AP']:6.3f} {row['AP50']:6.3f} {row['APs']:6.3f} {row['APm']:6.3f} "
            f"{row['APl']:6.3f} {seconds:7.3f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
