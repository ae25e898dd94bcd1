"""`fpn demo`: every step writes its outputs (a tiny budget here; the real figures are in the README)."""

from __future__ import annotations

import json

import pytest

from fpncli.errors import FpnError
from fpncli.workflows.demo import DemoConfig, _prepare


@pytest.mark.slow
def test_demo_end_to_end_small_budget(tmp_path, cli):
    out = tmp_path / "demo"
    result = cli(
        ["demo", "--out", str(out), "--iters", "2", "--train-images", "8", "--val-images", "3"],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, result.output
    assert "held-out AP" in result.output and str(out / "eval" / "metrics.json") in result.output
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"AP", "AP50", "APs", "APm", "APl", "AR100", "per_class"} <= set(metrics)
    summary = json.loads((out / "demo.json").read_text())
    assert summary["status"] == "done" and summary["iterations"] == 2 and 0 <= summary["AP50"] <= 1
    assert (out / "run" / "last.pt").is_file() and (
        out / "data" / "annotations" / "instances_val.json"
    ).is_file()
    if summary["detect"]:
        assert (out / "detect" / "predictions.json").is_file()
        assert len(json.loads((out / "detect" / "predictions.json").read_text())["images"]) == 3


def test_demo_folder_rules(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FpnError, match="not a previous demo"):
        _prepare(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # nothing of the user's is touched
    demo = tmp_path / "d"
    _prepare(demo)
    (demo / "run").mkdir()
    (demo / "run" / "old.pt").write_text("x")
    _prepare(demo)  # a previous demo is replaced
    assert not (demo / "run").exists() and (demo / "demo.json").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FpnError, match="not a folder"):
        _prepare(tmp_path / "file")
    assert DemoConfig().iters * 4 >= DemoConfig().train_images  # at least one epoch by default
