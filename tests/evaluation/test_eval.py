"""`fpn eval`: bad input, empty input, backends, plots and the CLI, on small synthetic COCO files."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fpncli.errors import FpnError
from fpncli.evaluation.coco_eval import METRIC_KEYS, resolve_backend
from fpncli.evaluation.evaluate import evaluate_results


def _dataset() -> dict:
    """3 images, 3 categories with non-contiguous ids, every quirk COCO evaluation must handle:
    a crowd region, a zero-size box, an image without annotations, no `info` key."""
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 200, "height": 200},
            {"id": 20, "file_name": "b.jpg", "width": 200, "height": 200},
            {"id": 30, "file_name": "empty.jpg", "width": 200, "height": 200},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 42, "name": "bird"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
            {
                "id": 2,
                "image_id": 10,
                "category_id": 7,
                "bbox": [100, 100, 80, 90],
                "area": 7200,
                "iscrowd": 0,
            },
            {"id": 3, "image_id": 20, "category_id": 3, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
            {
                "id": 4,
                "image_id": 20,
                "category_id": 42,
                "bbox": [50, 50, 120, 120],
                "area": 14400,
                "iscrowd": 0,
            },
            {"id": 5, "image_id": 20, "category_id": 7, "bbox": [0, 150, 60, 40], "area": 2400, "iscrowd": 1},
            {"id": 6, "image_id": 20, "category_id": 7, "bbox": [30, 30, 0, 12], "area": 0, "iscrowd": 0},
        ],
    }


def _results() -> list[dict]:
    return [
        {"image_id": 10, "category_id": 3, "bbox": [12, 11, 48, 40], "score": 0.9},
        {"image_id": 10, "category_id": 7, "bbox": [98, 104, 80, 80], "score": 0.8},
        {"image_id": 10, "category_id": 7, "bbox": [0, 0, 30, 30], "score": 0.7},  # false positive
        {"image_id": 20, "category_id": 3, "bbox": [5, 6, 22, 18], "score": 0.6},
        {"image_id": 20, "category_id": 42, "bbox": [60, 40, 100, 130], "score": 0.5},
        {"image_id": 20, "category_id": 7, "bbox": [2, 150, 50, 40], "score": 0.95},  # on the crowd: ignored
        {"image_id": 30, "category_id": 42, "bbox": [10, 10, 50, 50], "score": 0.4},  # empty image: FP
        {"image_id": 10, "category_id": 3, "bbox": [12, 11, -48, 40], "score": 0.99},  # negative width: FP
    ]


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _pycocotools(ann: Path, results: list[dict]) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        e = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(s) for s in e.stats]


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_quirks_are_handled_as_cocoeval_does(tmp_path, backend):
    ann = _write(tmp_path / "ann.json", _dataset())
    metrics = evaluate_results(ann, _results(), backend=backend, out_dir=tmp_path / "out")
    reference = _pycocotools(ann, _results())
    assert [metrics[k] for k in METRIC_KEYS] == pytest.approx(reference, abs=1e-12)
    assert 0 < metrics["AP"] < 1
    assert any("zero or negative size" in p for p in metrics["problems"])
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [saved[k] for k in METRIC_KEYS] == [metrics[k] for k in METRIC_KEYS]
    assert saved["annotation_file"] == str(ann) and saved["num_images"] == 3 and saved["backend"] == backend
    rows = {r["category_id"]: r for r in saved["per_class"]}
    assert rows[7]["instances"] == 2 and rows[7]["crowd"] == 1 and rows[7]["detections"] == 3
    assert rows[42]["APs"] == -1  # no small birds: COCO's -1, not 0


def test_annotations_pointing_nowhere_are_skipped_and_reported(tmp_path):
    data = _dataset()
    data["annotations"] += [
        {"id": 90, "image_id": 777, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 91, "image_id": 10, "category_id": 999, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 92, "image_id": 10, "category_id": 3, "bbox": [1, 1, 5], "area": 25, "iscrowd": 0},
    ]
    ann = _write(tmp_path / "ann.json", data)
    clean = _write(tmp_path / "clean.json", _dataset())
    metrics = evaluate_results(ann, _results(), backend="pycocotools")
    assert [metrics[k] for k in METRIC_KEYS] == _pycocotools(clean, _results())
    text = "\n".join(metrics["problems"])
    assert "unknown image_id 777" in text and "unknown category_id 999" in text and "id 92" in text


def test_annotations_without_area_iscrowd_id_are_completed(tmp_path):
    data = _dataset()
    for a in data["annotations"]:
        if a["id"] in (1, 3):
            del a["area"], a["iscrowd"]
    del data["annotations"][1]["id"]
    data["annotations"][3]["id"] = 1  # a duplicate id: pycocotools would drop annotation 0
    ann = _write(tmp_path / "ann.json", data)
    metrics = evaluate_results(ann, _results(), backend="pycocotools")
    full = _write(tmp_path / "full.json", _dataset())
    # area = w*h equals the file's area for these boxes, so the numbers match the complete file
    assert [metrics[k] for k in METRIC_KEYS] == _pycocotools(full, _results())
    text = "\n".join(metrics["problems"])
    assert "2 annotations have no 'area'" in text and "1 annotation has no 'id'" in text
    assert "an id used before" in text and "annotations[3]" in text


def test_bad_detections_are_skipped_and_the_rest_evaluated(tmp_path):
    ann = _write(tmp_path / "ann.json", _dataset())
    bad = [
        "not an object",
        {"image_id": 555, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.5},
        {"image_id": 10, "category_id": 4, "bbox": [1, 1, 5, 5], "score": 0.5},
        {"image_id": 10, "category_id": 3, "bbox": [1, 1, "x", 5], "score": 0.5},
        {"image_id": 10, "category_id": 3, "bbox": [1, 1, 5, 5]},
        {"image_id": 10, "category_id": 3, "bbox": [1, 1, 5, 5], "score": float("nan")},
    ]
    results = _write(tmp_path / "dets.json", json.dumps(_results() + bad))
    metrics = evaluate_results(ann, results, backend="pycocotools")
    assert [metrics[k] for k in METRIC_KEYS] == _pycocotools(ann, _results())
    assert metrics["num_detections"] == len(_results()) and metrics["results_file"] == str(results)
    text = "\n".join(metrics["problems"])
    for needle in (
        "[8]: not a JSON object",
        "[9] image_id 555",
        "[10] category_id 4",
        "[11] bbox",
        "[12] score None",
        "[13] score nan",
    ):
        assert needle in text, needle


def test_empty_results_give_zero_ap(tmp_path):
    ann = _write(tmp_path / "ann.json", _dataset())
    for backend in ("pycocotools", "faster-coco-eval"):
        metrics = evaluate_results(ann, [], backend=backend)
        assert metrics["AP"] == 0 and metrics["AR100"] == 0 and metrics["num_detections"] == 0
        assert all(r["AP"] == 0 for r in metrics["per_class"] if r["instances"])


def test_empty_annotation_file_evaluates_to_minus_one(tmp_path):
    data = _dataset()
    data["annotations"] = []
    ann = _write(tmp_path / "ann.json", data)
    metrics = evaluate_results(ann, _results(), backend="pycocotools")
    assert all(metrics[k] == -1 for k in METRIC_KEYS)  # COCO: nothing to find


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"images": [', "malformed JSON at line 1"),
        ('{"images": [], "annotations": []}', "missing the 'categories' key"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_broken_annotation_files_are_one_clear_error(tmp_path, content, message):
    ann = _write(tmp_path / "ann.json", content)
    with pytest.raises(FpnError, match=message) as info:
        evaluate_results(ann, [])
    assert str(ann) in str(info.value)


def test_results_matching_nothing_is_one_clear_error(tmp_path):
    ann = _write(tmp_path / "ann.json", _dataset())
    labels_not_ids = [{**r, "category_id": i % 2 + 1} for i, r in enumerate(_results())]  # 1, 2: not ids here
    with pytest.raises(FpnError, match="contiguous labels written instead of dataset category ids"):
        evaluate_results(ann, _write(tmp_path / "r.json", labels_not_ids))
    wrong_images = [{**r, "image_id": r["image_id"] + 1} for r in _results()]
    with pytest.raises(FpnError, match=r"r2.json: none of its 8 detections.*image_id 11"):
        evaluate_results(ann, _write(tmp_path / "r2.json", wrong_images))
    with pytest.raises(FpnError, match="expected a JSON list of detections"):
        evaluate_results(ann, _write(tmp_path / "r3.json", {"detections": []}))


def test_backend_auto_prefers_faster_and_falls_back(monkeypatch):
    assert resolve_backend("auto") == "faster-coco-eval"  # installed in the test environment
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes `import faster_coco_eval` fail
    assert resolve_backend("auto") == "pycocotools"
    with pytest.raises(FpnError, match=r"not installed \(pip install \"fpncli\[fast\]\"\)"):
        resolve_backend("faster-coco-eval")
    with pytest.raises(FpnError, match="unknown evaluation backend"):
        resolve_backend("detectron")


def test_plots_are_pngs(tmp_path):
    ann = _write(tmp_path / "ann.json", _dataset())
    metrics = evaluate_results(ann, _results(), out_dir=tmp_path / "out", plots=True)
    assert [Path(p).name for p in metrics["plots"]] == ["pr_overall.png", "pr_per_class.png"]
    for p in metrics["plots"]:
        head = Path(p).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000


def test_results_mode_does_not_import_torch(tmp_path):
    ann = _write(tmp_path / "ann.json", _dataset())
    res = _write(tmp_path / "res.json", _results())
    code = (
        "import sys\n"
        "from fpncli.cli.app import app\n"
        f"sys.argv = ['fpn', 'eval', '--coco', {str(ann)!r}, '--results', {str(res)!r}, '--out', {str(tmp_path / 'o')!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("NO-TORCH")


def test_cli_results_mode_prints_tables_and_writes_metrics(tmp_path, cli):

    ann = _write(tmp_path / "ann.json", _dataset())
    res = _write(tmp_path / "res.json", _results())
    out = tmp_path / "out"
    result = cli(
        ["eval", "--coco", str(ann), "--results", str(res), "--out", str(out), "--backend", "pycocotools"],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "metrics.json").read_text())
    assert f"{saved['AP50']:.3f}" in result.output and "AP50" in result.output
    assert "Per class" in result.output and "bird" in result.output
    assert (
        "creating index" not in result.output and "Accumulating" not in result.output
    )  # pycocotools chatter
    as_json = cli(["eval", "--coco", str(ann), "--results", str(res), "--out", str(out), "--json"])
    assert json.loads(as_json.stdout)["AP"] == pytest.approx(saved["AP"], abs=1e-12)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--results", "{res}", "--weights", "w.pt"], "not both"),
        ([], "give --results"),
        (["--weights", "w.pt"], "--weights needs --images"),
        (["--results", "{bad}"], "malformed JSON"),
        (["--results", "{res}", "--backend", "nope"], "unknown evaluation backend"),
        (["--weights", "w.pt", "--images", ".", "--half", "--device", "cpu"], "--half needs a CUDA device"),
        (["--weights", "none", "--images", "."], "random model"),
    ],
)
def test_cli_mistakes_are_one_line_errors(tmp_path, args, message, cli):

    ann = _write(tmp_path / "ann.json", _dataset())
    res = _write(tmp_path / "res.json", _results())
    bad = _write(tmp_path / "bad.json", "[{")
    args = [a.format(res=res, bad=bad) for a in args]
    result = cli(["eval", "--coco", str(ann), *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_cli_model_mode_with_a_checkpoint_and_missing_images(tmp_path, tiny_checkpoint, cli):
    """A real (random) tiny model over 2 generated images; the third image file is missing."""
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for name, colour in (("a.jpg", (200, 30, 30)), ("b.jpg", (30, 200, 30))):
        Image.new("RGB", (200, 200), colour).save(images / name)
    ann = _write(tmp_path / "ann.json", _dataset())  # empty.jpg is not in the folder
    out = tmp_path / "out"
    result = cli(
        [
            "eval",
            "--coco",
            str(ann),
            "--images",
            str(images),
            "--weights",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "empty.jpg" in result.output and "AP50" in result.output
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["missing_images"] == ["empty.jpg"] and saved["num_images"] == 2
    assert saved["weights"].endswith("tiny.pt")
    assert isinstance(json.loads((out / "detections.json").read_text()), list)


def test_cli_max_images_all_missing_says_which_images_it_looked_for(tmp_path, tiny_checkpoint, cli):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (200, 200), (30, 200, 30)).save(images / "b.jpg")  # a.jpg, the first, is missing
    ann = _write(tmp_path / "ann.json", _dataset())
    args = ["eval", "--coco", str(ann), "--images", str(images), "--weights", str(tiny_checkpoint)]
    result = cli([*args, "-o", str(tmp_path / "out"), "--max-images", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "none of the first 1 of the 3 images of" in result.output
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_reduced_precision_eval_reads_the_annotation_file_once(tmp_path, tiny_checkpoint, cli, monkeypatch):
    """bf16 is evaluated beside fp32 (two runs over the images): one load of the annotations."""
    from PIL import Image

    import fpncli.evaluation.evaluate as evaluate
    from fpncli.inference import probe

    images = tmp_path / "imgs"
    images.mkdir()
    for name, colour in (("a.jpg", (200, 30, 30)), ("b.jpg", (30, 200, 30))):
        Image.new("RGB", (200, 200), colour).save(images / name)
    ann = _write(tmp_path / "ann.json", _dataset())
    loads = []
    real = evaluate.load_ground_truth
    monkeypatch.setattr(evaluate, "load_ground_truth", lambda path: loads.append(path) or real(path))
    monkeypatch.setattr(probe, "has_native_bf16", lambda: True)  # any CPU computes it, if slowly
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    out = tmp_path / "out"
    args = ["eval", "--coco", str(ann), "--images", str(images), "--weights", str(tiny_checkpoint)]
    result = cli([*args, "--out", str(out), "--precision", "bf16", "--backend", "torch"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["path"].startswith("torch bf16") and "AP" in metrics["fp32"]
    assert loads == [ann]
