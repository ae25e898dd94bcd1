"""`fpn inspect-levels`: the level table, proposals per level, the equation, the fast best-anchor
IoU, the dataset report on coco-tiny, the JSON shape and bad inputs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from fpncli.analysis.anchor_fit import (
    POSITIVE_IOU,
    USABLE_IOU,
    anchor_layout,
    best_anchor_iou,
    inspect_dataset,
)
from fpncli.analysis.inspect_image import inspect_image
from fpncli.config import NECKS, preset_config
from fpncli.errors import FpnError
from fpncli.modeling.detector import build_model
from fpncli.modeling.levels import assign_level, level_boundaries, padded_size, resized_size

H, W = 256, 320  # the test image; min_size 256 / max_size 320 means no resizing


def _cfg(**overrides):
    return preset_config("tiny", class_names=["a", "b", "c"], category_ids=[1, 2, 3], **overrides)


@pytest.fixture(scope="module")
def model_256x320():
    torch.manual_seed(0)
    return build_model(_cfg(min_size=H, max_size=W)).eval()


@pytest.fixture(scope="module")
def noise_image(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "noise.png"
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def inspection(model_256x320, noise_image):
    return inspect_image(model_256x320, noise_image, score_thr=0.0, bottom_up=True)


THING = [{"id": 1, "name": "thing"}]


def test_level_table_matches_hand_computed_values(inspection):
    assert inspection.input_size == (H, W) and inspection.padded_size == (H, W)
    rows = {row.name: row for row in inspection.levels}
    assert list(rows) == ["p2", "p3", "p4", "p5", "p6"]
    for k, anchor in zip(range(2, 7), (16, 32, 64, 128, 256)):
        row = rows[f"p{k}"]
        stride = 2**k
        size = (math.ceil(H / stride), math.ceil(W / stride))  # (64, 80), (32, 40), ..., (4, 5)
        assert row.stride == stride
        assert row.size == size
        assert row.channels == 64
        assert row.anchor_sizes == [anchor]
        assert row.aspect_ratios == [0.5, 1.0, 2.0]
        assert row.anchors == size[0] * size[1] * 3
        # torchvision keeps the top pre_nms_top_n_test (300) per level before NMS.
        assert row.proposals_pre_nms == min(300, row.anchors)
        assert 0 <= row.proposals_post_nms <= row.proposals_pre_nms
    assert rows["p6"].detections is None  # P6 feeds the RPN only
    # Heat maps cover exactly the cells over the (unpadded) image.
    assert inspection.strength["p3"].shape == (32, 40)
    assert list(inspection.bottom_up) == ["c2", "c3", "c4", "c5"]


def test_proposals_per_level_add_up_to_what_the_rpn_returns(model_256x320, noise_image, inspection):
    captured = {}

    def keep(_module, _inputs, output) -> None:
        captured["boxes"] = output[0][0]

    hook = model_256x320.rpn.register_forward_hook(keep)
    try:
        with torch.inference_mode():
            pixels = torch.from_numpy(np.array(Image.open(noise_image))).permute(2, 0, 1)
            model_256x320([pixels.float() / 255])
    finally:
        hook.remove()
    post = [row.proposals_post_nms for row in inspection.levels]
    assert sum(post) == len(captured["boxes"]) == 150  # rpn_post_nms_top_n_test of the tiny preset
    assert sum(row.proposals_pre_nms for row in inspection.levels) > sum(post)  # NMS removed some
    # The model is left as it was: no wrapper remains on the RPN.
    assert "filter_proposals" not in vars(model_256x320.rpn)


def test_detections_are_assigned_levels_by_the_papers_equation(inspection):
    assert inspection.detections, "a random model at score 0 still returns boxes"
    boxes = torch.tensor([d.box for d in inspection.detections])
    expected = assign_level(boxes, 2, 5).tolist()  # no resizing: image pixels = input pixels
    assert [d.level for d in inspection.detections] == [f"p{k}" for k in expected]
    counts = {row.name: row.detections for row in inspection.levels if row.detections is not None}
    assert sum(counts.values()) == len(inspection.detections)
    for name, n in counts.items():
        assert n == sum(d.level == name for d in inspection.detections)


def test_no_detections_above_threshold_is_an_empty_list(model_256x320, noise_image):
    result = inspect_image(model_256x320, noise_image, score_thr=1.01)
    assert result.detections == []
    assert all(row.detections in (0, None) for row in result.levels)


def test_equation_boundaries_and_cases():
    for name, size in level_boundaries(2, 5):
        k = int(name[1:])
        just_below = torch.tensor([[0.0, 0.0, size * 0.999, size * 0.999]])
        exact = torch.tensor([[0.0, 0.0, size, size]])
        assert assign_level(just_below, 2, 5).item() == k - 1
        assert assign_level(exact, 2, 5).item() == k
    assert [b for _, b in level_boundaries(2, 5)] == [112.0, 224.0, 448.0]


def test_dataset_levels_use_the_equation_in_resized_pixels(tmp_path, write_coco):
    # A 512x512 image with min_size 256 is halved: a 448 px box is 224 px to the model (P4).
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, s, s], "area": s * s, "iscrowd": 0}
        for i, s in enumerate((448, 224, 112, 20, 1000))
    ]
    ann = write_coco(
        tmp_path / "a.json", [{"id": 1, "file_name": "x.jpg", "width": 1024, "height": 1024}], anns, THING
    )
    report = inspect_dataset(ann, _cfg(min_size=256, max_size=384))
    # 1024 -> 256: scale 1/4; sizes 112, 56, 28, 5, 250 px -> P3, P2, P2, P2, P4
    assert report.level.tolist() == ["p3", "p2", "p2", "p2", "p4"]
    np.testing.assert_allclose(report.box_size, [112, 56, 28, 5, 250])


def test_resized_size_matches_the_models_transform():
    cfg = _cfg(min_size=256, max_size=384)
    with torch.device("meta"):
        model = build_model(cfg)
    rng = np.random.default_rng(1)
    for h, w in rng.integers(20, 3000, size=(40, 2)):
        out, _ = model.transform.resize(torch.empty(3, int(h), int(w), device="meta"))
        assert resized_size(int(h), int(w), 256, 384) == tuple(out.shape[-2:])


@pytest.mark.parametrize("neck,grid", [("fpn", "stride"), ("c4", "stride"), ("fpn", "torchvision")])
def test_best_anchor_iou_equals_brute_force(neck, grid):
    """The nearest-grid-point shortcut against the full IoU matrix with every anchor that
    the model's own anchor generator makes (torchvision's grid: P6 of a 96-px side has 2 cells
    48 px apart, not 64)."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou

    if neck not in NECKS:
        pytest.skip(f"neck {neck} not available")
    cfg = _cfg(neck=neck, min_size=128, max_size=192, anchor_grid=grid)
    layout = anchor_layout(cfg)
    torch.manual_seed(0)
    generator = build_model(cfg).rpn.anchor_generator
    rng = np.random.default_rng(0)
    for ph, pw in ((128, 192), (96, 160)):
        maps = [
            torch.zeros(
                1, 1, math.ceil(ph / layout.levels[n].stride), math.ceil(pw / layout.levels[n].stride)
            )
            for n in layout.rpn_levels
        ]
        anchors = generator(ImageList(torch.zeros(1, 3, ph, pw), [(ph, pw)]), maps)[0].double()
        n = 400
        cx, cy = rng.uniform(-20, pw + 20, n), rng.uniform(-20, ph + 20, n)
        bw = np.exp(rng.uniform(np.log(1.5), np.log(400), n))
        bh = bw * np.exp(rng.uniform(np.log(1 / 6), np.log(6), n))
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        fast, which = best_anchor_iou(boxes, np.tile([ph, pw], (n, 1)), layout)
        brute = box_iou(torch.from_numpy(boxes), anchors).max(dim=1).values.numpy()
        np.testing.assert_allclose(fast, brute, rtol=0, atol=1e-9)
        assert (which >= 0).all() and (which < len(layout.shapes)).all()


