"""`fpn train --logger` (#27): each logger writes what it promises and continues on resume;
best.pt by --best-metric, kept on resume; a missing extra is one line."""

from __future__ import annotations

import csv
import json
import struct
import sys

import pytest
import torch

from fpncli.checkpoint import read_checkpoint, save_checkpoint
from fpncli.data.synth import synthesize
from fpncli.errors import FpnError
from fpncli.training.config import COCO_METRICS, TrainConfig
from fpncli.training.loggers import parse_loggers, require
from fpncli.training.loggers.base import train_scalars
from fpncli.training.loggers.csv_hook import columns
from fpncli.training.resume import best_so_far

SMALL = {
    "min_size": 64,
    "max_size": 96,
    "fpn_channels": 16,
    "box_head_dim": 32,
    "rpn_batch_size_per_image": 32,
    "box_batch_size_per_image": 32,
}
# Scripted validation: AP by iteration (2 iterations per epoch, evaluated at each epoch end).
# 4 beats 2 (best.pt replaced); after the resume, 6 is worse than 4 (best.pt kept).
SCRIPTED_AP = {2: 0.3, 4: 0.5, 6: 0.4}


def _scripted_validate(model, cfg, info, emit):
    it = _scripted_validate.iteration()
    ap = SCRIPTED_AP[it]
    return {k: (ap if k == "AP" else 0.1) for k in COCO_METRICS}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One run of 4 iterations with all four loggers, then resumed to 6; its events."""
    pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    import fpncli.training.train as engine

    root = tmp_path_factory.mktemp("loggers")
    synthesize(root / "data", train=4, val=2, seed=0)
    run = root / "run"
    events: list[dict] = []
    state = {"it": 0}

    def progress(event):
        events.append(event)
        if event["event"] == "eval_start":
            state["it"] = event["iter"]

    _scripted_validate.iteration = lambda: state["it"]  # type: ignore[attr-defined]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits on a busy machine
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(engine, "_validate", _scripted_validate)
        cfg = TrainConfig(
            data=str(root / "data"),
            preset="tiny",
            out=str(run),
            model=dict(SMALL),
            batch_size=2,
            workers=0,
            log_every=1,
            eval_every=1,
            seed=1,
            iters=4,
            loggers=["tensorboard", "mlflow", "wandb", "csv"],
        )
        first = engine.train(cfg, progress=progress)
        ids = json.loads((run / "loggers.json").read_text())
        best_before = read_checkpoint(run / "best.pt")["train_state"]
        second = engine.train(TrainConfig(out=str(run), resume=True, iters=6, workers=0), progress=progress)
    torch.set_num_threads(threads)
    return {
        "run": run,
        "events": events,
        "first": first,
        "second": second,
        "ids": ids,
        "best_before": best_before,
    }


@pytest.mark.slow
def test_tensorboard_scalars_images_and_resume(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logged["run"] / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in (
        "train/loss",
        "train/loss_classifier",
        "train/loss_box_reg",
        "train/loss_objectness",
        "train/loss_rpn_box_reg",
        "train/lr",
        "time/iter_time",
        "memory/peak_rss_mb",
        *(f"val/{k}" for k in COCO_METRICS),
    ):
        assert tag in tags["scalars"], tag
    # The resumed run continues the same curve, each iteration once.
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [(e.step, round(e.value, 3)) for e in acc.Scalars("val/AP")] == [(2, 0.3), (4, 0.5), (6, 0.4)]
    assert all(e.value > 0 for e in acc.Scalars("memory/peak_rss_mb"))
    images = [t for t in tags["images"] if t.startswith("val_images/")]
    assert len(images) == 2  # both validation images, at every evaluation
    shots = acc.Images(images[0])
    assert [s.step for s in shots] == [2, 4, 6] and shots[0].width > 0 and shots[0].encoded_image_string


@pytest.mark.slow
def test_mlflow_offline_store_same_run_on_resume(logged):
    from mlflow.tracking import MlflowClient

    ids = logged["ids"]["mlflow"]
    assert ids["tracking_uri"].startswith("file:") and ids["tracking_uri"].endswith("/run/mlruns")
    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    assert json.loads((logged["run"] / "loggers.json").read_text())["mlflow"]["run_id"] == ids["run_id"]
    assert len(client.search_runs([ids["experiment_id"]])) == 1  # resumed, not a second run
    history = client.get_metric_history(ids["run_id"], "train/loss")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4, 5, 6]
    assert [(m.step, m.value) for m in client.get_metric_history(ids["run_id"], "val/AP")] == [
        (2, 0.3),
        (4, 0.5),
        (6, 0.4),
    ]
    run = client.get_run(ids["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.optimizer"] == "adamw" and run.data.params["train.batch_size"] == "2"
    artifacts = {a.path for a in client.list_artifacts(ids["run_id"], "checkpoints")}
    assert artifacts == {"checkpoints/last.pt", "checkpoints/best.pt"}


def _wandb_records(path):
    """The records of a W&B ``.wandb`` file (LevelDB-log framing: 32 KiB blocks, 7-byte
    headers; a record may span blocks), parsed with wandb's protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, out, buf = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or last part
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


