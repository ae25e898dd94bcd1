"""`fpn detect`: sources, outputs, EXIF and colour modes, class filter, bad input, COCO results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from fpncli.data.sources import expand_sources
from fpncli.errors import FpnError
from fpncli.inference.annotated import output_paths
from fpncli.inference.classes import resolve_classes
from fpncli.inference.detect import DetectOptions, run_detect
from fpncli.outputs import LEDGER_NAME

# Tiny models: one thread is faster than two contending ones (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _run(sources, out, weights, **kw):
    options = DetectOptions(
        weights=weights,
        out_dir=Path(out),
        score_thr=kw.pop("score_thr", 0.0),
        workers=kw.pop("workers", 0),
        **kw,
    )
    return run_detect([str(s) for s in sources], options)


# ------------------------------------------------------------------ sources (no model)


def test_expand_sources_files_folders_globs(tmp_path, make_image):
    a = make_image(tmp_path / "d" / "a.jpg")
    b = make_image(tmp_path / "d" / "b.PNG")
    c = make_image(tmp_path / "d" / "sub" / "c.webp")
    (tmp_path / "d" / "notes.txt").write_text("x")
    assert expand_sources([tmp_path / "d"]) == [a, b]  # extension check is case-insensitive
    assert expand_sources([tmp_path / "d"], recursive=True) == [a, b, c]
    assert expand_sources([str(tmp_path / "d" / "*.jpg")]) == [a]
    assert expand_sources([str(tmp_path / "d" / "**" / "*.webp")], recursive=True) == [c]
    assert expand_sources([a, tmp_path / "d"]) == [a, b]  # a file given twice is read once


def test_expand_sources_errors(tmp_path, make_image):
    (tmp_path / "empty").mkdir()
    make_image(tmp_path / "nested" / "deep" / "x.jpg")
    with pytest.raises(FpnError, match="no such file or folder"):
        expand_sources([tmp_path / "missing.jpg"])
    with pytest.raises(FpnError, match="pattern matches no images"):
        expand_sources([str(tmp_path / "*.bmp")])
    with pytest.raises(FpnError, match="folder has no images"):
        expand_sources([tmp_path / "empty"])
    with pytest.raises(FpnError, match="--recursive"):
        expand_sources([tmp_path / "nested"])
    with pytest.raises(FpnError, match="no SOURCE"):
        expand_sources([])


def test_output_paths_never_collide_nor_overwrite_inputs(tmp_path, make_image):
    a, b = tmp_path / "x" / "img.jpg", tmp_path / "y" / "img.jpg"
    for p in (a, b):
        make_image(p)
    out, renamed = output_paths([a, b], tmp_path / "out")
    assert out == [tmp_path / "out" / "x" / "img.jpg", tmp_path / "out" / "y" / "img.jpg"] and not renamed
    # Output folder = input folder: the annotated copy gets a new name, and says so.
    out, renamed = output_paths([a], tmp_path / "x")
    assert out == [tmp_path / "x" / "img_det.jpg"] and renamed == [(a, out[0])]
    assert output_paths([], tmp_path) == ([], [])


def test_resolve_classes():
    names, ids = ["person", "N/A", "car"], [1, 2, 3]
    assert resolve_classes(names, ids, None) == {1, 3}  # placeholders never reported
    assert resolve_classes(names, ids, ["Car"]) == {3}
    assert resolve_classes(names, ids, ["person,3"]) == {1, 3}
    with pytest.raises(FpnError, match="'N/A' is a placeholder class of this model"):
        resolve_classes(names, ids, ["N/A"])
    with pytest.raises(FpnError, match="'2' is a placeholder class of this model"):
        resolve_classes(names, ids, ["2"])  # the id of a placeholder class
    with pytest.raises(FpnError, match="'7' is neither a class name nor a category id"):
        resolve_classes(names, ids, ["7"])


# ------------------------------------------------------------------ runs


def test_single_file_writes_json_and_annotated_image(tmp_path, detect_weights, make_image):
    src = make_image(tmp_path / "in" / "a.jpg", size=(80, 60))
    before = src.read_bytes()
    summary = _run([src], tmp_path / "out", detect_weights)
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert data == summary.predictions
    assert data["errors"] == [] and len(data["images"]) == 1
    rec = data["images"][0]
    assert rec["file"] == str(src) and (rec["width"], rec["height"]) == (80, 60)
    assert rec["detections"], "a 0 score threshold keeps the random model's boxes"
    for det in rec["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 80 and 0 <= y1 <= y2 <= 60
        assert det["label"] in ("circle", "square", "triangle")
        assert det["category_id"] == {"circle": 1, "square": 3, "triangle": 7}[det["label"]]
    scores = [d["score"] for d in rec["detections"]]
    assert scores == sorted(scores, reverse=True)
    drawn = Image.open(tmp_path / "out" / "a.jpg")
    assert drawn.size == (80, 60)
    assert src.read_bytes() == before
    assert summary.images_read == 1 and summary.detections == len(scores)
    assert sum(summary.per_class.values()) == len(scores)


def test_folder_recursive_and_equal_names(tmp_path, detect_weights, make_image):
    make_image(tmp_path / "in" / "x" / "img.png", seed=1)
    make_image(tmp_path / "in" / "y" / "img.png", seed=2)
    summary = _run([tmp_path / "in"], tmp_path / "out", detect_weights, recursive=True, max_dets=3)
    files = [rec["file"] for rec in summary.predictions["images"]]
    assert files == [str(tmp_path / "in" / "x" / "img.png"), str(tmp_path / "in" / "y" / "img.png")]
    assert all(len(rec["detections"]) <= 3 for rec in summary.predictions["images"])
    a, b = tmp_path / "out" / "x" / "img.png", tmp_path / "out" / "y" / "img.png"
    assert a.is_file() and b.is_file() and a.read_bytes() != b.read_bytes()


def test_exif_rotation_boxes_refer_to_the_upright_image(tmp_path, detect_weights, make_image):
    stored = make_image(tmp_path / "raw.png", size=(64, 40), seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    rotated = tmp_path / "in" / "exif.png"
    rotated.parent.mkdir()
    Image.open(stored).save(rotated, exif=exif)
    upright = tmp_path / "in" / "upright.png"
    Image.open(stored).transpose(Image.Transpose.ROTATE_270).save(upright)
    summary = _run([rotated, upright], tmp_path / "out", detect_weights, draw=False)
    a, b = summary.predictions["images"]
    assert (a["width"], a["height"]) == (40, 64) == (b["width"], b["height"])
    assert a["detections"] == b["detections"] and a["detections"]


def test_colour_modes(tmp_path, detect_weights, make_image):
    base = make_image(tmp_path / "rgb.png", size=(48, 40), seed=4)
    img = Image.open(base)
    (tmp_path / "in").mkdir()
    img.convert("L").save(tmp_path / "in" / "gray.png")
    img.convert("P").save(tmp_path / "in" / "palette.png")
    img.convert("RGBA").save(tmp_path / "in" / "rgba.png")
    img.convert("CMYK").save(tmp_path / "in" / "cmyk.jpg")
    img.convert("RGB").save(tmp_path / "in" / "plain.bmp")
    img.save(tmp_path / "in" / "tiff.tif")
    gray = img.convert("L")
    gray.save(tmp_path / "in" / "gray8.png")
    import numpy as np

    sixteen = np.asarray(gray).astype(np.uint16) * 257  # same grey levels in 16 bits
    Image.fromarray(sixteen).save(tmp_path / "in" / "gray16.png")
    summary = _run([tmp_path / "in"], tmp_path / "out", detect_weights)
    assert summary.images_failed == 0 and summary.images_read == 8
    recs = {Path(r["file"]).name: r for r in summary.predictions["images"]}
    assert all((r["width"], r["height"]) == (48, 40) for r in recs.values())
    assert recs["gray16.png"]["detections"] == recs["gray8.png"]["detections"]
    assert recs["tiff.tif"]["detections"] == recs["plain.bmp"]["detections"]
    assert (tmp_path / "out" / "cmyk.jpg").is_file() and (tmp_path / "out" / "tiff.tif").is_file()


def test_class_filter_applies_before_the_top_k_cut(tmp_path, detect_weights, make_image):
    src = make_image(tmp_path / "a.png", size=(96, 80), seed=5)
    full = _run([src], tmp_path / "o1", detect_weights, draw=False, max_dets=1000)
    squares = [d for d in full.predictions["images"][0]["detections"] if d["label"] == "square"]
    assert len(squares) > 3
    only = _run([src], tmp_path / "o2", detect_weights, draw=False, max_dets=3, classes=["square"])
    assert only.predictions["images"][0]["detections"] == squares[:3]
    by_id = _run([src], tmp_path / "o3", detect_weights, draw=False, max_dets=3, classes=["3"])
    assert by_id.predictions["images"][0]["detections"] == squares[:3]


def test_bad_input_folder(tmp_path, detect_weights, cli, make_image):
    folder = tmp_path / "mixed"
    good = [make_image(folder / "good1.jpg", seed=6), make_image(folder / "good2.png", seed=7)]
    (folder / "empty.jpg").write_bytes(b"")
    full = (folder / "good1.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (folder / "text.jpg").write_text("hello, I am not a picture\n")
    # Tests run as root, where chmod 000 does not stop reads: an unreadable entry that is
    # unreadable for root too is a symbolic link whose target is gone.
    os.symlink(tmp_path / "gone.jpg", folder / "dangling.jpg")
    make_image(folder / "huge.png", size=(200, 150), seed=8)  # "huge" for --max-pixels below
    bad = {
        "empty.jpg": "empty",
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "dangling.jpg": "broken symbolic link",
        "huge.png": "too large",
    }
    if os.geteuid() != 0:
        make_image(folder / "locked.jpg", seed=9).chmod(0)
        bad["locked.jpg"] = "permission denied"

    result = cli(
        [
            "detect",
            str(folder),
            "--weights",
            detect_weights,
            "--out",
            str(tmp_path / "out"),
            "--score-thr",
            "0",
            "--workers",
            "0",
            "--max-pixels",
            "20000",
        ],
        terminal_width=200,
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [r["file"] for r in data["images"]] == [str(p) for p in good]
    errors = {Path(e["file"]).name: e["error"] for e in data["errors"]}
    assert len(data["errors"]) == len(bad) == len(errors)  # each bad file once
    for name, reason in bad.items():
        assert reason in errors[name], errors[name]
        assert errors[name].startswith(str(folder / name))
        assert result.output.count(str(folder / name) + ":") == 1  # once in the summary
    assert "images failed" in result.output
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "good1.jpg",
        "good2.png",
        "predictions.json",
        LEDGER_NAME,
    }


def test_all_good_exits_zero_and_json_to_stdout(tmp_path, detect_weights, cli, make_image):
    src = make_image(tmp_path / "a.png", seed=10)
    result = cli(
        [
            "detect",
            str(src),
            "--weights",
            detect_weights,
            "--out",
            str(tmp_path / "out"),
            "--score-thr",
            "0.0",
            "--workers",
            "0",
            "--no-draw",
            "--quiet",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert printed["images"][0]["detections"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.json"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/nothing/*.jpg"], "matches no images"),
        (["{tmp}/missing.png"], "no such file or folder"),
        (["{src}", "--half", "--device", "cpu"], "CUDA"),
        (["{src}", "--classes", "zebra"], "'zebra'"),
        (["{src}", "--score-thr", "1.5"], "--score-thr"),
    ],
)
def test_cli_user_errors(tmp_path, detect_weights, args, message, cli, make_image):
    src = make_image(tmp_path / "a.png", seed=11)
    args = [a.format(tmp=tmp_path, src=src) for a in args]
    result = cli(
        ["detect", *args, "--weights", detect_weights, "--out", str(tmp_path / "out"), "--workers", "0"],
        terminal_width=200,
    )
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_coco_results_with_and_without_annotation_file(tmp_path, detect_weights, make_image):
    a = make_image(tmp_path / "val" / "000000000042.jpg", seed=12)
    b = make_image(tmp_path / "val" / "000000000007.jpg", seed=13)
    extra = make_image(tmp_path / "val" / "not_in_file.jpg", seed=14)
    ann = tmp_path / "instances.json"
    ann.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 42, "file_name": "000000000042.jpg"},
                    {"id": 7, "file_name": "val/000000000007.jpg"},
                ],
                "annotations": [],
                "categories": [],
            }
        )
    )
    summary = _run(
        [tmp_path / "val"],
        tmp_path / "out",
        detect_weights,
        draw=False,
        max_dets=5,
        coco_results=tmp_path / "res.json",
        coco_annotations=ann,
    )
    results = json.loads((tmp_path / "res.json").read_text())
    assert summary.coco_unmatched == [str(extra)]
    by_file = {Path(r["file"]).name: r for r in summary.predictions["images"]}
    assert by_file[a.name]["image_id"] == 42 and by_file[b.name]["image_id"] == 7
    assert "image_id" not in by_file[extra.name]
    assert {r["image_id"] for r in results} == {7, 42}
    first = by_file[b.name]["detections"][0]
    mine = next(r for r in results if r["image_id"] == 7)
    x1, y1, x2, y2 = first["box"]
    assert mine["category_id"] == first["category_id"] and mine["score"] == pytest.approx(
        first["score"], abs=1e-4
    )
    assert mine["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.02)
    # Without an annotation file: 1..N in input order (sorted file names).
    _run(
        [tmp_path / "val"],
        tmp_path / "out2",
        detect_weights,
        draw=False,
        max_dets=1,
        coco_results=tmp_path / "r2.json",
    )
    ids = sorted({r["image_id"] for r in json.loads((tmp_path / "r2.json").read_text())})
    assert ids == [1, 2, 3]


def test_ctrl_c_leaves_valid_predictions(tmp_path, detect_weights, make_image):
    sources = [make_image(tmp_path / "in" / f"{i}.png", seed=20 + i) for i in range(3)]

    def interrupt(event):
        if event["event"] == "image" and event["summary"].images_read == 1:
            raise KeyboardInterrupt

    options = DetectOptions(weights=detect_weights, out_dir=tmp_path / "out", score_thr=0.0, workers=0)
    summary = run_detect([str(s) for s in sources], options, progress=interrupt)
    assert summary.interrupted
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [r["file"] for r in data["images"]] == [str(sources[0])]
    assert (tmp_path / "out" / "in" / "0.png").is_file() or (tmp_path / "out" / "0.png").is_file()


def test_batch_size_with_cpu_worker_replicas_is_refused(tmp_path, make_image, detect_weights, cli):
    """On the CPU each worker replica detects one image at a time: --batch-size there did
    nothing, silently (found by the hostile re-test)."""
    img = make_image(tmp_path / "a.png")
    base = ["detect", img, "--weights", detect_weights, "--out", tmp_path / "o", "--device", "cpu"]
    for workers in ([], ["--workers", "2"]):
        result = cli([*base, "--batch-size", "4", *workers])
        assert result.exit_code == 1 and "batching needs --workers 0" in result.output, result.output
    assert not (tmp_path / "o" / "predictions.json").exists()
    assert cli([*base, "--batch-size", "2", "--workers", "0"]).exit_code == 0
