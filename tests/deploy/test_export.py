"""fpn export: ONNX and TorchScript graphs equal to PyTorch on every image size, and the
exported files running through fpn detect / fpn eval's pipeline."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from fpncli.errors import FpnError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, export_config):
    """A seeded tiny checkpoint exported to both formats: ``(checkpoint, {format: summary})``."""
    from fpncli.checkpoint import save_checkpoint
    from fpncli.deploy.export import ExportOptions, run_export
    from fpncli.modeling.detector import build_model

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    ckpt = save_checkpoint(folder / "tiny.pt", build_model(export_config()).eval())
    summaries = {
        fmt: run_export(ExportOptions(str(ckpt), fmt, folder / f"model{SUFFIX[fmt]}")) for fmt in FORMATS
    }
    torch.set_num_threads(old)
    return ckpt, summaries


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_checks_many_sizes_and_writes_metadata(exported, fmt):
    from fpncli.checkpoint import read_checkpoint
    from fpncli.config import ModelConfig
    from fpncli.deploy.export import BOX_TOL, SCORE_TOL
    from fpncli.modeling.exported import read_metadata
    from fpncli.weight_files import exported_format

    ckpt, summaries = exported
    summary = summaries[fmt]
    assert summary.out.is_file() and summary.size_bytes == summary.out.stat().st_size
    assert exported_format(summary.out) == fmt
    sizes = {(c.width, c.height) for c in summary.images}
    # Both orientations, extreme aspect ratios, a tiny image, and an image without detections.
    assert {(500, 333), (333, 500), (701, 97), (97, 701), (17, 13)} <= sizes
    assert any(c.detections == 0 for c in summary.images)
    assert sum(c.detections for c in summary.images) > 100  # the check compared real detections
    assert summary.box_diff <= BOX_TOL and summary.score_diff <= SCORE_TOL
    assert all(c.box_diff <= c.box_tol and c.score_diff <= c.score_tol for c in summary.images)
    meta, _ = read_metadata(summary.out)
    # The check's per-image differences and tolerances travel with the file.
    report = meta["self_check"]
    assert report["process"] == "fresh" and len(report["images"]) == len(summary.images)
    first = report["images"][0]
    assert first["image"] == summary.images[0].name and first["box_tolerance_px"] > 0
    stored = read_checkpoint(ckpt)["model_config"]
    assert meta["model_config"] == stored
    assert ModelConfig.from_dict(meta["model_config"]).class_names == ["circle", "square", "triangle"]
    assert meta["class_names"] == ["circle", "square", "triangle"] and meta["category_ids"] == [1, 3, 7]
    assert meta["format"] == fmt


def test_onnx_metadata_readable_by_other_tools(exported):
    """Plain ``onnx`` sees the class names and category ids without fpncli."""
    import onnx

    summary = exported[1]["onnx"]
    props = {p.key: p.value for p in onnx.load(str(summary.out)).metadata_props}
    assert json.loads(props["class_names"]) == ["circle", "square", "triangle"]
    assert json.loads(props["category_ids"]) == [1, 3, 7]
    assert json.loads(props["fpncli_export"])["model_config"]["min_size"] == 64


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_with_exported_file_equals_pytorch_on_real_images(exported, fmt, coco_tiny, tmp_path):
    """fpn detect --weights model.onnx: the PyTorch path's detections on odd-sized COCO images,
    through the same pipeline (two replicas: threads sharing one session for ONNX, forked
    processes for TorchScript; input order, an unreadable file)."""
    from fpncli.inference.detect import DetectOptions, run_detect

    ckpt, summaries = exported
    # 500x333, 500x375 (landscape) and 358x640 (portrait): none pads to the traced grid.
    names = ["000000020992.jpg", "000000119828.jpg", "000000125952.jpg"]
    sources = [coco_tiny / "val2017" / n for n in names]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    sources.insert(1, broken)
    runs = {}
    for weights in (str(ckpt), str(summaries[fmt].out)):
        options = DetectOptions(
            weights=weights, out_dir=tmp_path / Path(weights).name, score_thr=0.2, draw=False, workers=2
        )
        runs[weights] = run_detect(sources, options).predictions
    ref, got = runs[str(ckpt)], runs[str(summaries[fmt].out)]
    assert [i["file"] for i in got["images"]] == [str(s) for s in sources if s != broken]
    assert len(got["errors"]) == 1 and "broken.jpg" in got["errors"][0]["error"]
    assert sum(len(i["detections"]) for i in ref["images"]) > 0
    for a, b in zip(ref["images"], got["images"]):
        assert (a["width"], a["height"]) == (b["width"], b["height"])
        assert len(a["detections"]) == len(b["detections"]), a["file"]
        for da, db in zip(a["detections"], b["detections"]):
            assert da["label"] == db["label"] and da["category_id"] == db["category_id"]
            assert abs(da["score"] - db["score"]) <= 1e-4
            assert max(abs(x - y) for x, y in zip(da["box"], db["box"])) <= 0.011  # JSON rounds to 0.01


def test_onnx_replicas_are_threads_sharing_one_session(exported, tmp_path, monkeypatch):
    """With two replicas, an ONNX model is optimised once: one session, one intra-op thread
    per run, called from two threads; the results are those of a single replica, in input
    order, with a broken file reported in its place and nothing else lost."""
    import threading

    from PIL import Image

    import fpncli.modeling.exported as X
    from fpncli.inference.predict import predict_images
    from fpncli.modeling.exported import load_exported

    _, summaries = exported
    g = torch.Generator().manual_seed(5)
    paths = []
    for i, (h, w) in enumerate(((60, 80), (81, 47), (33, 90), (70, 70), (96, 64))):
        path = tmp_path / f"{i}.png"
        Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()).save(path)
        paths.append(path)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths.insert(2, tmp_path / "broken.png")

    made, callers, runs = [], set(), []
    real = X.onnx_session

    def counting(model, threads=None):
        made.append(threads)
        session = real(model, threads)

        class Spy:
            def run(self, *args):
                callers.add(threading.get_ident())
                runs.append(1)
                return session.run(*args)

        return Spy()

    monkeypatch.setattr(X, "onnx_session", counting)
    model = load_exported(summaries["onnx"].out)
    assert model.runs_in_threads
    two = list(predict_images(model, paths, cpu_processes=2))
    assert made == [1] and len(callers) == 2 and threading.get_ident() not in callers
    one = list(predict_images(load_exported(summaries["onnx"].out), paths, workers=0, batch_size=1))
    assert [r.path for r in two] == [r.path for r in one] == paths
    assert two[2].error is not None and "broken.png" in two[2].error
    assert sum(len(r.scores) for r in two) > 0
    for a, b in zip(one, two):
        assert (a.error is None) == (b.error is None)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.boxes, b.boxes)
    assert list(predict_images(load_exported(summaries["onnx"].out), [], cpu_processes=2)) == []
    # A consumer that stops after one result (Ctrl-C does the same): the queued images are
    # dropped, not run.
    runs.clear()
    stream = predict_images(load_exported(summaries["onnx"].out), paths * 4, cpu_processes=2)
    next(stream)
    stream.close()
    assert 1 <= len(runs) <= 6 < len(paths) * 4


def test_eval_runs_exported_file(exported, tmp_path):
    """fpn eval --weights model.onnx evaluates the graph's detections like the checkpoint's."""
    from fpncli.data.synth import synthesize
    from fpncli.evaluation.evaluate import EvalOptions, run_eval

    ckpt, summaries = exported
    synthesize(tmp_path / "data", train=0, val=2, seed=0)
    runs = {}
    for name, weights in (("pt", str(ckpt)), ("onnx", str(summaries["onnx"].out))):
        options = EvalOptions(
            annotations=tmp_path / "data" / "annotations" / "instances_val.json",
            images=tmp_path / "data" / "val",
            weights=weights,
            out=tmp_path / name,
            workers=0,
        )
        metrics = run_eval(options)
        runs[name] = (metrics, json.loads((tmp_path / name / "detections.json").read_text()))
    (m_pt, d_pt), (m_onnx, d_onnx) = runs["pt"], runs["onnx"]
    assert len(d_pt) == len(d_onnx) > 0
    for a, b in zip(d_pt, d_onnx):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert abs(a["score"] - b["score"]) <= 1e-4
        assert max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"])) <= 0.02  # xywh of two coordinates
    assert m_pt["AP"] == pytest.approx(m_onnx["AP"], abs=1e-6)


def test_stricter_run_options_filter_exactly_and_looser_ones_are_refused(exported):
    from fpncli.modeling.exported import load_exported
    from fpncli.modeling.weights import load_detector

    ckpt, summaries = exported
    path = summaries["onnx"].out
    image = torch.randint(0, 256, (70, 90, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    strict = load_exported(path, box_score_thresh=0.3, box_detections_per_img=20)
    got = strict.detect(image)
    model = load_detector(str(ckpt), box_score_thresh=0.3, box_detections_per_img=20).model
    with torch.inference_mode():
        ref = model([image.permute(2, 0, 1).float() / 255])[0]
    assert torch.equal(got["labels"], ref["labels"]) and len(ref["labels"]) > 0
    torch.testing.assert_close(got["boxes"], ref["boxes"], atol=0.01, rtol=0)
    for bad, word in (
        ({"box_score_thresh": 0.01}, "--score-thr 0.01"),
        ({"box_detections_per_img": 500}, "--max-dets 500"),
        ({"min_size": 800}, "--min-size 800"),
        ({"box_nms_thresh": 0.7}, "--nms-iou 0.7"),
    ):
        with pytest.raises(FpnError, match=word):
            load_exported(path, **bad)


@pytest.mark.slow
def test_self_check_refuses_a_graph_that_disagrees(exported, tmp_path, monkeypatch):
    """A graph whose boxes are a pixel off on one image is refused, naming that image, and
    nothing is written (what a graph with a frozen anchor grid would get)."""
    import fpncli.deploy.export as E
    import fpncli.deploy.fresh_run as R

    ckpt, _ = exported
    real = R.run_fresh

    def shifted(path, images):
        out = real(path, images)
        # the portrait image only, 1 px in its own pixels
        return [(r[0] + 1.0, r[1], r[2]) if img.shape[0] == 500 else r for r, img in zip(out, images)]

    monkeypatch.setattr(R, "run_fresh", shifted)
    out = tmp_path / "bad.torchscript"
    with pytest.raises(FpnError, match=r"self-check failed on portrait 333x500: .*nothing written") as info:
        E.run_export(E.ExportOptions(str(ckpt), "torchscript", out))
    assert "\n" not in str(info.value)
    assert not out.exists()


@pytest.mark.slow
def test_a_broken_export_is_refused_normalisation_dropped(exported, tmp_path, monkeypatch):
    """A deliberately broken graph (its input normalisation dropped) is refused by both
    variants, and nothing is written."""
    import fpncli.deploy.export as E
    from fpncli.modeling import export as X

    ckpt, _ = exported
    real_init = X.ExportableDetector.__init__

    def broken(self, model):
        real_init(self, model)
        self.mean.zero_()
        self.std.fill_(1.0)

    monkeypatch.setattr(X.ExportableDetector, "__init__", broken)
    out = tmp_path / "bad.onnx"
    with pytest.raises(FpnError, match=r"self-check failed on .*the Winograd graph failed too") as info:
        E.run_export(E.ExportOptions(str(ckpt), "onnx", out))
    assert "\n" not in str(info.value) and not out.exists()


@pytest.mark.slow
def test_winograd_graph_that_fails_falls_back_to_direct_convolutions(exported, tmp_path, monkeypatch):
    """Where the Winograd graph fails the check and the direct one passes, the direct one is
    written and the summary says so: a sound model always gets its file."""
    import fpncli.deploy.export as E

    ckpt, _ = exported
    real = E._check

    def winograd_fails(data, fmt, model, images, refs):
        if '"winograd_convs": 0' not in E.stored_metadata(data, fmt).replace(", ", ", "):
            raise FpnError("self-check failed on landscape 500x333: pretend Winograd error; nothing written")
        return real(data, fmt, model, images, refs)

    monkeypatch.setattr(E, "_check", winograd_fails)
    out = tmp_path / "direct.onnx"
    summary = E.run_export(E.ExportOptions(str(ckpt), "onnx", out))
    assert out.is_file() and summary.winograd_convs == 0
    (note,) = summary.notes
    assert note.startswith("wrote direct 3x3 convolutions: the Winograd graph failed the self-check")
    assert "pretend Winograd error" in note
    from fpncli.modeling.exported import read_metadata

    meta, _ = read_metadata(out)
    assert meta["winograd_convs"] == 0 and meta["self_check"]["notes"] == [note]


@pytest.mark.slow
def test_a_model_that_detects_nothing_is_compared_at_threshold_zero(exported, tmp_path):
    """A check that compared no detection used to be reported as a pass; now the graph's raw
    top-k (a copy exported at threshold 0) is compared, and the summary says so."""
    from fpncli.deploy.export import ExportOptions, run_export

    ckpt, _ = exported
    summary = run_export(ExportOptions(str(ckpt), "onnx", tmp_path / "m.onnx", score_thr=0.99999))
    plain = [c for c in summary.images if "threshold 0" not in c.name]
    probe = [c for c in summary.images if c.name.endswith(", threshold 0")]
    assert sum(c.detections for c in plain) == 0 and len(probe) == len(plain)
    assert sum(c.detections for c in probe) > 100
    assert any("also compared the graph's top detections at threshold 0" in n for n in summary.notes)


def test_compare_detections_tolerances():
    from fpncli.deploy.export import compare_detections

    ref = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0], [1.0, 1.0, 3.0, 3.0]]),
        "scores": torch.tensor([0.9, 0.8, 0.05005]),
        "labels": torch.tensor([1, 2, 1]),
    }
    names = ["a", "b"]
    # Equal within tolerance, two near-equal scores swapped, the near-threshold one missing.
    got = (
        torch.tensor([[5.0, 5.0, 20.005, 20.0], [0.0, 0.0, 10.0, 10.0]]),
        torch.tensor([0.80005, 0.9]),
        torch.tensor([2, 1]),
    )
    checked = compare_detections("img", ref, got, 0.05, 100, names)
    assert checked.detections == 3 and checked.near_limit == 1
    assert checked.box_diff == pytest.approx(0.005, abs=1e-4)
    wrong_label = (got[0], got[1], torch.tensor([1, 1]))
    with pytest.raises(FpnError, match=r"img: PyTorch's detection 2 \(b 0.8000"):
        compare_detections("img", ref, wrong_label, 0.05, 100, names)
    # A defect moves boxes by pixels: refused, with the tolerance it was held to.
    moved = (got[0] + torch.tensor([0.0, 0.0, 1.0, 0.0]), got[1], got[2])
    with pytest.raises(
        FpnError, match=r"tolerance 0\.05 px, 0\.0001 score\); nearest exported a: box off by 1 px"
    ):
        compare_detections("img", ref, moved, 0.05, 100, names)
    extra = (
        torch.cat([got[0], got[0][:1]]),
        torch.cat([got[1], torch.tensor([0.5])]),
        torch.cat([got[2], got[2][:1]]),
    )
    with pytest.raises(FpnError, match="has a detection PyTorch does not"):
        compare_detections("img", ref, extra, 0.05, 100, names)


def test_tolerance_follows_pytorchs_own_spread_and_ties_are_excused():
    """A box PyTorch's two valid computations already put 0.1 px apart may move by 4x that in
    the export; a detection they disagree about (a tie) may vanish, and is counted."""
    from fpncli.deploy.selfcheck import compare_detections

    ref = {
        "boxes": torch.tensor([[0.0, 0.0, 100.0, 700.0], [10.0, 10.0, 40.0, 40.0]]),
        "scores": torch.tensor([0.9, 0.7]),
        "labels": torch.tensor([1, 1]),
    }
    alt = {
        "boxes": ref["boxes"][:1] + torch.tensor([0.0, 0.0, 0.0, 0.1]),
        "scores": ref["scores"][:1],
        "labels": ref["labels"][:1],
    }
    got = (ref["boxes"][:1] + torch.tensor([0.0, 0.0, 0.0, 0.3]), ref["scores"][:1], ref["labels"][:1])
    checked = compare_detections("tall", ref, got, 0.05, 100, ["a"], alt=alt, scale=1.0)
    assert checked.box_tol == pytest.approx(0.4, rel=1e-3) and checked.box_diff == pytest.approx(
        0.3, rel=1e-3
    )
    assert checked.unstable == 1 and checked.excused == 1  # detection 2: alt lacks it too
    # Without the spread (no alt) the same export is held to the floor and refused.
    with pytest.raises(FpnError, match=r"tolerance 0\.05 px"):
        compare_detections("tall", ref, got, 0.05, 100, ["a"])
    # In model-input pixels: an image shrunk 4x for the model gets 4x the tolerance in its own.
    small = compare_detections(
        "big", ref, (ref["boxes"] + 0.1, ref["scores"], ref["labels"]), 0.05, 100, ["a"], scale=0.25
    )
    assert small.box_tol == pytest.approx(0.2) and small.box_diff == pytest.approx(0.1, abs=1e-5)


def test_compare_nothing_on_both_sides_is_an_empty_pass():
    from fpncli.deploy.selfcheck import compare_detections

    empty = (torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    checked = compare_detections("blank", empty, empty, 0.05, 100, ["a"], alt=empty)
    assert checked.detections == 0 and checked.excused == 0


# --------------------------------------------------------------------------- every neck


def _neck_cases():
    """Every registered neck (necks added later included) with the default RoI pooling, and
    every other RoI pooling option on the FPN: each neck and each option exported once."""
    from fpncli.config import ROI_POOLINGS, ModelConfig
    from fpncli.modeling.necks.registry import NECK_REGISTRY

    default = ModelConfig().roi_pooling
    cases = [pytest.param(name, default, id=f"{name}-{default}") for name in NECK_REGISTRY]
    cases += [pytest.param("fpn", p, id=f"fpn-{p}") for p in ROI_POOLINGS if p != default]
    return cases


# Keep the deep necks quick: their stacking options at the minimum.
_SMALL = {"nasfpn_stacks": 1, "bifpn_repeats": 1}


@pytest.mark.slow
@pytest.mark.parametrize("neck,pooling", _neck_cases())
def test_every_neck_exports_equal_or_is_refused_with_a_reason(
    neck, pooling, one_thread, tmp_path, export_config, monkeypatch
):
    """Each neck x RoI pooling exports to both formats with detections equal to PyTorch on a
    landscape and a portrait image, or is refused (REFUSED) with a one-line reason. ONNX as
    ``fpn export`` writes it: with Winograd 3x3 convolutions, here on every eligible conv of
    the narrow test model (a real one swaps its 256-channel ones)."""
    import fpncli.modeling.winograd_graph as W

    monkeypatch.setattr(W, "MIN_CHANNELS", 1)
    monkeypatch.setattr(W, "MAX_CHANNELS", 10_000)

    from fpncli.deploy.export import _export_bytes, _reference, _runner, compare_detections
    from fpncli.deploy.formats import REFUSED
    from fpncli.modeling.detector import build_model
    from fpncli.modeling.necks.registry import get_neck

    # Only this neck's own (another neck's option would do nothing, and is refused).
    small = {k: v for k, v in _SMALL.items() if k in get_neck(neck).option_fields}
    cfg = export_config(neck=neck, roi_pooling=pooling, box_score_thresh=0.0, **small)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, s, dtype=torch.uint8, generator=g) for s in ((45, 71, 3), (83, 52, 3))]
    for fmt in FORMATS:
        refused = [r for (k, v), (fmts, r) in REFUSED.items() if getattr(cfg, k, None) == v and fmt in fmts]
        if refused:  # refused before any work: one line with the reason, no file
            from fpncli.checkpoint import save_checkpoint
            from fpncli.deploy.export import ExportOptions, run_export

            ckpt = save_checkpoint(tmp_path / "m.pt", model)
            with pytest.raises(FpnError, match=re.escape(refused[0])) as info:
                run_export(ExportOptions(str(ckpt), fmt, tmp_path / f"m{SUFFIX[fmt]}"))
            assert "\n" not in str(info.value) and not (tmp_path / f"m{SUFFIX[fmt]}").exists()
            continue
        data = _export_bytes(model, fmt, {"version": 1}, f"{neck}-{pooling}", winograd=fmt == "onnx")
        run = _runner(data, fmt)
        for image in images:
            checked = compare_detections(
                f"{fmt} {tuple(image.shape)}", _reference(model, image), run(image), 0.0, 100, cfg.class_names
            )
            assert checked.detections > 0


# --------------------------------------------------------------------------- broken input


def test_broken_inputs_are_one_line_errors(tmp_path, tiny_checkpoint, monkeypatch):
    from fpncli.deploy.export import ExportOptions, run_export

    cases = [
        (
            ExportOptions(str(tmp_path / "missing.pt"), "onnx", tmp_path / "m.onnx"),
            "missing.pt: no such file",
        ),
        (
            ExportOptions(str(tiny_checkpoint), "tflite", tmp_path / "m.tflite"),
            "unknown export format 'tflite'",
        ),
        (ExportOptions(str(tiny_checkpoint), "onnx", tmp_path / "m.pt"), "must end in .onnx"),
        (ExportOptions("none", "onnx", tmp_path / "m.onnx"), "random model"),
        (
            ExportOptions(str(tiny_checkpoint), "onnx", tmp_path / "m.onnx", check_images=tmp_path / "nope"),
            "--check-images must be a folder",
        ),
        (
            ExportOptions(
                str(tiny_checkpoint), "onnx", tmp_path / "m.onnx", check_images=tmp_path / "broken"
            ),
            r"no readable image to check with \(2 skipped; first: .*broken.*\)",
        ),
        (
            ExportOptions(str(tiny_checkpoint), "onnx", tmp_path / "m.onnx", check_images=tmp_path / "empty"),
            r"empty: --check-images holds no images \(\.jpg",
        ),
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "broken" / name).write_bytes(b"not an image")
    for options, message in cases:
        with pytest.raises(FpnError, match=message) as info:
            run_export(options)
        assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("m.*"))


def test_corrupt_onnx_to_detect_is_one_line_error(tmp_path, cli):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage that is no protobuf")
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(img)
    result = cli(["detect", img, "--weights", bad, "--out", tmp_path / "o"])
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert err.startswith("error:") and "model.onnx: not a readable ONNX model" in err and "\n" not in err


def test_exported_file_refused_where_pytorch_weights_are_needed(exported):
    """inspect-levels on an image (feature maps), train, info: one line saying what is needed;
    the config-only uses (inspect-levels --annotations) read the file's metadata."""
    from fpncli.modeling.weights import load_detector, weights_config

    path = str(exported[1]["onnx"].out)
    with pytest.raises(FpnError, match="exported \\(onnx\\) model only detects"):
        load_detector(path)
    assert weights_config(path).category_ids == [1, 3, 7]


