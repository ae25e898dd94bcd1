"""The graph cache (fpncli/inference/graph_cache.py): a graph path's second run of a model reads
the exported graph instead of exporting it, with the same detections; anything the graph was
made from (weights, calibration images) changing makes a new one; a damaged or unwritable
cache costs only an export; FPN_GRAPH_CACHE_MB=0 turns it off, and a bad value is one line."""

from __future__ import annotations

import json
import os

import pytest


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FPN_CACHE_DIR", str(folder))
    monkeypatch.delenv("FPN_GRAPH_CACHE_MB", raising=False)
    return folder / "graphs"


def _detect(cli, src, weights, out, *args):
    result = cli(
        ["detect", src, "--weights", weights, "--out", out, "--no-draw", "--score-thr", "0.05", *args]
    )
    assert result.exit_code == 0, result.output
    (path,) = [line for line in result.output.splitlines() if "path: " in line]
    images = json.loads((out / "predictions.json").read_text())["images"]
    return path, [[(d["label"], d["score"], d["box"]) for d in image["detections"]] for image in images]


def _records(out):
    return [
        d
        for image in json.loads((out / "predictions.json").read_text())["images"]
        for d in image["detections"]
    ]


def test_second_run_reads_the_graph_and_gives_the_same_detections(
    tmp_path, cache, detect_weights, cli, make_image
):
    src = make_image(tmp_path / "in" / "a.png", size=(96, 72), seed=1)
    first_path, first = _detect(cli, src, detect_weights, tmp_path / "one", "--backend", "onnxruntime")
    assert "graph from the cache" not in first_path
    (stored,) = cache.glob("*.onnx")
    second_path, second = _detect(cli, src, detect_weights, tmp_path / "two", "--backend", "onnxruntime")
    assert "path: onnxruntime fp32 (user choice; graph from the cache" in second_path
    assert second == first and sum(map(len, first)) > 0
    assert [p.name for p in cache.glob("*.onnx")] == [stored.name]


def test_new_weights_or_calibration_images_make_a_new_graph(tmp_path, cache, tiny_model, cli, make_image):
    import torch

    from fpncli.checkpoint import save_checkpoint

    src = tmp_path / "in"
    for seed in (1, 2):
        make_image(src / f"{seed}.png", size=(96, 72), seed=seed)
    tiny_model.config = tiny_model.config.replace(box_score_thresh=0.0)
    weights = save_checkpoint(tmp_path / "w.pt", tiny_model)
    _detect(cli, src, weights, tmp_path / "a", "--precision", "int8")
    int8_graphs = len(list(cache.glob("*.onnx")))  # the fp32 graph it quantized, and the int8 one
    assert int8_graphs == 2
    path, _ = _detect(cli, src, weights, tmp_path / "b", "--precision", "int8")
    assert "int8 (the fastest int8 runtime installed; graph from the cache" in path
    # A changed calibration image: calibrated again (from the cached fp32 graph).
    later = os.stat(src / "1.png").st_mtime_ns + 10**9
    os.utime(src / "1.png", ns=(later, later))
    path, _ = _detect(cli, src, weights, tmp_path / "c", "--precision", "int8")
    assert "graph from the cache" not in path and len(list(cache.glob("*.onnx"))) == 3
    # Other weights at the same path: a new graph.
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    save_checkpoint(weights, tiny_model)
    path, _ = _detect(cli, src, weights, tmp_path / "d", "--backend", "openvino")
    assert "graph from the cache" not in path


def test_off_when_the_limit_is_zero(tmp_path, cache, detect_weights, cli, make_image, monkeypatch):
    monkeypatch.setenv("FPN_GRAPH_CACHE_MB", "0")
    src = make_image(tmp_path / "a.png", size=(64, 48), seed=2)
    for run in ("one", "two"):
        path, _ = _detect(cli, src, detect_weights, tmp_path / run, "--backend", "openvino")
        assert "graph from the cache" not in path
    assert not cache.exists()


