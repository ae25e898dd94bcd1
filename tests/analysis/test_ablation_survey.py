"""The survey's mechanism (#32): a shared warm start, rows run with several seeds, the noise
they measure, the machine named, and an interrupted row that resumes."""

from __future__ import annotations

import json
import os
import signal

import pytest

from fpncli.errors import FpnError


def _run(neck, seed, ap, ar1k, aps=0.1):
    return {
        "neck": neck,
        "settings": {"seed": seed},
        **dict.fromkeys(("AR100", "AR1k_s", "AR1k_m", "AR1k_l", "AP50", "APm", "APl"), 0.5),
        "AR1k": ar1k,
        "AP": ap,
        "APs": aps,
        "seconds_per_image": 0.1 * (seed + 1),
        "train_seconds": 10.0,
        "parameters_used": 1_000_000,
    }


def test_seeds_grammar_mean_spread_and_which_differences_exceed_the_noise():
    from fpncli.analysis.ablation.report import format_row
    from fpncli.analysis.ablation.rows import split_seeds
    from fpncli.analysis.ablation.seeds import aggregate, differences, noise_sentence

    assert split_seeds("fpn+afp@3") == ("fpn+afp", 3) and split_seeds("c5", 2) == ("c5", 2)
    for bad in ("fpn@0", "fpn@x", "fpn@"):
        with pytest.raises(FpnError, match="ROW@N"):
            split_seeds(bad)
    runs = [
        _run("fpn", 0, 0.30, 0.50),
        _run("fpn", 1, 0.34, 0.52),
        _run("fpn", 2, 0.32, 0.48),
        _run("panet", 0, 0.40, 0.50),  # +8 AP: far outside the noise
        _run("c5", 0, 0.31, 0.51, aps=-1),  # +-0 AP; COCO's -1 in one seed stays -1
        _run("c5", 1, 0.33, 0.49),
    ]
    table = aggregate(runs)
    fpn, panet, c5 = table
    assert [r["neck"] for r in table] == ["fpn", "panet", "c5"] and fpn["n"] == 3 and panet["n"] == 1
    assert fpn["AP"] == pytest.approx(0.32) and fpn["spread"]["AP"] == pytest.approx(0.02)
    assert fpn["seeds"] == [0, 1, 2] and fpn["seconds_per_image"] == pytest.approx(0.2)
    assert c5["APs"] == -1 and "APs" not in c5["spread"] and "spread" not in panet
    assert format_row(fpn)[0] == "fpn (n=3)" and format_row(fpn)[7] == "32.0±2.0"
    diff = differences(table)
    # Pooled over fpn (3 seeds) and c5 (2): sqrt((2 * 0.02^2 + 1 * 0.01414^2) / 3) = 1.83 points.
    assert diff["noise"]["AP"] == pytest.approx(1.826, abs=1e-3)
    by = {e["neck"]: e for e in diff["rows"]}
    assert by["panet"]["AP"]["exceeds"] and by["panet"]["AP"]["delta"] == pytest.approx(8.0)
    assert not by["c5"]["AP"]["exceeds"]
    assert "panet: AP +8.0 (exceeds" in noise_sentence(diff)
    # Without a repeated row, or without the reference, nothing can be told from noise.
    assert differences(aggregate(runs[3:4] + runs[:1])) is None and differences(aggregate(runs[3:])) is None
    assert "No row was run with several seeds" in noise_sentence(None)


def test_cpu_model_and_flags_from_cpuinfo():
    from fpncli.analysis.ablation.machine import machine_info, machine_sentence
    from fpncli.runtime.cpu import cpu_info

    text = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni sse\n"
    assert (cpu_info(text)["model"], cpu_info(text)["flags"]) == (
        "AMD EPYC",
        ["avx2", "avx512f", "avx512_vnni"],
    )
    assert cpu_info("")["flags"] == []
    env = machine_info("cpu")
    assert env["gpu"] is None and env["torch"] and env["torchvision"]
    assert machine_sentence(env).startswith(f"CPU {env['cpu']}") and "torchvision" in machine_sentence(env)