def test_missing_onnxruntime_says_what_to_install(monkeypatch, tmp_path, tiny_checkpoint):
    from fpncli.deploy.export import ExportOptions, run_export
    from fpncli.modeling.exported import load_exported

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(FpnError, match=r'onnxruntime: pip install "fpncli\[onnx\]"'):
        run_export(ExportOptions(str(tiny_checkpoint), "onnx", tmp_path / "m.onnx"))
    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"x")
    with pytest.raises(FpnError, match=r'pip install "fpncli\[onnx\]"'):
        load_exported(fake)


def test_broken_onnxruntime_is_not_called_missing(monkeypatch):
    """An installed onnxruntime whose import fails (a broken install, or Ctrl-C during its
    initialisation, which it turns into ImportError) says so, not "pip install"."""
    import builtins

    from fpncli.modeling.exported import import_onnxruntime

    real = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("initialization failed")
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(
        FpnError, match=r"onnxruntime is installed but failed to import \(initialization failed\)"
    ):
        import_onnxruntime()


def test_refused_option_is_one_line_before_any_export(tmp_path, tiny_checkpoint, monkeypatch):
    """A neck or option listed in REFUSED stops the export with its reason, writing nothing."""
    import fpncli.deploy.export as E
    import fpncli.deploy.formats as F

    monkeypatch.setattr(F, "REFUSED", {("neck", "fpn"): (("onnx",), "its resize op has no ONNX form")})
    monkeypatch.setattr(E, "_export_bytes", lambda *a: pytest.fail("exported a refused model"))
    out = tmp_path / "m.onnx"
    with pytest.raises(FpnError, match="neck fpn cannot be exported to onnx: its resize op has no ONNX form"):
        E.run_export(E.ExportOptions(str(tiny_checkpoint), "onnx", out))
    assert not out.exists()