@pytest.mark.parametrize("value", ["lots", "inf", "-1", "1e308"])
def test_a_bad_limit_is_one_line_and_writes_nothing(
    tmp_path, cache, detect_weights, cli, make_image, monkeypatch, value
):
    monkeypatch.setenv("FPN_GRAPH_CACHE_MB", value)
    src = make_image(tmp_path / "a.png", size=(64, 48), seed=2)
    result = cli(
        ["detect", src, "--weights", detect_weights, "--out", tmp_path / "o", "--backend", "openvino"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert f"FPN_GRAPH_CACHE_MB={value!r}: expected a size in MiB" in line
    assert not (tmp_path / "o" / "predictions.json").exists() and not cache.exists()


def test_classes_keep_their_detections_on_a_graph_path_and_get_their_own_graph(
    tmp_path, cache, detect_weights, cli, make_image
):
    """--classes lets the model keep every detection before its class filter; the graph holds
    that, so it is another graph than a plain run's, and the filter sees every detection."""
    src = make_image(tmp_path / "a.png", size=(96, 72), seed=1)
    few = ("--score-thr", "0", "--max-dets", "5")
    from fpncli.modeling.weights import load_for_inference

    _, plain = _detect(cli, src, detect_weights, tmp_path / "plain", "--backend", "openvino", *few)
    names = load_for_inference(detect_weights)[0].config.class_names
    # A class outside the plain run's top 5: filtering after that top-k would leave nothing.
    rare = next(n for n in names if n not in {label for label, _, _ in plain[0]})
    runs = {}
    for backend in ("torch", "openvino"):
        path, runs[backend] = _detect(
            cli, src, detect_weights, tmp_path / backend, "--backend", backend, *few, "--classes", rare
        )
    assert "graph from the cache" not in path and len(list(cache.glob("*.onnx"))) == 2
    assert [len(d) for d in runs["openvino"]] == [len(d) for d in runs["torch"]] == [5]
    assert {label for label, _, _ in runs["openvino"][0]} == {label for label, _, _ in runs["torch"][0]}


def test_a_damaged_entry_or_unwritable_cache_costs_only_an_export(
    tmp_path, cache, detect_weights, cli, make_image
):
    src = make_image(tmp_path / "a.png", size=(64, 48), seed=3)
    _, first = _detect(cli, src, detect_weights, tmp_path / "one", "--backend", "openvino")
    (stored,) = cache.glob("*.onnx")
    whole = stored.read_bytes()
    stored.write_bytes(whole[:1000])  # cut short, as by a full disk
    path, again = _detect(cli, src, detect_weights, tmp_path / "two", "--backend", "openvino")
    assert "graph from the cache" not in path and again == first
    assert stored.read_bytes() == whole  # written again, whole
    stored.write_bytes(whole[:100] + bytes(300) + whole[400:])  # same size, damaged
    path, again = _detect(cli, src, detect_weights, tmp_path / "two-b", "--backend", "openvino")
    assert "graph from the cache" not in path and again == first and stored.read_bytes() == whole
    for entry in cache.iterdir():
        entry.unlink()
    cache.rmdir()
    cache.write_text("a file where the folder should be")
    path, again = _detect(cli, src, detect_weights, tmp_path / "three", "--backend", "openvino")
    assert "graph from the cache" not in path and again == first


def test_trim_removes_the_least_recently_used_first(cache):
    from fpncli.inference import graph_cache

    for i, key in enumerate(("old", "used", "new")):
        graph_cache.store(key, bytes(1000), seconds=1.0)
        os.utime(cache / f"{key}.onnx", (1000 + i, 1000 + i))
    assert graph_cache.lookup("used") is not None  # a read makes it the most recently used
    graph_cache.trim(2000)
    assert sorted(p.stem for p in cache.glob("*.onnx")) == ["new", "used"]
    assert not (cache / "old.json").exists()
    assert graph_cache.lookup("missing") is None and graph_cache.made_seconds("missing") == 0.0


def test_auto_counts_the_export_a_cached_graph_saves(tmp_path, cache, detect_weights, cli, make_image):
    from fpncli.inference import probe

    src = make_image(tmp_path / "a.png", size=(64, 48), seed=3)
    from fpncli.modeling.weights import load_for_inference

    cfg = load_for_inference(detect_weights)[0].config
    key = f"{probe.machine_key()} | {cfg.backbone} {cfg.neck} {cfg.min_size}px"
    seconds = {"torch": 1.0, "winograd": 2.0, "onnxruntime": 0.9, "openvino": 0.5}
    probe.remember(
        key, {"winner": "openvino", "seconds": seconds, "builds": {"openvino": 30.0, "onnxruntime": 30.0}}
    )
    path, _ = _detect(cli, src, detect_weights, tmp_path / "one")
    assert "path: torch fp32 (cached probe: fastest overall counting its set-up" in path
    _detect(cli, src, detect_weights, tmp_path / "two", "--backend", "openvino")  # stores its graph
    (meta,) = cache.glob("*.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "made_seconds": 29.9}))
    # 30 s of set-up less the 29.9 s export the cache saves: openvino pays for itself at once.
    path, _ = _detect(cli, src, detect_weights, tmp_path / "three")
    assert "path: openvino fp32 (cached probe: fastest for 1 image(s)" in path
    assert "graph from the cache, 30 s saved" in path
