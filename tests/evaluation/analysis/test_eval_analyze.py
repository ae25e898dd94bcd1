"""`fpn eval --analyze` end to end: results files, an empty one, bad input, and a model whose
levels are recorded (with TTA)."""

from __future__ import annotations

import json

import pytest

from tests.evaluation.analysis.tide_reference import KEYS

DATASET = {
    "images": [{"id": i, "file_name": f"{i}.png", "width": 96, "height": 80} for i in (1, 2, 3)],
    "categories": [
        {"id": 1, "name": "circle", "supercategory": "shape"},
        {"id": 3, "name": "square", "supercategory": "shape"},
        {"id": 7, "name": "triangle", "supercategory": "shape"},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 20, 20, 40], "area": 800, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 60, 60], "area": 3600, "iscrowd": 0},
    ],  # image 3 has no annotations
}
RESULTS = [
    {"image_id": 1, "category_id": 1, "bbox": [11, 10, 30, 30], "score": 0.9},
    {"image_id": 1, "category_id": 7, "bbox": [50, 20, 20, 40], "score": 0.8},  # Cls
    {"image_id": 2, "category_id": 7, "bbox": [20, 20, 60, 55], "score": 0.7},  # Loc
    {"image_id": 3, "category_id": 3, "bbox": [5, 5, 10, 10], "score": 0.6},  # Bkg
]


@pytest.fixture
def files(tmp_path, write_coco, make_image):
    images = tmp_path / "images"
    for im in DATASET["images"]:
        make_image(images / im["file_name"], size=(96, 80), seed=im["id"])
    ann = write_coco(tmp_path / "ann.json", **DATASET)
    res = tmp_path / "res.json"
    res.write_text(json.dumps(RESULTS))
    return ann, res, images


@pytest.mark.slow  # draws every picture
def test_results_file_writes_analysis_pictures_gallery_and_csv(tmp_path, files, cli):
    ann, res, images = files
    out = tmp_path / "out"
    args = [
        "eval",
        "--coco",
        ann,
        "--results",
        res,
        "--images",
        images,
        "--analyze",
        "--worst",
        "2",
        "--out",
        out,
    ]
    result = cli(args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "analysis.json").read_text())
    assert set(report["tide"]) == set(KEYS)
    assert report["tide_counts"] == {"Cls": 1, "Loc": 1, "Both": 0, "Dupe": 0, "Bkg": 1, "Miss": 0}
    assert "TIDE AP50" in result.output and "Cls 1" in result.output
    names = {p.split("/")[-1] for p in report["pictures"]}
    assert {"tide.png", "curves_all.png", "confusion.png"} <= names
    for p in report["pictures"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert [w["image_id"] for w in report["worst_images"]] == [2, 3]  # both AP 0: more objects first
    assert len(report["gallery"]) == 2 and all(p.endswith(".jpg") for p in report["gallery"])
    rows = (out / "analysis" / "errors.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[0].startswith("image_id,")
    assert report["levels"] is None  # no model ran
    assert report["confusion"]["top_confusions"][0]["predicted"] == "triangle"


@pytest.mark.slow  # draws every picture
def test_without_images_the_gallery_is_skipped_with_a_note(tmp_path, files, cli):
    ann, res, _ = files
    out = tmp_path / "out"
    result = cli(["eval", "--coco", ann, "--results", res, "--analyze", "--out", out])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "analysis.json").read_text())
    assert report["gallery"] == [] and any("--images" in n for n in report["notes"])


@pytest.mark.slow  # draws every picture
def test_empty_results(tmp_path, files, cli):
    ann, _, _ = files
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    out = tmp_path / "out"
    result = cli(["eval", "--coco", ann, "--results", empty, "--analyze", "--out", out])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "analysis.json").read_text())
    assert report["tide_ap50"] == 0 and report["tide_counts"]["Miss"] == 3
    assert report["confusion"]["missed"] == 3


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([{"image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}], "image_id not in"),
        (
            [{"image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 5, 5], "score": 0.5}],
            "bbox is not 4 numbers",
        ),
    ],
)
def test_bad_results_give_fpn_evals_one_line_error(tmp_path, files, cli, results, message):
    ann, _, _ = files
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(results))
    plain = cli(["eval", "--coco", ann, "--results", bad, "--out", tmp_path / "a"])
    analyzed = cli(["eval", "--coco", ann, "--results", bad, "--analyze", "--out", tmp_path / "b"])
    assert analyzed.exit_code == plain.exit_code == 1
    assert message in analyzed.output and analyzed.output == plain.output
    assert "Traceback" not in analyzed.output


def test_bad_analyze_options_are_one_line_errors(tmp_path, files, cli):
    ann, res, _ = files
    result = cli(
        ["eval", "--coco", ann, "--results", res, "--analyze", "--conf-thr", "1.5", "--out", tmp_path / "o"]
    )
    assert result.exit_code == 1 and "--conf-thr must be in 0..1" in result.output


@pytest.mark.slow
def test_model_run_records_levels_with_tta(tmp_path, files, detect_weights, cli, one_thread):
    ann, _, images = files
    out = tmp_path / "out"
    args = [
        "eval",
        "--coco",
        ann,
        "--images",
        images,
        "--weights",
        detect_weights,
        "--analyze",
        "--tta",
        "flip",
    ]
    result = cli([*args, "--worst", "1", "--out", out])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "analysis.json").read_text())
    levels = report["levels"]
    assert levels is not None and levels["levels"][0] == "p2"
    total = sum(sum(row.values()) for row in levels["rpn_level"].values())
    assert total == len(json.loads((out / "detections.json").read_text())) > 0
    assert {"levels_rpn.png", "levels_roi.png"} <= {p.split("/")[-1] for p in report["pictures"]}
    assert "_levels" not in (out / "detections.json").read_text()
    assert "RPN level" in result.output
