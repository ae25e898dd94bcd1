"""`fpn train`: run folder, exact resume after Ctrl-C, NaN guard, bad input."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from fpncli.checkpoint import read_checkpoint
from fpncli.data.synth import synthesize
from fpncli.errors import FpnError
from fpncli.training.config import TrainConfig
from fpncli.training.train import lr_factor, train
from fpncli.training.trainer import TrainingDiverged

SMALL = {
    "min_size": 64,
    "max_size": 96,
    "fpn_channels": 16,
    "box_head_dim": 32,
    "rpn_batch_size_per_image": 32,
    "box_batch_size_per_image": 32,
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, train=8, val=3, seed=0)
    return root


def _cfg(shapes, out, **kw):
    base = dict(
        data=str(shapes),
        preset="tiny",
        out=str(out),
        model=dict(SMALL),
        batch_size=2,
        workers=0,
        log_every=1,
        eval_every=-1,
        seed=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(path):
    return read_checkpoint(path)["state_dict"]


@pytest.mark.slow
def test_run_folder_contents(shapes, tmp_path):
    events = []
    summary = train(_cfg(shapes, tmp_path / "run", iters=4, eval_every=0), progress=events.append)
    run = tmp_path / "run"
    assert summary["iterations"] == 4 and not summary["interrupted"]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["optimizer"] == "adamw" and config["model"]["class_names"] == [
        "circle",
        "square",
        "triangle",
        "cross",
    ]
    assert config["train"]["train_ann"].endswith("instances_train.json")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["type"] == "train"]
    assert [r["iter"] for r in train_recs] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["time_per_iter"] > 0 for r in train_recs)
    val = [r for r in records if r["type"] == "val"]
    assert len(val) == 1 and set(val[0]) >= {"AP", "AP50", "APs", "APm", "APl"}
    ckpt = torch.load(run / "last.pt", weights_only=True)  # stays safe to load
    assert ckpt["train_state"]["iteration"] == 4
    assert ckpt["model_config"]["category_ids"] == [1, 2, 3, 4]
    assert (run / "best.pt").is_file() and (run / "curves.png").stat().st_size > 1000
    # no --logger: nothing else (#27)
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "config.json",
        "curves.png",
        "last.pt",
        "metrics.jsonl",
        "skipped_images.txt",
    ]
    assert {"start", "iter", "eval", "end"} <= {e["event"] for e in events}
    with pytest.raises(FpnError, match="already holds a run"):
        train(_cfg(shapes, run, iters=2))


@pytest.mark.slow
def test_resume_after_ctrl_c_is_exact(shapes, tmp_path):
    """N iterations in one go == N/2, Ctrl-C (saves), resume N/2: identical weights."""
    n = 6
    train(_cfg(shapes, tmp_path / "straight", iters=n, train_sizes=[64, 80]))

    def interrupt(event):
        if event["event"] in ("iter", "tick") and event["iter"] == n // 2:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(_cfg(shapes, tmp_path / "resumed", iters=n, train_sizes=[64, 80]), progress=interrupt)
    assert first["interrupted"] and first["iterations"] == n // 2
    assert read_checkpoint(tmp_path / "resumed" / "last.pt")["train_state"]["iteration"] == n // 2
    second = train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, workers=0))
    assert second["iterations"] == n and not second["interrupted"]
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # and training did change the weights
    init = train(_cfg(shapes, tmp_path / "one", iters=1))
    assert any(not torch.equal(a[k], _weights(tmp_path / "one" / "last.pt")[k]) for k in a)
    logged = [
        json.loads(line)["iter"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged == list(range(1, n + 1))
    with pytest.raises(FpnError, match="already trained"):
        train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, workers=0))
    assert init["iterations"] == 1


def test_nan_loss_stops_with_iteration_and_keeps_last_good(shapes, tmp_path, monkeypatch):
    import fpncli.training.train as engine

    real = engine.D.all_reduce_mean
    calls = {"n": 0}

    def poisoned(values, info):
        calls["n"] += 1
        out = real(values, info)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(engine.D, "all_reduce_mean", poisoned)
    with pytest.raises(TrainingDiverged, match="iteration 3"):
        train(_cfg(shapes, tmp_path / "nan", iters=5, save_every=1))
    state = read_checkpoint(tmp_path / "nan" / "last.pt")["train_state"]
    assert state["iteration"] == 2
    assert all(
        torch.isfinite(v).all()
        for v in _weights(tmp_path / "nan" / "last.pt").values()
        if v.is_floating_point()
    )


def test_bad_inputs(shapes, tmp_path, cli):
    with pytest.raises(FpnError, match="no training data"):
        train(TrainConfig(out=str(tmp_path / "x")))
    with pytest.raises(FpnError, match="nothing to resume"):
        train(TrainConfig(out=str(tmp_path / "none"), resume=True))
    with pytest.raises(FpnError, match="unknown optimizer"):
        _cfg(shapes, tmp_path / "y", optimizer="lbfgs").resolved()
    empty = tmp_path / "empty"
    synthesize(empty, train=0, val=0)
    with pytest.raises(FpnError, match="no usable training images"):
        train(_cfg(empty, tmp_path / "z", iters=1))
    result = cli(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "dataset folder not found" in result.output


def test_paper_recipe_defaults_and_schedule(shapes):
    cfg = TrainConfig(data=str(shapes)).resolved()
    assert (cfg.optimizer, cfg.weight_decay, cfg.momentum, cfg.batch_size) == ("sgd", 1e-4, 0.9, 2)
    assert cfg.lr == pytest.approx(0.02 * 2 / 16) and cfg.backbone_weights == "imagenet"
    assert cfg.val_ann.endswith("instances_val.json")
    assert TrainConfig(data=str(shapes), batch_size=16).resolved().lr == pytest.approx(0.02)
    f = [lr_factor(i, 100, 10, 0.001, [0.75], 0.1) for i in (0, 5, 10, 74, 75, 99)]
    assert f[0] == pytest.approx(0.001) and 0.001 < f[1] < 1 and f[2] == f[3] == 1.0
    assert f[4] == f[5] == pytest.approx(0.1)


@pytest.mark.slow
def test_cli_train_and_resume(shapes, tmp_path, cli):
    run = tmp_path / "cli"
    args = [
        "train",
        "--data",
        str(shapes),
        "--preset",
        "tiny",
        "--out",
        str(run),
        "--iters",
        "2",
        "--batch-size",
        "2",
        "--min-size",
        "64",
        "--max-size",
        "96",
        "--workers",
        "0",
        "--eval-every",
        "-1",
    ]
    result = cli(args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "trained 2 iterations" in result.output and str(run) in result.output
    assert json.loads((run / "config.json").read_text())["model"]["min_size"] == 64
    more = cli(["train", "--resume", str(run), "--iters", "3", "--workers", "0"], env={"COLUMNS": "400"})
    assert more.exit_code == 0, more.output
    assert read_checkpoint(run / "last.pt")["train_state"]["iteration"] == 3
    bad = cli(["train", "--data", str(shapes), "--out", str(tmp_path / "b"), "--train-sizes", "10,abc"])
    assert bad.exit_code != 0
