"""`fpn data check`: a COCO dataset's problems, class histogram and box sizes by FPN level (#27)."""

from __future__ import annotations

import json

import pytest

from fpncli.analysis.dataset_check import check_dataset, level_histogram
from fpncli.analysis.inspect_levels import InspectOptions
from fpncli.data.check import PROBLEMS, check_coco

SQUARE = InspectOptions(preset="tiny", min_size=512, max_size=512)  # 512x512 images: scale 1


def _broken(root, make_image, write_coco):
    for name, size in (
        ("a.png", (512, 512)),
        ("b.png", (512, 512)),
        ("c.png", (512, 512)),
        ("e.png", (64, 48)),
    ):
        make_image(root / "train" / name, size)
    (root / "train" / "bad.png").write_bytes(b"\x89PNG but not really")
    images = [
        {"id": 1, "file_name": "a.png", "width": 512, "height": 512},
        {"id": 2, "file_name": "b.png", "width": 512, "height": 512},
        {"id": 2, "file_name": "c.png", "width": 512, "height": 512},  # duplicate id
        {"id": 3, "file_name": "missing.png", "width": 512, "height": 512},
        {"id": 4, "file_name": "bad.png", "width": 512, "height": 512},
        {"id": 5, "file_name": "e.png", "width": 640, "height": 480},  # the file is 64x48
        {"id": 6, "file_name": "a.png", "width": 512, "height": 512},  # listed twice
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 300, 300]},  # 300 px: P4
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [10, 10, 120, 120]},  # 120 px: P3
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 40, 40]},  # dup ann id; 40 px: P2
        {"id": 4, "image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5]},  # unknown category
        {"id": 5, "image_id": 77, "category_id": 1, "bbox": [0, 0, 5, 5]},  # unknown image
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0.5, 30]},  # degenerate
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [500, 0, 30, 30]},  # outside
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, "x", 3]},  # invalid
        {"id": 9, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},
    ]
    cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    return write_coco(root / "annotations" / "instances_train.json", images, anns, cats)


def test_check_counts_every_kind_of_problem(tmp_path, make_image, write_coco):
    ann = _broken(tmp_path / "ds", make_image, write_coco)
    report = check_coco(ann, tmp_path / "ds" / "train")
    assert dict(report.problems) == {
        "duplicate_image_id": 1,
        "duplicate_file_name": 1,
        "missing_image": 1,
        "unreadable_image": 1,
        "size_mismatch": 1,
        "duplicate_annotation_id": 1,
        "unknown_category": 1,
        "unknown_image": 1,
        "degenerate_box": 1,
        "outside_image": 1,
        "invalid_bbox": 1,
    }
    assert set(report.problems) <= set(PROBLEMS) and not report.ok
    assert report.examples["size_mismatch"] == [
        f"{tmp_path / 'ds' / 'train' / 'e.png'}: 640x480 in the JSON, 64x48 in the file"
    ]
    # images 2, 3, 4, 5 and 6 hold no (non-crowd) object; 1 crowd region
    assert report.empty_images == 5 and report.crowd == 1
    assert report.classes == [
        {"id": 1, "name": "dog", "boxes": 2, "images": 1},
        {"id": 2, "name": "cat", "boxes": 2, "images": 1},
    ]


