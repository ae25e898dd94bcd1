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

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from fpncli.engine.train import train
    from fpncli.engine.train_config import TrainConfig
    root, out, dump = sys.argv[1:4]
    small = {"min_size": 64, "max_size": 96, "fpn_channels": 16, "box_head_dim": 32,
             "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 32}
    summary = train(TrainConfig(data=root, preset="tiny", out=out, iters=3, batch_size=1, workers=0,
                                eval_every=-1, model=small, device="cpu", log_every=1))
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
