"""The tracker's cost per frame next to the detector's, for `fpn detect --track`.

    python scripts/bench_track.py --weights RUN/last.pt --frames 60 --video scene.mp4

A synthetic scene (dark shapes of fpn demo's four classes moving at constant speeds in
lanes over a light, noisy background, bouncing off the edges; a pure function of ``--seed``) is rendered
in memory (and written to ``--video`` for `fpn detect --track` to run on). The model detects
in every frame at the tracker's lowered threshold, as `fpn detect --track` runs it (BatchNorm
folded, Winograd on the CPU), then each tracker runs over those detections; ``--rounds`` such
rounds in one process (so a busy machine's load hits the detector and the trackers alike),
and the median round's mean is reported per frame, with the ids each gave, the id switches (the times a ground-truth
object's best reported box, matched at IoU >= 0.5, carries another id than the last time it
was seen) and the share of object-frames with such a box. Synthetic streams of 10, 50 and 200 boxes per frame (no detector) show how
the trackers scale with the number of boxes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fpncli.inference.tracking.adapter import TRACKERS, Tracker, detector_threshold

CLASSES = ("circle", "square", "triangle", "cross")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def scene(frames: int, size: tuple[int, int], objects: int, seed: int) -> tuple[list[np.ndarray], list[list]]:
    """``frames`` RGB ``uint8 [H, W, 3]`` frames and per frame the objects' ``[cls, x1, y1, x2, y2]``:
    ``objects`` shapes, each in its own horizontal lane, moving at 1.5-4 px a frame and bouncing
    off the left and right edges."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.uniform(185, 235, size=3)
    lane = height / objects  # one horizontal lane each: objects pass, never overlap
    things = []
    for k in range(objects):
        h = float(rng.uniform(0.55, 0.85)) * lane
        w = h * float(rng.uniform(0.8, 1.25))
        things.append(
            {
                "cls": CLASSES[k % len(CLASSES)],
                "w": w,
                "h": h,
                "x": float(rng.uniform(0, width - w)),
                "y": k * lane + (lane - h) / 2,
                "vx": float(rng.choice([-1, 1]) * rng.uniform(1.5, 4)),
                "vy": 0.0,
                "colour": tuple(int(v) for v in rng.uniform(10, 80, size=3)),
            }
        )
    images, truth = [], []
    for _ in range(frames):
        noise = rng.normal(0, 5, size=(height, width, 1))
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        boxes = []
        for t in things:
            x, y, w, h = t["x"], t["y"], t["w"], t["h"]
            x2, y2 = x + w, y + h
            if t["cls"] == "circle":
                draw.ellipse([x, y, x2, y2], fill=t["colour"])
            elif t["cls"] == "square":
                draw.rectangle([x, y, x2, y2], fill=t["colour"])
            elif t["cls"] == "triangle":
                draw.polygon([(x + w / 2, y), (x, y2), (x2, y2)], fill=t["colour"])
            else:
                tw, th = w / 3, h / 3
                draw.rectangle([x + (w - tw) / 2, y, x + (w + tw) / 2, y2], fill=t["colour"])
                draw.rectangle([x, y + (h - th) / 2, x2, y + (h + th) / 2], fill=t["colour"])
            boxes.append([t["cls"], x, y, x2, y2])
            # Move, bouncing off the edges.
            for pos, vel, extent, limit in (("x", "vx", w, width), ("y", "vy", h, height)):
                t[pos] += t[vel]
                if t[pos] < 0 or t[pos] + extent > limit:
                    t[vel] = -t[vel]
                    t[pos] = min(max(t[pos], 0.0), limit - extent)
        images.append(np.array(img))
        truth.append(boxes)
    return images, truth


