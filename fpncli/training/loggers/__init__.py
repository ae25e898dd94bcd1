"""Experiment loggers of ``fpn train --logger``: trainer hooks beside ``metrics.jsonl``.

Each is a :class:`~fpncli.training.loggers.base.ExperimentLogger` (rank 0 only) that logs
the same scalars under the same names (:func:`~fpncli.training.loggers.base.train_scalars`,
``val/<metric>``):

- ``tensorboard``: event files in ``RUN/tensorboard/`` (``torch.utils.tensorboard``), with a
  few validation images and their detections at each evaluation;
- ``mlflow``: a run in ``RUN/mlruns/`` (or ``MLFLOW_TRACKING_URI``), with the config as
  parameters and the final checkpoints as artifacts;
- ``wandb``: an offline run in ``RUN/wandb/`` (unless ``WANDB_MODE`` says otherwise), with
  the config and the final checkpoints as an artifact;
- ``csv``: ``RUN/metrics.csv``, one row per logged iteration, fixed columns.

The third-party packages are optional extras, imported only when their logger is asked for.
A resumed run continues the same logs: ``RUN/loggers.json`` keeps the MLflow and W&B run ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fpncli.errors import FpnError
from fpncli.runtime.events import ProgressFn
from fpncli.training.config import LOGGERS, TrainConfig
from fpncli.training.loggers.extras import EXTRAS, require
from fpncli.training.trainer import HookBase


def check_loggers(names: Iterable[str]) -> None:
    """Import every logger's package now, so that a missing one fails before any work."""
    for name in names:
        if name in EXTRAS:
            require(name)


def parse_loggers(values: Iterable[str]) -> list[str]:
    """``["tensorboard,csv", "mlflow"]`` -> ``["tensorboard", "csv", "mlflow"]`` (repeatable,
    comma-separated, case-insensitive, each once); an unknown name is an :class:`FpnError`."""
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in LOGGERS:
                raise FpnError(f"unknown --logger {part.strip()!r}; choose from {', '.join(LOGGERS)}")
            if name not in names:
                names.append(name)
    return names


def logger_hooks(cfg: TrainConfig, run: Path, is_main: bool, emit: ProgressFn) -> list[HookBase]:
    """One hook per logger of ``cfg.loggers`` (none on ranks other than 0)."""
    if not is_main:
        return []
    hooks: list[HookBase] = []
    for name in cfg.loggers or []:
        if name == "tensorboard":
            from fpncli.training.loggers.tensorboard_hook import TensorBoardLogger

            hooks.append(TensorBoardLogger(run, cfg, emit))
        elif name == "mlflow":
            from fpncli.training.loggers.mlflow_hook import MlflowLogger

            hooks.append(MlflowLogger(run, cfg, emit))
        elif name == "wandb":
            from fpncli.training.loggers.wandb_hook import WandbLogger

            hooks.append(WandbLogger(run, cfg, emit))
        elif name == "csv":
            from fpncli.training.loggers.csv_hook import CsvLogger

            hooks.append(CsvLogger(run, cfg, emit))
    return hooks