def test_cli_check_json_levels_and_exit_code(tmp_path, make_image, write_coco, cli):
    _broken(tmp_path / "ds", make_image, write_coco)
    args = ["data", "check", tmp_path / "ds", "--preset", "tiny", "--min-size", "512", "--max-size", "512"]
    result = cli([*args, "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    data = json.loads(result.stdout)
    split = data["splits"]["train"]
    assert data["ok"] is False and split["problems"]["missing_image"] == 1
    hist = {(r["low"], r["level"]): r["boxes"] for r in split["levels"]["histogram"]}
    # sqrt(w h) at scale 1: 300 -> 224..448 (P4), 120 -> 112..224 (P3), 40 -> 28..56 (P2)
    assert hist[(224.0, "p4")] >= 1 and hist[(112.0, "p3")] >= 1 and hist[(28.0, "p2")] >= 1
    table = cli(args)
    assert table.exit_code == 1
    assert "images of another size than the JSON says" in table.output and "p4" in table.output


def test_check_clean_and_empty_datasets(tmp_path, make_image, write_coco, cli):
    make_image(tmp_path / "ok" / "train" / "a.png", (64, 48))
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    cats = [{"id": 1, "name": "dog"}]
    write_coco(tmp_path / "ok" / "annotations" / "instances_train.json", images, [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "area": 400, "iscrowd": 0}
    ], cats)  # fmt: skip
    result = cli(["data", "check", tmp_path / "ok", "--preset", "tiny"])
    assert result.exit_code == 0 and "no problems found" in result.output
    # no annotations at all: still a report (the levels say why they are missing), not an error
    write_coco(tmp_path / "ok" / "annotations" / "instances_train.json", images, [], cats)
    report = check_dataset(tmp_path / "ok", options=InspectOptions(preset="tiny"))
    assert report.ok and report.splits["train"].empty_images == 1
    assert "no boxes to inspect" in report.splits["train"].levels["error"]
    broken = cli(["data", "check", tmp_path / "nothing"])
    assert broken.exit_code == 1 and "no such file or folder" in broken.output
    (tmp_path / "ok" / "annotations" / "instances_train.json").write_text('{"images": [')
    broken = cli(["data", "check", tmp_path / "ok"])
    assert broken.exit_code == 1 and "malformed JSON at line 1" in broken.output
    assert "Traceback" not in broken.output


def test_level_histogram_bins_follow_equation_one():
    import numpy as np

    rows = level_histogram(
        np.array([30.0, 100.0, 111.9, 112.0, 500.0]), np.array(["p2", "p2", "p2", "p3", "p5"])
    )
    assert [(r["low"], r["boxes"], r["level"]) for r in rows] == [
        (28.0, 1, "p2"), (56.0, 2, "p2"), (112.0, 1, "p3"), (224.0, 0, None), (448.0, 1, "p5")
    ]  # fmt: skip
    assert level_histogram(np.zeros(0), np.zeros(0, dtype=str)) == []


def test_check_real_coco(coco_tiny):
    report = check_dataset(coco_tiny, options=InspectOptions(preset="tiny"))
    val = report.splits["val2017"]
    assert report.ok and val.images == 80
    data = json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text())
    plain = sum(1 for a in data["annotations"] if not a.get("iscrowd"))
    assert sum(c["boxes"] for c in val.classes) == plain and len(val.classes) == 80
    assert sum(r["boxes"] for r in val.levels["histogram"]) == val.levels["boxes"] == plain


@pytest.mark.parametrize("flag", ["--min-size", "--max-size"])
def test_check_refuses_a_size_that_is_not_positive(tmp_path, make_image, write_coco, cli, flag):
    make_image(tmp_path / "ok" / "train" / "a.png", (64, 48))
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    write_coco(
        tmp_path / "ok" / "annotations" / "instances_train.json", images, [], [{"id": 1, "name": "dog"}]
    )
    result = cli(["data", "check", tmp_path / "ok", flag, "0", "--no-images"])
    assert result.exit_code == 1 and f"{flag} must be a positive number of pixels, got 0" in result.output


def test_check_flags_images_without_size_and_no_categories(tmp_path, write_coco, cli):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png", "width": 0, "height": 4}]
    ann = write_coco(tmp_path / "annotations" / "instances_val.json", images, [], [])
    report = check_coco(ann, tmp_path / "val", read_images=False)
    assert report.problems["missing_size"] == 2 and report.problems["no_categories"] == 1
    assert not report.ok


def test_check_says_a_file_is_not_coco_before_asking_for_images(tmp_path, cli):
    (tmp_path / "notes.json").write_text('{"a": 1}')
    result = cli(["data", "check", tmp_path / "notes.json"])
    assert result.exit_code == 1 and "no 'images' list (not a COCO annotation file)" in result.output
    assert "--images" not in result.output
    (tmp_path / "garbage.json").write_text("garbage")
    result = cli(["data", "check", tmp_path / "garbage.json"])
    assert result.exit_code == 1 and "malformed JSON at line 1" in result.output