def test_sac_switch_padding_traces_the_same_choice_at_every_size():
    """SAC pads by reflection, or by replication on maps of 2 cells or fewer: the traced
    (TorchScript) and exported (ONNX) padding make eager PyTorch's choice at every size, not
    the traced size's."""
    import io
    import warnings

    from fpncli.modeling.exported import onnx_session
    from fpncli.modeling.sac import switch_padding

    class Pad(torch.nn.Module):
        def forward(self, x):
            return switch_padding(x)

    example = torch.randn(1, 2, 7, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Pad(), example, check_trace=False)
        buffer = io.BytesIO()
        torch.onnx.export(
            Pad(), (example,), buffer, input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}}, dynamo=False
        )
    session = onnx_session(buffer.getvalue(), threads=1)
    for h, w in [(1, 1), (1, 5), (2, 2), (2, 6), (3, 3), (3, 8), (6, 4)]:
        x = torch.randn(1, 2, h, w)
        expected = switch_padding(x)
        assert expected.shape == (1, 2, h + 4, w + 4)
        assert torch.equal(traced(x), expected), (h, w)
        assert torch.equal(torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), expected), (h, w)
    # Eager: reflection where possible, replication on the small maps.
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert switch_padding(x)[0, 0, 2, :2].tolist() == [2.0, 1.0]
    x = torch.arange(4.0).view(1, 1, 2, 2)
    assert switch_padding(x)[0, 0, 2, :3].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_sac_exports_and_sac_deform_goes_to_torchscript_only(fmt, one_thread, tmp_path, export_config):
    """A SAC backbone exports (ONNX) and so does the deformable one (TorchScript), equal to
    PyTorch on an image whose res4 maps reflect, as the traced one's do, and on a thin one
    whose res4 maps have 2 rows and replicate; ONNX refuses the deformable one in one line."""
    from fpncli.checkpoint import save_checkpoint
    from fpncli.deploy.export import ExportOptions, _export_bytes, _reference, _runner, compare_detections
    from fpncli.modeling.detector import build_model

    options = {"sac": True} if fmt == "onnx" else {"sac": True, "sac_deform": True}
    cfg = export_config(box_score_thresh=0.0, **options)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    run = _runner(_export_bytes(model, fmt, {"version": 1}, "sac"), fmt)
    g = torch.Generator().manual_seed(1)
    for shape in ((45, 71, 3), (20, 200, 3)):  # padded 64x96 and 32x96: res4 4x6 and 2x6
        image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        checked = compare_detections(
            f"{fmt} {shape}", _reference(model, image), run(image), 0.0, 100, cfg.class_names
        )
        assert checked.detections > 0
    if fmt == "onnx":
        from fpncli.deploy.export import run_export

        deform = save_checkpoint(tmp_path / "d.pt", build_model(export_config(sac=True, sac_deform=True)))
        with pytest.raises(FpnError, match="sac_deform True cannot be exported to onnx: ONNX has no") as info:
            run_export(ExportOptions(str(deform), fmt, tmp_path / "d.onnx"))
        assert "\n" not in str(info.value) and not (tmp_path / "d.onnx").exists()


