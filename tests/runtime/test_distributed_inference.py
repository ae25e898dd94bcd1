"""`torchrun --nproc_per_node=2 -m fpncli detect|eval` on the CPU (gloo): rank 0 writes
exactly what one process writes; an unreadable image on rank 1 is reported as in a single
run; a rank that dies is named and what was finished is kept.

One torchrun launch runs the three commands in turn (each process runs ``python -m fpncli``
three times, as torchrun would), to keep the test short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fpncli.evaluation.coco_eval import METRIC_KEYS
from fpncli.inference.sharded import predict_sharded

pytestmark = pytest.mark.usefixtures("one_thread")

# Each process runs `python -m fpncli ARGS` for each command line in turn (exit codes saved);
# in the third run rank 1 is given other images; the fourth fails on every rank (no annotation
# file); in the fifth rank 1 crashes after sending its first two results.
SCRIPT = textwrap.dedent("""
    import json, os, runpy, sys, time
    commands, codes_file = json.loads(sys.argv[1]), sys.argv[2]
    rank = int(os.environ["RANK"])
    codes = []
    for n, args in enumerate(commands):
        if n == 2 and rank == 1:
            args = [a.replace("/val", "/val_few") for a in args]
        if n == 4 and rank == 1:
            import fpncli.inference.predict as P
            real = P.predict_images
            def dying(*a, **k):
                for i, result in enumerate(real(*a, **k)):
                    if i == 1:
                        time.sleep(1.2)  # past the send interval: the two results go together
                    yield result
                    if i == 1:
                        time.sleep(1.0)  # let them arrive, then crash
                        os._exit(3)
            P.predict_images = dying
        sys.argv = ["fpncli", *args]
        try:
            runpy.run_module("fpncli", run_name="__main__", alter_sys=True)
            codes.append(0)
        except SystemExit as exc:
            codes.append(exc.code if isinstance(exc.code, int) else 1)
        with open(codes_file % rank, "w") as f:
            json.dump(codes, f)
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 synthetic val images (000001.png, owned by rank 1, made unreadable) and a tiny
    checkpoint over the synthetic classes that reports every detection."""
    from fpncli.checkpoint import save_checkpoint
    from fpncli.config import preset_config
    from fpncli.data.synth import CLASSES, synthesize
    from fpncli.modeling.detector import build_model

    root = tmp_path_factory.mktemp("dist")
    synthesize(root / "data", train=0, val=8, seed=0)
    (root / "data" / "val" / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "data" / "val_few").mkdir()
    for name in ("000000.png", "000002.png"):
        (root / "data" / "val_few" / name).write_bytes((root / "data" / "val" / name).read_bytes())
    cfg = preset_config(
        "tiny",
        min_size=96,
        max_size=128,
        class_names=list(CLASSES),
        category_ids=[1, 2, 3, 4],
        box_score_thresh=0.0,
    )
    torch.manual_seed(0)
    weights = save_checkpoint(root / "tiny.pt", build_model(cfg).eval())
    return root, weights


def _commands(root: Path, weights: Path, tag: str) -> list[list[str]]:
    val, ann = root / "data" / "val", root / "data" / "annotations" / "instances_val.json"
    detect = ["detect", str(val), "--weights", str(weights), "--workers", "0", "--score-thr", "0"]
    coco = ["--coco-results", str(root / f"coco-{tag}.json"), "--coco-annotations", str(ann)]
    evaluate = ["eval", "--coco", str(ann), "--images", str(val), "--weights", str(weights)]
    return [
        [*detect, "--out", str(root / f"det-{tag}"), *coco],
        [*evaluate, "--device", "cpu", "--batch-size", "1", "--out", str(root / f"eval-{tag}")],
        [*detect, "--out", str(root / f"other-{tag}"), "--no-draw", "--quiet"],
        ["eval", "--coco", str(root / "missing.json"), "--images", str(val), "--weights", str(weights)],
        [*detect, "--out", str(root / f"die-{tag}"), "--no-draw", "--quiet"],
    ]


@pytest.fixture(scope="module")
def runs(data, cli):
    """The commands in one process (CliRunner), then under torchrun with 2 processes."""
    root, weights = data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's processes (OMP_NUM_THREADS=1): same float results
    try:
        single = [runner_exit(cli, args) for args in _commands(root, weights, "single")[:2]]
        # eval computes each image with one thread whatever the process's thread count
        torch.set_num_threads(2)
        single.append(runner_exit(cli, _commands(root, weights, "threads")[1]))
    finally:
        torch.set_num_threads(threads)  # later tests expect conftest's setting
    script = root / "run_commands.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    cmd += [json.dumps(_commands(root, weights, "dist")), str(root / "codes-%s.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    codes = [json.loads((root / f"codes-{r}.json").read_text()) for r in (0, 1)]
    return root, single, proc, codes


def runner_exit(cli, args: list[str]) -> int:
    result = cli(args)
    assert "Traceback" not in result.output, result.output
    return result.exit_code


def _json(path: Path):
    return json.loads(path.read_text())


def _predictions(out: Path):
    """predictions.json of a run into ``out``, each annotated copy's path relative to ``out``
    (two runs into two folders name the same copies)."""
    data = _json(out / "predictions.json")
    for record in data["images"]:
        if "annotated" in record:
            record["annotated"] = str(Path(record["annotated"]).relative_to(out))
    return data


@pytest.mark.slow
def test_detect_under_torchrun_writes_what_one_process_writes(runs):
    root, single, proc, codes = runs
    # The unreadable image makes both runs exit 1, as documented; rank 1 prints nothing.
    assert single[0] == 1 and codes[0][0] == 1 and codes[1][0] == 0, proc.stderr[-3000:]
    one, two = _predictions(root / "det-single"), _predictions(root / "det-dist")
    assert len(one["images"]) == 7 and sum(len(r["detections"]) for r in one["images"]) > 0
    assert [e["file"] for e in one["errors"]] == [str(root / "data" / "val" / "000001.png")]
    assert two == one  # same records, same order, same numbers; the error reported the same way
    assert _json(root / "coco-dist.json") == _json(root / "coco-single.json")
    # Annotated images, drawn by the rank that read each image: the same files, bit for bit.
    pictures = {p.name: p.read_bytes() for p in (root / "det-single").glob("*.png")}
    assert len(pictures) == 7
    assert {p.name: p.read_bytes() for p in (root / "det-dist").glob("*.png")} == pictures
    assert proc.stdout.count("images read") == 1  # one summary: rank 0's


@pytest.mark.slow
def test_eval_under_torchrun_gives_the_single_process_numbers(runs):
    root, single, proc, codes = runs
    assert single[1] == 0 and codes[0][1] == 0 and codes[1][1] == 0, proc.stderr[-3000:]
    one, two = _json(root / "eval-single" / "metrics.json"), _json(root / "eval-dist" / "metrics.json")
    for key in [*METRIC_KEYS, "per_class", "num_images", "num_detections", "skipped_images", "problems"]:
        assert two[key] == one[key], key
    assert (
        one["num_images"] == 7
        and len(one["skipped_images"]) == 1
        and "000001.png" in one["skipped_images"][0]
    )
    dets = _json(root / "eval-dist" / "detections.json")
    assert dets == _json(root / "eval-single" / "detections.json") and len(dets) > 0
    # byte-identical also to a single process with more threads (a convolution's float sums
    # depend on its thread count: eval runs every image on one)
    assert (
        single[2] == 0
        and (root / "eval-threads" / "detections.json").read_bytes()
        == (root / "eval-dist" / "detections.json").read_bytes()
    )
    assert proc.stdout.count("COCO box metrics") == 1


@pytest.mark.slow
def test_a_rank_that_dies_is_named_and_finished_results_are_kept(runs):
    root, _, proc, codes = runs
    assert proc.returncode != 0 and codes[0][4:] == [1], proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "rank 1 of 2 stopped" in line]
    # rank 1 died without a word: rank 0's own error is the run's, printed once
    assert len(errors) == 1 and errors[0].startswith("error (rank 0): "), proc.stderr[-3000:]
    kept = _predictions(root / "die-dist")
    one = _predictions(root / "det-single")
    # Rank 1 sent images 1 and 3 before it died: images 0-4 are kept, in order; 5 never came.
    files = sorted([r["file"] for r in kept["images"]] + [e["file"] for e in kept["errors"]])
    assert files == [str(root / "data" / "val" / f"00000{i}.png") for i in range(5)]
    # (this run draws nothing: no "annotated" entries)
    without_ids = [{k: v for k, v in r.items() if k not in ("image_id", "annotated")} for r in one["images"]]
    assert kept["images"] == [r for r in without_ids if r["file"] in files]


@pytest.mark.slow
def test_ranks_given_different_inputs_refuse_before_any_work(runs):
    root, _, proc, codes = runs
    assert codes[0][2] == 1 and codes[1][2] == 1, proc.stderr[-3000:]  # both ranks refuse
    errors = [line for line in proc.stderr.splitlines() if "were given different inputs" in line]
    # printed once, by rank 0, naming both ranks (each raised it)
    assert len(errors) == 1 and "rank 0: 8, rank 1: 2" in errors[0], proc.stderr[-3000:]
    assert errors[0].startswith("error (ranks 0, 1): the 2 processes"), errors
    # No image ran: nothing is written (an earlier run's predictions.json would stay as it was).
    assert not (root / "other-dist" / "predictions.json").exists()


def test_single_process_is_predict_images_with_the_local_hook(tiny_model, tmp_path):
    from PIL import Image

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 30), (i * 100, 50, 50)).save(paths[-1])
    seen = []
    results = list(predict_sharded(tiny_model, paths, on_local=seen.append, keep_images=True))
    assert [r.path for r in results] == paths and seen == results
    assert results[0].image is not None and results[0].image.shape == (3, 30, 40)
    assert list(predict_sharded(tiny_model, [])) == []


@pytest.mark.slow
def test_an_eval_error_under_torchrun_is_printed_once(runs):
    _, _, proc, codes = runs
    assert codes[0][3] == 1 and codes[1][3] == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "missing.json" in line]
    assert len(errors) == 1 and errors[0].startswith("error (ranks 0, 1): "), proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("spec", "env", "index"),
    [("cuda", {}, 0), ("cuda", {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, 1), ("cuda:1", {}, 1)],
)
def test_the_gpu_is_set_by_index(monkeypatch, spec, env, index):
    # torch 2.11 refuses set_device(torch.device("cuda")) without an index (seen on an H200).
    from fpncli.inference import sharded

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    chosen: list = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert sharded.inference_device(spec).type == "cuda"
    assert chosen == [index] and isinstance(chosen[0], int)
