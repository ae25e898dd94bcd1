"""`fpn eval` on real COCO annotations (coco-tiny val): equality with pycocotools' own COCOeval,
per-class numbers, and category ids mapped both ways (dataset-trained and COCO_V1 label spaces)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
from types import SimpleNamespace

import pytest

from fpncli.errors import FpnError
from fpncli.evaluation.coco_eval import METRIC_KEYS
from fpncli.evaluation.evaluate import evaluate_model, evaluate_results


def _val(coco_tiny):
    return coco_tiny / "annotations" / "instances_val2017.json"


def _noisy_results(ann_file, seed: int = 0) -> list[dict]:
    """Detections made from the ground truth: seeded jitter, ~20% dropped, false positives
    (random boxes, random classes, duplicates), crowd regions skipped."""
    data = json.loads(ann_file.read_text())
    rng = random.Random(seed)
    cats = [c["id"] for c in data["categories"]]
    sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    out = []
    for a in data["annotations"]:
        if a["iscrowd"] or rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        box = [
            x + rng.gauss(0, 0.08 * w),
            y + rng.gauss(0, 0.08 * h),
            w * rng.uniform(0.8, 1.2),
            h * rng.uniform(0.8, 1.2),
        ]
        out.append(
            {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box, "score": rng.random()}
        )
        if rng.random() < 0.1:  # duplicate: a false positive at the same place
            out.append({**out[-1], "score": rng.random() * 0.5})
    for _ in range(400):
        img = rng.choice(list(sizes))
        W, H = sizes[img]
        w, h = rng.uniform(4, W / 2), rng.uniform(4, H / 2)
        out.append(
            {
                "image_id": img,
                "category_id": rng.choice(cats),
                "bbox": [rng.uniform(0, W - w), rng.uniform(0, H - h), w, h],
                "score": rng.random(),
            }
        )
    return out


def _pycocotools_stats(ann_file, results, cat_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


@pytest.mark.parametrize("seed", [0, 1])
def test_numbers_equal_pycocotools_cocoeval(coco_tiny, seed):
    ann = _val(coco_tiny)
    results = _noisy_results(ann, seed)
    reference = _pycocotools_stats(ann, results)
    assert 0.05 < reference[0] < 0.9  # the test data is neither trivial nor hopeless
    ours = evaluate_results(ann, copy.deepcopy(results), backend="pycocotools")
    assert [ours[k] for k in METRIC_KEYS] == reference  # exact: same library, same inputs
    fast = evaluate_results(ann, copy.deepcopy(results), backend="faster-coco-eval")
    # faster-coco-eval's C++ accumulation: measured identical here (max |diff| 0.0); its
    # per-entry precision differs by float rounding (~2e-16), so allow 1e-12.
    assert max(abs(fast[k] - r) for k, r in zip(METRIC_KEYS, reference)) <= 1e-12
    by_id = {r["category_id"]: r for r in fast["per_class"]}
    for row in ours["per_class"]:  # per class: measured |diff| <= 2.3e-16
        assert [by_id[row["category_id"]][k] for k in ("AP", "AP50", "APs", "AR100")] == pytest.approx(
            [row[k] for k in ("AP", "AP50", "APs", "AR100")], abs=1e-12
        )
    assert ours["num_images"] == 80 and ours["num_detections"] == len(results)
    assert ours["problems"] == []


def test_per_class_equals_single_category_cocoeval(coco_tiny):
    ann = _val(coco_tiny)
    results = _noisy_results(ann, 3)
    ours = evaluate_results(ann, results, backend="pycocotools")
    by_id = {r["category_id"]: r for r in ours["per_class"]}
    assert len(by_id) == 80
    for cid in (1, 3, 44, 62):  # person, car, bottle, chair: many instances, all sizes
        ref = _pycocotools_stats(ann, results, cat_ids=[cid])
        row = by_id[cid]
        assert [row[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")] == pytest.approx(
            [ref[0], ref[1], ref[2], ref[3], ref[4], ref[5], ref[8]], abs=1e-12
        )
    data = json.loads(ann.read_text())
    persons = sum(1 for a in data["annotations"] if a["category_id"] == 1 and not a["iscrowd"])
    assert by_id[1]["instances"] == persons
    aps = [r["AP"] for r in ours["per_class"]]
    assert aps == sorted(aps, reverse=True)


def _fake_predict(ann_file, label_of, extra_label=None):
    """A stand-in for predict_images that returns each image's ground truth as detections,
    with model labels given by ``label_of(category_id)`` (the inverse of the model's mapping),
    plus one detection of ``extra_label`` per image when given."""
    import torch

    data = json.loads(ann_file.read_text())
    by_name = {i["file_name"]: i["id"] for i in data["images"]}
    per_image: dict[int, list] = {}
    for a in data["annotations"]:
        if not a["iscrowd"]:
            per_image.setdefault(a["image_id"], []).append(a)

    def predict_images(model, paths, device="cpu", batch_size=2, workers=0, on_result=None, **options):
        for path in paths:
            anns = per_image.get(by_name[path.name], [])
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            labels = [label_of(a["category_id"]) for a in anns]
            if extra_label is not None:
                boxes.append([0, 0, 10, 10])
                labels.append(extra_label)
            yield SimpleNamespace(
                path=path,
                error=None,
                boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                scores=torch.linspace(1, 0.5, len(labels)),
                labels=torch.tensor(labels),
            )

    return predict_images


def _gt_results(ann_file):
    data = json.loads(ann_file.read_text())
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in data["annotations"]
        if not a["iscrowd"]
    ]


@pytest.mark.parametrize("label_space", ["dataset", "coco_v1"])
def test_model_labels_map_to_dataset_category_ids(coco_tiny, monkeypatch, tmp_path, label_space):
    from fpncli.config import ModelConfig
    from fpncli.inference import predict
    from fpncli.modeling.coco_classes import COCO_V1_CATEGORIES, coco_v1_config

    ann = _val(coco_tiny)
    cats = sorted(json.loads(ann.read_text())["categories"], key=lambda c: c["id"])
    if label_space == "dataset":
        # A model trained on this file: contiguous labels 1..80 for ids 1..90 with gaps.
        config = ModelConfig(class_names=[c["name"] for c in cats], category_ids=[c["id"] for c in cats])
        assert config.category_ids != list(range(1, 81))
    else:
        config = coco_v1_config()
        assert config.category_ids == list(range(1, 91)) and config.class_names[11] == "N/A"
        assert [COCO_V1_CATEGORIES[c["id"]] for c in cats] == [c["name"] for c in cats]
    label_of = {cid: i + 1 for i, cid in enumerate(config.category_ids)}.__getitem__
    # For COCO_V1, label 12 is an "N/A" slot: no COCO category, its detections must go.
    extra = 12 if label_space == "coco_v1" else None
    monkeypatch.setattr(predict, "predict_images", _fake_predict(ann, label_of, extra))
    model = SimpleNamespace(config=config)
    metrics = evaluate_model(model, ann, coco_tiny / "val2017", out_dir=tmp_path, backend="pycocotools")

    dets = json.loads((tmp_path / "detections.json").read_text())
    valid_ids = {c["id"] for c in cats}
    assert {d["category_id"] for d in dets} <= valid_ids
    assert len(dets) == len(_gt_results(ann))
    assert sorted((d["image_id"], d["category_id"]) for d in dets) == sorted(
        (d["image_id"], d["category_id"]) for d in _gt_results(ann)
    )
    if extra is not None:
        assert any("does not have" in p for p in metrics["problems"])
    # Same numbers as the ground truth written directly with dataset ids; a wrong mapping
    # would put boxes under other classes and collapse AP.
    reference = evaluate_results(ann, _gt_results(ann), backend="pycocotools")
    assert [metrics[k] for k in METRIC_KEYS] == [reference[k] for k in METRIC_KEYS]
    assert metrics["AP50"] > 0.97
    assert metrics["missing_images"] == [] and metrics["num_images"] == 80


def test_model_with_foreign_category_ids_is_one_clear_error(coco_tiny, monkeypatch):
    from fpncli.config import ModelConfig
    from fpncli.inference import predict

    monkeypatch.setattr(predict, "predict_images", _fake_predict(_val(coco_tiny), lambda c: 1))
    model = SimpleNamespace(config=ModelConfig(class_names=["a", "b"], category_ids=[1000, 1001]))
    with pytest.raises(FpnError, match="share none with"):
        evaluate_model(model, _val(coco_tiny), coco_tiny / "val2017")


@pytest.mark.slow
def test_real_model_end_to_end_with_a_missing_image(coco_tiny, tiny_model, tmp_path):
    """The real pipeline (predict_images) on 3 real images, one of them missing on disk."""
    data = json.loads(_val(coco_tiny).read_text())
    images = data["images"][:3]
    data["images"] = [*images, {"id": 999999, "file_name": "not_there.jpg", "width": 640, "height": 480}]
    ids = {i["id"] for i in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    data["annotations"].append(
        {"id": 1, "image_id": 999999, "category_id": 1, "bbox": [1, 1, 50, 50], "area": 2500, "iscrowd": 0}
    )
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    seen = []
    metrics = evaluate_model(
        tiny_model,
        ann,
        coco_tiny / "val2017",
        out_dir=tmp_path / "out",
        progress=lambda event: seen.append((event["done"], event["total"])),
    )
    assert metrics["missing_images"] == ["not_there.jpg"]
    assert metrics["num_images"] == 3  # the missing image is left out, not counted as missed
    assert seen[-1] == (3, 3)
    dets = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(dets) == metrics["num_detections"]
    assert all(d["image_id"] in {i["id"] for i in images} for d in dets)
    assert all(d["bbox"][2] >= 0 and d["bbox"][3] >= 0 for d in dets)  # xywh, not xyxy
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(saved) and saved["missing_images"] == ["not_there.jpg"]
    assert all(-1 <= saved[k] <= 1 for k in METRIC_KEYS)
