"""``--logger wandb``: a Weights & Biases run in ``RUN/wandb/``, offline unless ``WANDB_MODE``
says otherwise (``wandb sync RUN/wandb/offline-run-*`` uploads it later)."""

from __future__ import annotations

import os
import uuid

from fpncli.training.loggers.base import (
    ExperimentLogger,
    final_checkpoints,
    read_state,
    run_config,
    write_state,
)
from fpncli.training.loggers.extras import require

PROJECT = "fpncli"  # unless WANDB_PROJECT is set


class WandbLogger(ExperimentLogger):
    """The scalars against ``iter`` (W&B's own step must only grow, and a resumed run redoes
    the iterations after its checkpoint, so the x axis is a logged ``iter``), the run's
    config as the W&B config, and at the end of a finished run ``last.pt`` (and ``best.pt``)
    as a ``model`` artifact. The run id is kept in ``RUN/loggers.json``: a resumed training
    continues the same W&B run."""

    name = "wandb"

    def start(self, start_iter: int, resumed: bool) -> None:
        wandb = require("wandb")
        stored = read_state(self.run, "wandb") if resumed else None
        run_id = str(stored["id"]) if stored and stored.get("id") else uuid.uuid4().hex[:8]
        mode = os.environ.get("WANDB_MODE") or "offline"
        # Quiet, and no capture of the console: the training display owns the terminal.
        settings = wandb.Settings(silent=True, console="off", save_code=False)
        self.wb = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            name=self.run.name,
            id=run_id,
            resume="allow",
            dir=str(self.run),
            mode=mode,
            config=run_config(self.run),
            settings=settings,
        )
        self.wb.define_metric("iter")
        self.wb.define_metric("*", step_metric="iter")
        write_state(self.run, "wandb", {"id": run_id, "mode": mode, "dir": str(self.run / "wandb")})

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.wb.log({"iter": step, **scalars})

    def finish(self, status: str) -> None:
        import wandb

        if status == "finished":
            checkpoints = final_checkpoints(self.run)
            if checkpoints:
                artifact = wandb.Artifact(f"model-{self.wb.id}", type="model")
                for path in checkpoints:
                    artifact.add_file(str(path), name=path.name)
                self.wb.log_artifact(artifact)
        self.wb.finish(exit_code=0 if status != "failed" else 1)