def _fake_stream(frames: int, boxes: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``boxes`` 20-40 px boxes per frame moving at constant speeds on a 1920x1080 canvas."""
    rng = np.random.default_rng(seed)
    start = rng.uniform([0, 0], [1880, 1040], size=(boxes, 2))
    side = rng.uniform(20, 40, size=(boxes, 1))
    speed = rng.uniform(-4, 4, size=(boxes, 2))
    scores = rng.uniform(0.2, 1.0, size=boxes)
    labels = rng.integers(1, 5, size=boxes)
    out = []
    for i in range(frames):
        xy = start + speed * i
        out.append((np.hstack([xy, xy + side]), scores, labels))
    return out


def _best_match(box, objects) -> tuple[int, float]:
    """(index, IoU) of the ground-truth object ``box`` overlaps most."""
    best = (-1, 0.0)
    for k, (_, x1, y1, x2, y2) in enumerate(objects):
        iw = max(0.0, min(box[2], x2) - max(box[0], x1))
        ih = max(0.0, min(box[3], y2) - max(box[1], y1))
        inter = iw * ih
        union = (box[2] - box[0]) * (box[3] - box[1]) + (x2 - x1) * (y2 - y1) - inter
        iou = inter / union if union > 0 else 0.0
        if iou > best[1]:
            best = (k, iou)
    return best


def _time_trackers(stream, rate: float, score_thr: float, rounds: int, frames_rgb=None) -> dict[str, float]:
    """Median over ``rounds`` (trackers alternating within each) of the ms per frame of each tracker."""
    per: dict[str, list[float]] = {name: [] for name in TRACKERS}
    for _ in range(rounds):
        for name in TRACKERS:
            tracker = Tracker(name, score_thr, rate)
            start = time.perf_counter()
            for i, (boxes, scores, labels) in enumerate(stream):
                rgb = frames_rgb[i] if frames_rgb is not None else None
                tracker.update(boxes, scores, labels, i / rate, rgb)
            per[name].append(1000 * (time.perf_counter() - start) / len(stream))
    return {name: statistics.median(v) for name, v in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="the detector (an fpn train checkpoint, coco, ...)")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="320x256", help="frame WIDTHxHEIGHT")
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--score-thr", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video", type=Path, help="also write the scene to this video file")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    images, truth = scene(args.frames, (width, height), args.objects, args.seed)
    if args.video is not None:
        from fpncli.data.video import VideoWriter

        writer = VideoWriter(args.video, width, height, Fraction(args.fps).limit_denominator(1001))
        for rgb in images:
            writer.write(rgb)
        print(f"scene written to {writer.close()}")

    from fpncli.modeling.optimize import optimize_for_inference
    from fpncli.modeling.weights import load_for_inference

    low = detector_threshold("bytetrack", args.score_thr)
    model, source = load_for_inference(args.weights, box_score_thresh=low)
    model = optimize_for_inference(model.eval(), inplace=True, winograd=True, channels_last=False)
    stream: list = []
    detect_rounds: list[float] = []
    per_round: dict[str, list[float]] = {name: [] for name in TRACKERS}
    for _ in range(args.rounds):
        # The detector, then each tracker on its boxes: a round's load hits both alike.
        stream, detect_ms = [], []
        with torch.inference_mode():
            for rgb in images:
                start = time.perf_counter()
                pixels = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)
                out = model.detect_prepared([model.prepare_image(pixels, inplace=True)], [(height, width)])[0]
                detect_ms.append(1000 * (time.perf_counter() - start))
                stream.append((out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy()))
        detect_rounds.append(statistics.mean(detect_ms))
        for name, ms in _time_trackers(stream, args.fps, args.score_thr, 1, images).items():
            per_round[name].append(ms)
    fed = statistics.mean(len(s[1]) for s in stream)
    reported = statistics.mean(int((s[1] >= args.score_thr).sum()) for s in stream)
    detector = statistics.median(detect_rounds)
    trackers = {name: statistics.median(v) for name, v in per_round.items()}
    ids, switches, covered = {}, {}, {}
    for name in TRACKERS:
        tracker = Tracker(name, args.score_thr, args.fps)
        found: set[int] = set()
        last: dict[int, int] = {}  # object -> the id of its best box when last seen
        changes = hits = 0
        for i, (boxes, scores, labels) in enumerate(stream):
            best: dict[int, tuple[float, int]] = {}  # object -> (IoU, id) of its best reported box
            for index, track_id in tracker.update(boxes, scores, labels, i / args.fps, images[i]):
                found.add(track_id)
                k, iou = _best_match(boxes[index], truth[i])
                if iou >= 0.5 and iou > best.get(k, (0.0, 0))[0]:
                    best[k] = (iou, track_id)
            for k, (_, track_id) in best.items():
                changes += k in last and last[k] != track_id
                last[k] = track_id
            hits += len(best)
        ids[name] = len(found)
        switches[name] = changes
        covered[name] = hits / (args.objects * args.frames)
    synthetic = {n: _time_trackers(_fake_stream(100, n), 30.0, 0.5, args.rounds) for n in (10, 50, 200)}
    cpu = f"{_cpu_name()}, {torch.get_num_threads()} torch threads"
    print(f"{args.frames} frames {width}x{height}, {args.objects} objects; {source}; {cpu}")
    print(
        f"detector: {detector:.1f} ms/frame (median of {args.rounds} rounds' means), {fed:.1f} boxes/frame at score >= {low:g}, "
        f"{reported:.1f} at >= {args.score_thr:g}"
    )
    print(
        f"{'tracker':10} {'ms/frame':>9} {'% of detector':>14} {'ids':>5} {'switches':>9} {'tracked':>8}"
        + "".join(f" {f'{n} boxes':>10}" for n in synthetic)
    )
    for name in TRACKERS:
        row = (
            f"{name:10} {trackers[name]:9.2f} {100 * trackers[name] / detector:13.1f}% {ids[name]:5d}"
            f" {switches[name]:9d} {100 * covered[name]:7.0f}%"
        )
        print(row + "".join(f" {synthetic[n][name]:8.2f}ms" for n in synthetic))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": cpu,
                    "frames": args.frames,
                    "size": [width, height],
                    "objects": args.objects,
                    "detector_ms": detector,
                    "boxes_fed": fed,
                    "boxes_reported": reported,
                    "tracker_ms": trackers,
                    "ids": ids,
                    "id_switches": switches,
                    "tracked_fraction": covered,
                    "synthetic_ms": synthetic,
                },
                indent=2,
            )
        )
    if any(math.isnan(v) for v in trackers.values()):
        raise SystemExit("a tracker gave no timing")


if __name__ == "__main__":
    main()