def test_an_existing_out_is_replaced_only_when_it_is_an_earlier_export(exported, tmp_path):
    """Re-exporting over an earlier export is allowed; any other existing file (a checkpoint,
    a check image, a document, a foreign .onnx) is kept and the export refused in one line."""
    from PIL import Image

    from fpncli.deploy.export import ExportOptions, _check_replaceable, run_export

    ckpt, summaries = exported
    for summary in summaries.values():
        _check_replaceable(summary.out)  # an earlier export: replaceable
    _check_replaceable(tmp_path / "new.onnx")  # nothing there yet
    images = tmp_path / "check"
    images.mkdir()
    Image.new("RGB", (40, 30), (90, 120, 30)).save(images / "a.png")
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not a model")
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    other = tmp_path / "other.pt"  # another checkpoint
    other.write_bytes(ckpt.read_bytes())
    for path in (other, images / "a.png", foreign, notes):
        before = path.read_bytes()
        fmt = "onnx" if path.suffix == ".onnx" else "torchscript"
        with pytest.raises(FpnError, match="exists and was not written by fpn export") as info:
            run_export(ExportOptions(str(ckpt), fmt, path, check_images=images))
        assert "\n" not in str(info.value) and path.read_bytes() == before


def test_exported_models_under_the_wrong_name_are_named_for_what_they_are(exported, tmp_path):
    """A TorchScript archive without fpn export's metadata, or an ONNX file renamed .pt, is a
    one-line error saying what the file is (not torch.load's advice to unpickle it), with no
    warning printed on the way."""
    import shutil
    import warnings

    from fpncli.weight_files import load_file

    _, summaries = exported
    renamed = tmp_path / "model.pt"
    shutil.copy(summaries["onnx"].out, renamed)
    bare = tmp_path / "bare.torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(torch.nn.Conv2d(3, 3, 3), torch.randn(1, 3, 8, 8)), str(bare))
    cases = {
        renamed: "an ONNX model; name it .onnx",
        bare: "a TorchScript archive without fpn export's metadata",
    }
    for path, message in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(FpnError, match=re.escape(f"{path}: {message}")) as info:
                load_file(path)
        assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x08garbage")  # an ONNX-like first byte, not ONNX: the generic message
    with pytest.raises(FpnError, match=r"not a safe weights file|not a readable PyTorch weights file"):
        load_file(garbage)


