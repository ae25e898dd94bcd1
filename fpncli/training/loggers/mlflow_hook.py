"""``--logger mlflow``: an MLflow run, by default in a local store ``RUN/mlruns/`` (offline;
``MLFLOW_TRACKING_URI`` points elsewhere, e.g. a tracking server or ``sqlite:///mlflow.db``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fpncli.training.loggers.base import (
    ExperimentLogger,
    final_checkpoints,
    read_state,
    run_config,
    write_state,
)
from fpncli.training.loggers.extras import require

STORE = "mlruns"
EXPERIMENT = "fpncli"  # unless MLFLOW_EXPERIMENT_NAME is set
_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def tracking_uri(run: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the file store ``RUN/mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (run / STORE).resolve().as_uri()


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": "0.001"}`` (MLflow parameters are flat
    strings; values cut at 500 characters, the limit of older MLflow servers)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = str(value)[:500]
    return out


class MlflowLogger(ExperimentLogger):
    """The scalars at their iteration (MLflow's ``step``), the run's config as parameters and
    ``config.json`` as an artifact; at the end of a finished run ``last.pt`` (and ``best.pt``)
    under the artifact path ``checkpoints/``. The run id is kept in ``RUN/loggers.json``: a
    resumed training logs to the same MLflow run."""

    name = "mlflow"

    def start(self, start_iter: int, resumed: bool) -> None:
        require("mlflow")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        uri = tracking_uri(self.run)
        if "MLFLOW_TRACKING_URI" not in os.environ:
            # MLflow 3 keeps the file store in "maintenance mode" and refuses it unless asked;
            # it is the one store that needs no server nor database: fpn asks for it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        stored = read_state(self.run, "mlflow") if resumed else None
        if stored and stored.get("tracking_uri") == uri and stored.get("run_id"):
            self.run_id = str(stored["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        )
        created = self.client.create_run(
            experiment_id, run_name=self.run.name, tags={"mlflow.source.name": "fpn train"}
        )
        self.run_id = created.info.run_id
        params = [Param(k, v) for k, v in flat_params(run_config(self.run)).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        if (self.run / "config.json").is_file():
            self.client.log_artifact(self.run_id, str(self.run / "config.json"))
        write_state(
            self.run,
            "mlflow",
            {"run_id": self.run_id, "experiment_id": experiment_id, "tracking_uri": uri},
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str) -> None:
        if status == "finished":
            for path in final_checkpoints(self.run):
                self.client.log_artifact(self.run_id, str(path), artifact_path="checkpoints")
        self.client.set_terminated(self.run_id, status=_STATUS[status])
