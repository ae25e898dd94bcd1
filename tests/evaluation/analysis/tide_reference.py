"""Shared by the analysis tests: seeded detections made from ground truth, and tidecv's
numbers on the same inputs (tidecv is a test-only dependency)."""

from __future__ import annotations

import copy
import random
from typing import Any

KEYS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss", "FalsePos", "FalseNeg")


def perturbed(
    dataset: dict[str, Any], seed: int, false_pos: int = 200, dupes: float = 0.1, ties: bool = False
) -> list[dict]:
    """Detections from ``dataset``'s boxes: 80% of objects found, jittered (sd 20% of the
    size), 15% with a random class, ``dupes`` of them twice, plus ``false_pos`` random boxes;
    with ``ties`` scores are rounded to 0.1 (equal scores everywhere)."""
    rng = random.Random(seed)
    cats = [c["id"] for c in dataset["categories"]]
    dets = []
    for a in dataset["annotations"]:
        if rng.random() >= 0.8:
            continue
        x, y, w, h = a["bbox"]
        box = [
            x + rng.gauss(0, 0.2) * w,
            y + rng.gauss(0, 0.2) * h,
            max(1.0, w * (1 + rng.gauss(0, 0.2))),
            max(1.0, h * (1 + rng.gauss(0, 0.2))),
        ]
        cat = a["category_id"] if rng.random() < 0.85 else rng.choice(cats)
        dets.append({"image_id": a["image_id"], "category_id": cat, "bbox": box, "score": rng.random()})
        if rng.random() < dupes:
            dets.append({**dets[-1], "bbox": [v + rng.gauss(0, 2) for v in box], "score": rng.random()})
    images = dataset["images"]
    for _ in range(false_pos):
        im = rng.choice(images)
        w, h = rng.uniform(5, im["width"] / 2), rng.uniform(5, im["height"] / 2)
        box = [rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h), w, h]
        dets.append(
            {"image_id": im["id"], "category_id": rng.choice(cats), "bbox": box, "score": rng.random()}
        )
    if ties:
        for d in dets:
            d["score"] = round(d["score"], 1)
    return dets


def tidecv_numbers(dataset: dict[str, Any], detections: list[dict]) -> tuple[float, dict[str, float]]:
    """tidecv's AP50 and its eight dAP values (crowd annotations as its COCO loader makes them:
    ignore regions of their class)."""
    from tidecv import TIDE, Data

    gt, preds = Data("gt"), Data("preds")
    for im in dataset["images"]:
        gt.add_image(im["id"], im.get("file_name", ""))
    for c in dataset["categories"]:
        gt.add_class(c["id"], c.get("name", ""))
    for a in dataset["annotations"]:
        if a.get("iscrowd"):
            gt.add_ignore_region(a["image_id"], a["category_id"], a["bbox"])
        else:
            gt.add_ground_truth(a["image_id"], a["category_id"], a["bbox"])
    for d in copy.deepcopy(detections):
        preds.add_detection(d["image_id"], d["category_id"], d["score"], d["bbox"])
    tide = TIDE()
    tide.evaluate(gt, preds, mode=TIDE.BOX)
    errors = tide.get_all_errors()
    return tide.runs["preds"].ap, {**errors["main"]["preds"], **errors["special"]["preds"]}
