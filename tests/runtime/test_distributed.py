"""`torchrun --nproc_per_node=2` on the CPU (gloo): training completes, ranks agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fpncli.checkpoint import read_checkpoint
from fpncli.data.synth import synthesize
from fpncli.modeling.necks.registry import neck_names

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from fpncli.training.train import train
    from fpncli.training.config import TrainConfig
    root, out, dump = sys.argv[1:4]
    small = {"min_size": 64, "max_size": 96, "fpn_channels": 16, "box_head_dim": 32,
             "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 32}
    import importlib.util
    loggers = ["csv"] + (["tensorboard"] if importlib.util.find_spec("tensorboard") else [])
    summary = train(TrainConfig(data=root, preset="tiny", out=out, iters=3, batch_size=1, workers=0,
                                eval_every=-1, model=small, device="cpu", log_every=1, loggers=loggers))
    torch.save(summary["model"].state_dict(), os.path.join(dump, "rank%s.pt" % os.environ["RANK"]))
""")


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    synthesize(tmp_path / "data", train=6, val=2, seed=0)
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path / "data"),
        str(tmp_path / "run"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), "ranks ended with different weights"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 2 and config["effective_batch"] == 2
    assert config["effective_lr"] == pytest.approx(2 * config["train"]["lr"])
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["train_state"]["iteration"] == 3 and len(ckpt["train_state"]["rng"]) == 2
    trained = {k: v for k, v in ckpt["state_dict"].items() if v.is_floating_point()}
    assert all(torch.equal(trained[k], ranks[0][k]) for k in trained if "running" not in k)
    # only rank 0 wrote the log: one line per iteration
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == [1, 2, 3]
    # and the loggers (#27) logged on rank 0 alone: each iteration once, one event file
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["iter", "1", "2", "3"]
    if (tmp_path / "run" / "tensorboard").exists():
        assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1


# ------------------------------------------------------------------ every neck under DDP
# DDP (find_unused_parameters off) needs a gradient for every trainable parameter in every
# step; a parameter a configuration never uses stops it with the unused-parameters error.
VARIANTS = {
    **{name: {"neck": name} for name in neck_names()},
    "c4-sac": {"neck": "c4", "sac": True},
    "fpn-afp": {"neck": "fpn", "roi_pooling": "afp"},
    "fpn-soft": {"neck": "fpn", "roi_pooling": "soft"},
    "fpn-sac-deform": {"neck": "fpn", "sac": True, "sac_deform": True},
    "augfpn-parts-off": {"neck": "augfpn", "augfpn_rfa": False, "augfpn_consistent_supervision": False},
    "rfp-sac": {"neck": "rfp", "sac": True},
}


@pytest.mark.parametrize(
    "variant, preset",
    # default: frozen BatchNorm, the first stages frozen
    [(v, "tiny") for v in VARIANTS] + [("c4", "default"), ("rfp-sac", "default")],
)
def test_every_trainable_parameter_gets_a_gradient(variant, preset, one_thread):
    from fpncli.config import preset_config
    from fpncli.modeling.detector import build_model

    overrides = dict(VARIANTS[variant], nasfpn_stacks=1) if variant == "nasfpn" else VARIANTS[variant]
    cfg = preset_config(
        preset,
        backbone="resnet18",
        min_size=64,
        max_size=96,
        fpn_channels=16,
        box_head_dim=32,
        class_names=["a", "b"],
        category_ids=[1, 2],
        **overrides,
    )
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=False).train()
    for boxes in ([[5.0, 5.0, 40.0, 40.0]], []):  # an image with an object, one without
        model.zero_grad(set_to_none=True)
        targets = [
            {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.ones(len(boxes), dtype=torch.int64)}
        ]
        sum(model([torch.rand(3, 64, 80)], targets).values()).backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f"{variant}: trainable but unused (DDP fails): {unused[:5]}"