def test_dataset_report_on_coco_tiny(coco_tiny):
    path = coco_tiny / "annotations" / "instances_val2017.json"
    raw = json.loads(path.read_text())
    crowd = sum(1 for a in raw["annotations"] if a.get("iscrowd"))
    report = inspect_dataset(path, _cfg())
    data = report.to_json()
    assert data["boxes"] == len(raw["annotations"]) - crowd
    assert data["skipped"]["crowd"] == crowd
    assert sum(lv["boxes"] for lv in data["levels"]) == data["boxes"]
    assert sum(lv["best_anchor_boxes"] for lv in data["levels"]) == data["boxes"]
    assert sum(b["boxes"] for b in data["buckets"]) == data["boxes"]
    small = (report.area < 32**2).sum()
    assert data["buckets"][0]["name"] == "small" and data["buckets"][0]["boxes"] == small
    o = data["overall"]
    assert o["positive"] == int((report.best_iou >= POSITIVE_IOU).sum())
    assert o["usable"] == int((report.best_iou >= USABLE_IOU).sum())
    assert 0 <= o["share_positive"] <= o["share_usable"] <= 1
    # A tenth of COCO's boxes are under ~8 px at the tiny preset's 256 px inputs: the verdict
    # says so, and the setting it names does what it says.
    assert data["fits"] is False
    line = next(line for line in data["verdict"] if "smaller than the smallest anchor" in line)
    min_size, max_size = map(int, re.search(r"--min-size (\d+) --max-size (\d+)", line).groups())
    larger = inspect_dataset(path, _cfg(min_size=min_size, max_size=max_size))
    assert larger.overall.usable > report.overall.usable