def test_warm_start_file_is_never_reused_blindly(tmp_path):
    """A warm_start.pt without its record, with another record, or changed since it was made
    is refused in one line (no silent retraining, no silent reuse)."""
    import torch

    from fpncli.analysis.ablation import run_ablation
    from fpncli.analysis.ablation.warm_start import ensure_warm_start, file_sha256

    key = {"method": "m", "iters": 2}
    path = tmp_path / "warm_start.pt"
    torch.save({"w": torch.zeros(1)}, path)

    def ensure():
        return ensure_warm_start(tmp_path, key, ("a", "b", "c", "d"), "cpu", False, lambda e: None)

    with pytest.raises(FpnError, match=r"warm_start\.pt: exists but was not made .*missing or unreadable"):
        ensure()
    (tmp_path / "warm_start.json").write_text(json.dumps({"key": {**key, "iters": 3}, "sha256": "x"}))
    with pytest.raises(FpnError, match=r"warm_start\.json differs\); --redo-warm-start"):
        ensure()
    (tmp_path / "warm_start.json").write_text(json.dumps({"key": key, "sha256": "0" * 64}))
    with pytest.raises(FpnError, match="changed since it was made"):
        ensure()
    (tmp_path / "warm_start.json").write_text(json.dumps({"key": key, "sha256": file_sha256(path)}))
    assert ensure()["path"] == str(path)
    with pytest.raises(FpnError, match="leave out --backbone-weights"):
        run_ablation(tmp_path / "x", ["fpn"], warm_start=True, backbone_weights="imagenet")
    with pytest.raises(FpnError, match="--seeds must be 1 or more"):
        run_ablation(tmp_path / "x", ["fpn"], seeds=0)
    with pytest.raises(FpnError, match="listed twice"):
        run_ablation(tmp_path / "x", ["fpn", "fpn@2"])
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_warm_started_seeded_survey_survives_an_interrupt(tmp_path, monkeypatch, one_thread):
    """End to end at the smallest budget: the warm start is made and given to every row, fpn
    runs with two seeds, SIGTERM (or Ctrl-C) in its second seed leaves no result, and the next call reuses
    the finished rows, resumes the stopped one and reuses the warm start."""
    import fpncli.analysis.ablation.run as run_module
    import fpncli.analysis.ablation.warm_start as warm_module
    import fpncli.config as config_module
    from fpncli.analysis.ablation import run_ablation
    from fpncli.analysis.ablation.warm_start import file_sha256
    from fpncli.checkpoint import read_checkpoint
    from fpncli.cli.common import sigterm_as_sigint
    from fpncli.runtime.cpu import cpu_info

    # Smaller images, one timed image and small pretext batches: the same code paths, faster.
    monkeypatch.setitem(
        config_module.PRESETS, "tiny", {**config_module.PRESETS["tiny"], "min_size": 96, "max_size": 128}
    )
    monkeypatch.setattr(run_module, "TIMED_IMAGES", 1)
    monkeypatch.setattr(warm_module, "PRETEXT_BATCH", 8)
    out = tmp_path / "abl"
    events, current = [], {}

    def interrupt_second_seed(event):
        events.append(event)
        if event["event"] == "neck_start":
            current.update(event)
        if event["event"] == "iter" and current.get("seed") == 1 and event["iter"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stops a job; the CLI forwards it

    # SIGTERM runs whatever Ctrl-C runs (the CLI's handler): the trainer's stop-and-save.
    with pytest.raises(KeyboardInterrupt), sigterm_as_sigint():
        run_ablation(out, ["c5", "fpn@2"], budget=0.008, warm_start=True, progress=interrupt_second_seed)
    warm = out / "warm_start.pt"
    assert warm.is_file() and json.loads((out / "warm_start.json").read_text())["sha256"] == file_sha256(warm)
    stopped = out / "runs" / "fpn.seed1"
    assert not (stopped / "result.json").exists() and not (out / "ablation.json").exists()
    assert json.loads((stopped / "ablation_train.json").read_text())["status"] == "interrupted"
    assert read_checkpoint(stopped / "last.pt")["train_state"]["iteration"] == 1
    for run in ("c5", "fpn", "fpn.seed1"):
        source = json.loads((out / "runs" / run / "config.json").read_text())["weights_source"]
        assert f"backbone from {warm}" in source
    # A half-written result (a kill mid-write cannot leave one; a copy could) is re-measured.
    (out / "runs" / "c5" / "result.json").write_text('{"neck": "c5", "AR')

    again = []
    result = run_ablation(out, ["c5", "fpn@2"], budget=0.008, warm_start=True, progress=again.append)
    kinds = [e["event"] for e in again]
    assert kinds[0] == "warm_start_reused" and "warm_start" not in kinds
    assert kinds.count("neck_cached") == 1 and "neck_resumed" in kinds
    start = next(e for e in again if e["event"] == "start")
    assert start["neck"] == "fpn" and start["start_iteration"] == 1  # only the stopped row trains
    assert any(e["event"] == "measure" and "not retrained" in e["what"] for e in again)  # c5
    c5, fpn = result["rows"]
    assert (c5["n"], fpn["n"], fpn["seeds"]) == (1, 2, [0, 1]) and len(result["runs"]) == 3
    assert set(fpn["spread"]) >= {"AP", "AR1k"} and result["noise"]["reference"] == "fpn"
    assert result["settings"]["backbone_sha256"] == file_sha256(warm)
    markdown = (out / "ablation.md").read_text()
    assert "| fpn (n=2) |" in markdown and file_sha256(warm)[:16] in markdown
    assert cpu_info()["model"] in markdown and "torchvision" in markdown


def test_cli_refuses_a_warm_start_with_other_backbone_weights_in_one_line(cli, tmp_path):
    result = cli(["ablation", "--warm-start", "--backbone-weights", "imagenet", "--out", tmp_path / "a"])
    assert result.exit_code == 1 and "leave out --backbone-weights" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "a").exists()
    bad = cli(["ablation", "--necks", "fpn@two", "--out", tmp_path / "a"])
    assert bad.exit_code == 1 and "ROW@N" in bad.output