def test_hand_edited_metadata_is_a_one_line_error(exported, tmp_path):
    """Metadata that no longer fits the graph (fewer classes than its labels, a version that is
    not a number) is refused in one line, not a traceback."""
    import json as _json

    import onnx

    from fpncli.modeling.exported import load_exported
    from fpncli.weight_files import ONNX_METADATA_KEY

    _, summaries = exported
    proto = onnx.load(str(summaries["onnx"].out))
    props = {p.key: p for p in proto.metadata_props}
    meta = _json.loads(props[ONNX_METADATA_KEY].value)
    one_class = _json.loads(_json.dumps(meta))
    one_class["model_config"]["class_names"] = one_class["model_config"]["class_names"][:1]
    one_class["model_config"]["category_ids"] = one_class["model_config"]["category_ids"][:1]
    string_version = {**meta, "version": "1"}
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (70, 90, 3), dtype=torch.uint8, generator=g)
    for name, edited, message in (
        ("one.onnx", one_class, r"the graph returned label [23] but its metadata lists 1 class"),
        ("str.onnx", string_version, r"bad fpncli metadata \(export version '1' is not a number\)"),
    ):
        props[ONNX_METADATA_KEY].value = _json.dumps(edited)
        path = tmp_path / name
        onnx.save(proto, str(path))
        with pytest.raises(FpnError, match=message) as info:
            load_exported(path).detect(image)
        assert "\n" not in str(info.value)