# Each process runs `python -m fpncli ARGS` for each command line in turn, then records the
# exit codes and the threads left (gloo's must end with the run: see D.cleanup).
CLI_SCRIPT = textwrap.dedent("""
    import json, os, runpy, sys
    commands, out = json.loads(sys.argv[1]), sys.argv[2]
    rank = int(os.environ["RANK"])
    codes, threads = [], []
    for n, args in enumerate(commands):
        if "RANK1_DATA" in args:  # this rank alone is given data that does not exist
            i = args.index("RANK1_DATA")
            args = args[:i] + args[i + 2:] if rank == 0 else args[:i] + ["--data", args[i + 1]] + args[i + 2:]
        sys.argv = ["fpncli", *args]
        try:
            runpy.run_module("fpncli", run_name="__main__", alter_sys=True)
            codes.append(0)
        except SystemExit as exc:
            codes.append(exc.code if isinstance(exc.code, int) else 1)
        threads.append(sorted(open(f"/proc/self/task/{t}/comm").read().strip()
                              for t in os.listdir("/proc/self/task")))
        with open(out % rank, "w") as f:
            json.dump({"codes": codes, "threads": threads}, f)
""")

FAMILIES = {  # neck family -> training options (tiny preset, small images)
    "single-scale": ["--neck", "c4"],
    "pyramid+afp": ["--neck", "panet", "--roi-pooling", "afp"],
    "augfpn": ["--neck", "augfpn"],
    "rfp+sac": ["--neck", "rfp", "--sac"],
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """One torchrun launch (2 gloo processes) running `fpn train` for each neck family, then
    two failing runs: every rank given missing data, and rank 1 alone."""
    root = tmp_path_factory.mktemp("ddp_cli")
    synthesize(root / "data", train=4, val=0, seed=0)
    common = ["--preset", "tiny", "--iters", "2", "--batch-size", "1", "--workers", "0", "--eval-every", "-1"]
    common += ["--min-size", "64", "--max-size", "96", "--fpn-channels", "16", "--device", "cpu"]
    data = ["--data", str(root / "data")]
    commands = [
        ["train", *data, *common, *opts, "--out", str(root / f"run-{name}")]
        for name, opts in FAMILIES.items()
    ]
    commands.append(["train", "--data", str(root / "missing"), *common, "--out", str(root / "run-missing")])
    commands.append(
        ["train", *data, "RANK1_DATA", str(root / "missing"), *common, "--out", str(root / "run-r1")]
    )
    script = root / "run_commands.py"
    script.write_text(CLI_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(
        [*cmd, json.dumps(commands), str(root / "out-%s.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    outs = [json.loads((root / f"out-{r}.json").read_text()) for r in (0, 1)]
    return root, proc, outs


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_neck_family_trains_under_torchrun(cli_runs, family):
    root, proc, outs = cli_runs
    n = list(FAMILIES).index(family)
    assert [o["codes"][n] for o in outs] == [0, 0], proc.stderr[-3000:]
    assert read_checkpoint(root / f"run-{family}" / "last.pt")["train_state"]["iteration"] == 2


@pytest.mark.slow
def test_the_process_group_ends_with_the_run(cli_runs):
    """No gloo thread outlives `fpn train`, failed or not: freed at interpreter exit instead,
    they abort the process ("terminate called without an active exception")."""
    _, proc, outs = cli_runs
    for out in outs:
        assert len(out["threads"]) == len(FAMILIES) + 2, proc.stderr[-3000:]
        for threads in out["threads"]:
            assert not [t for t in threads if "gloo" in t], threads
    assert "terminate called" not in proc.stderr


@pytest.mark.slow
def test_a_training_error_is_printed_once_naming_its_rank(cli_runs):
    root, proc, outs = cli_runs
    n = len(FAMILIES)
    assert [o["codes"][n] for o in outs] == [1, 1] and [o["codes"][n + 1] for o in outs] == [1, 1]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    missing = str(root / "missing")
    everyone = [line for line in errors if missing in line and "ranks 0, 1" in line]
    rank1 = [line for line in errors if missing in line and line.startswith("error (rank 1):")]
    assert len(everyone) == 1 and len(rank1) == 1 and len(errors) == 2, proc.stderr[-3000:]
