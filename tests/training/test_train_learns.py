"""Training from scratch learns: the loss falls and AP rises above what random weights reach."""

from __future__ import annotations

import json

import pytest
import torch

from fpncli.data.synth import synthesize
from fpncli.training.config import TrainConfig
from fpncli.training.train import train


@pytest.mark.slow
def test_short_training_run_learns(tmp_path, one_thread):
    from fpncli.evaluation.evaluate import evaluate_model

    synthesize(tmp_path / "data", train=12, val=0, seed=4)
    ann = tmp_path / "data" / "annotations" / "instances_train.json"
    images = tmp_path / "data" / "train"
    # Learn the (small) training set itself: the quickest honest signal that gradients,
    # targets, labels and the schedule fit together.
    cfg = TrainConfig(
        data=str(tmp_path / "data"),
        preset="tiny",
        out=str(tmp_path / "run"),
        iters=60,
        batch_size=4,
        workers=0,
        eval_every=-1,
        log_every=1,
        seed=0,
        lr=2e-3,
        model={"min_size": 160, "max_size": 200, "fpn_channels": 32, "box_head_dim": 128},
    )
    summary = train(cfg)
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    # One thread (the fixture): the same float sums, so the same run, alone or under xdist.
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    trained = evaluate_model(summary["model"], ann, images, batch_size=4)

    torch.manual_seed(0)
    from fpncli.modeling.detector import build_model

    random_model = build_model(summary["model"].config)
    untrained = evaluate_model(random_model, ann, images, batch_size=4)
    assert untrained["AP50"] < 0.05
    assert trained["AP50"] > 0.2 and trained["AP50"] > untrained["AP50"] + 0.15