@pytest.mark.slow
def test_wandb_offline_runs_share_the_id(logged):
    run_id = logged["ids"]["wandb"]["id"]
    assert logged["ids"]["wandb"]["mode"] == "offline"
    dirs = sorted((logged["run"] / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(dirs) == 2  # the first part and the resumed one, same id (wandb sync joins them)
    history, config, artifacts = [], {}, []
    for d in dirs:
        for rec in _wandb_records(d / f"run-{run_id}.wandb"):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                items = rec.history.item
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
            elif kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
            elif kind == "artifact":
                artifacts.append((rec.artifact.type, sorted(e.path for e in rec.artifact.manifest.contents)))
    assert sorted({h["iter"] for h in history if "train/loss" in h}) == [1, 2, 3, 4, 5, 6]
    assert [(h["iter"], h["val/AP"]) for h in history if "val/AP" in h] == [(2, 0.3), (4, 0.5), (6, 0.4)]
    assert config["train"]["optimizer"] == "adamw" and config["model"]["fpn_channels"] == 16
    assert ("model", ["best.pt", "last.pt"]) in artifacts


@pytest.mark.slow
def test_csv_rows_and_columns(logged):
    with open(logged["run"] / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header == columns([])
    assert [int(r["iter"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(float(r["loss"]) > 0 and float(r["lr"]) > 0 for r in rows)
    assert [(r["iter"], r["AP"]) for r in rows if r["AP"]] == [("2", "0.3"), ("4", "0.5"), ("6", "0.4")]


@pytest.mark.slow
def test_best_checkpoint_chosen_and_kept_on_resume(logged):
    before = logged["best_before"]
    assert (before["iteration"], before["best_metric"], before["best_value"]) == (4, "AP", 0.5)
    after = read_checkpoint(logged["run"] / "best.pt")["train_state"]
    assert (after["iteration"], after["best_value"]) == (4, 0.5)  # 0.4 at 6 did not replace it
    assert logged["first"]["best_value"] == 0.5 and logged["second"]["best_value"] == 0.5
    news = [
        (e["iteration"], e["best_value"])
        for e in logged["events"]
        if e["event"] == "checkpoint" and "best_value" in e
    ]
    starts = [e for e in logged["events"] if e["event"] == "start"]
    assert news == [(2, 0.3), (4, 0.5)]  # and none at 6
    assert (starts[1]["best_value"], starts[1]["best_iteration"]) == (0.5, 4)  # restored, said


def test_best_so_far_reads_best_pt_first(tmp_path, tiny_model):
    assert best_so_far(tmp_path, "AP", 0.2) == (0.2, None)  # no best.pt: last.pt's value
    val = {k: 0.25 for k in COCO_METRICS} | {"AP50": 0.7}
    save_checkpoint(tmp_path / "best.pt", tiny_model, train_state={"iteration": 9, "val": val})
    # A best.pt of a run from before --best-metric: its val metrics say the value.
    assert best_so_far(tmp_path, "AP50", 0.2) == (0.7, 9)
    state = {"iteration": 12, "best_metric": "AP", "best_value": 0.6, "val": val}
    save_checkpoint(tmp_path / "best.pt", tiny_model, train_state=state)
    assert best_so_far(tmp_path, "AP", 0.1) == (0.6, 12)  # what is on disk wins


def test_train_scalars_names():
    record = {"type": "train", "iter": 3, "loss": 1.5, "loss_classifier": 0.5, "lr": 0.01}
    record |= {"grad_norm": None, "iter_time": 0.2, "memory_mb": 100.0}
    cpu = train_scalars(record, "cpu")
    assert cpu == {
        "train/loss": 1.5,
        "train/loss_classifier": 0.5,
        "train/lr": 0.01,
        "time/iter_time": 0.2,
        "memory/peak_rss_mb": 100.0,
    }
    assert "memory/cuda_max_allocated_mb" in train_scalars(record, "cuda")


def test_parse_loggers():
    assert parse_loggers(["tensorboard,CSV", " mlflow", "csv"]) == ["tensorboard", "csv", "mlflow"]
    with pytest.raises(
        FpnError, match="unknown --logger 'comet'; choose from tensorboard, mlflow, wandb, csv"
    ):
        parse_loggers(["csv,comet"])


@pytest.mark.parametrize(
    ("logger", "module"),
    [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")],
)
def test_missing_extra_is_one_line_naming_it(logger, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(FpnError, match=rf"pip install 'fpncli\[{logger}\]'"):
        require(logger)


def test_cli_missing_extra_fails_before_any_work(tmp_path, cli, monkeypatch):
    synthesize(tmp_path / "data", train=2, val=1, seed=0)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = cli(["train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--logger", "csv,mlflow"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "pip install 'fpncli[mlflow]'" in result.output
    assert not (tmp_path / "run").exists()
    result = cli(["train", "--data", tmp_path / "data", "--logger", "neptune"])
    assert result.exit_code == 1 and "unknown --logger 'neptune'" in result.output
    result = cli(["train", "--data", tmp_path / "data", "--best-metric", "mAP"])
    assert result.exit_code == 1 and "unknown --best-metric 'mAP'" in result.output


def test_best_metric_names_are_case_insensitive_as_logger_names_are():
    from fpncli.training.config import metric_name

    assert [metric_name(t) for t in ("ap", "Ap50", " APs ", "ar100")] == ["AP", "AP50", "APs", "AR100"]
    assert metric_name("mAP") == "mAP"  # unknown: left for validation to refuse by name