@pytest.mark.slow
def test_cli_dataset_writes_report_and_pictures(coco_tiny, tmp_path, cli):
    ann = coco_tiny / "annotations" / "instances_val2017.json"
    result = cli(["inspect-levels", "--coco", str(ann), "--preset", "tiny", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "positive" in result.output
    for name in ("dataset_levels.json", "box_sizes.png", "coverage.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "dataset_levels.json").read_text())["boxes"] > 0


@pytest.mark.slow
def test_cli_json_shape_and_pictures(noise_image, tmp_path, tiny_checkpoint, cli):
    result = cli(
        [
            "inspect-levels",
            str(noise_image),
            "--weights",
            str(tiny_checkpoint),
            "--min-size",
            "128",
            "--max-size",
            "160",
            "--score-thr",
            "0",
            "--device",
            "cpu",
            "--compare-bottom-up",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data == json.loads((tmp_path / "levels.json").read_text())
    assert data["image"] == str(noise_image)
    assert data["input_size"] == [128, 160]
    level_keys = {
        "name",
        "stride",
        "size",
        "channels",
        "anchor_size",
        "anchors",
        "proposals_pre_nms",
        "proposals_post_nms",
        "detections",
    }
    assert [lv["name"] for lv in data["levels"]] == ["p2", "p3", "p4", "p5", "p6"]
    for lv in data["levels"]:
        assert level_keys <= set(lv)
        assert len(lv["size"]) == 2 and lv["anchors"] == lv["size"][0] * lv["size"][1] * 3
    assert data["detections"]
    for det in data["detections"]:
        assert {"box", "score", "label", "level"} <= set(det) and len(det["box"]) == 4
        assert det["level"] in {"p2", "p3", "p4", "p5"}
    pictures = {p.name for p in tmp_path.glob("*.png")}
    assert {"pyramid.png", "detections.png", "bottom_up_vs_top_down.png"} <= pictures
    assert {f"heatmap_p{k}.png" for k in range(2, 7)} <= pictures


# -- bad input ---------------------------------------------------------------------------


def _fails(cli, args, *needles):
    result = cli(["inspect-levels", *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output
    return result


def test_unreadable_image(tmp_path, cli):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    _fails(cli, [str(bad), "--preset", "tiny", "--device", "cpu"], "broken.jpg", "not an image")


def test_image_too_small_for_the_coarsest_level(tmp_path, model_256x320, cli):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (320, 8)).save(thin)  # resized to 320x8: shorter side below P6's stride 64
    with pytest.raises(FpnError, match=r"too small.*p6 has stride 64"):
        inspect_image(model_256x320, thin)
    _fails(cli, [str(thin), "--preset", "tiny", "--device", "cpu"], "too small")


def test_empty_and_boxless_annotation_files(tmp_path, cli, write_coco):
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    _fails(cli, ["--coco", str(empty)], "empty.json", "empty file")
    none = write_coco(tmp_path / "none.json", [], [], THING)
    _fails(cli, ["--coco", str(none)], "no boxes to inspect")


def test_zero_area_boxes_are_counted_not_crashed_on(tmp_path, cli, write_coco):
    image = {"id": 7, "file_name": "x.jpg", "width": 640, "height": 480}
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 50, 40]},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [10, 10, 0, 40]},
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [10, 10, 30, 0]},
        {"id": 4, "image_id": 7, "category_id": 1, "bbox": [100, 100, 120, 90]},
        {"id": 5, "image_id": 7, "category_id": 1, "bbox": [1, 1, float("inf"), 5]},
    ]
    report = inspect_dataset(write_coco(tmp_path / "z.json", [image], anns, THING), _cfg())
    assert report.skipped["zero_area"] == 2
    assert report.skipped["invalid"] == 1 and np.isfinite(report.best_iou).all()
    assert report.overall.boxes == 2
    assert any("zero width or height" in line for line in report.verdict)
    only_zero = write_coco(tmp_path / "only.json", [image], anns[1:3], THING)
    _fails(cli, ["--coco", str(only_zero)], "no boxes to inspect", "2 zero area")


def test_image_or_coco_exactly_one(tmp_path, cli):
    _fails(cli, [], "exactly one")
    _fails(cli, ["x.jpg", "--coco", "y.json"], "exactly one")


def test_padded_size():
    assert padded_size(256, 341, 32) == (256, 352)
