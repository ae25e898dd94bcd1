"""What every experiment logger shares: when it logs, under which names, and its run ids."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from fpncli.atomic import write_json
from fpncli.errors import FpnError, first_line
from fpncli.runtime.events import ProgressFn
from fpncli.training.config import COCO_METRICS, TrainConfig
from fpncli.training.trainer import HookBase

STATE_FILE = "loggers.json"  # in the run folder: {"mlflow": {"run_id": ...}, "wandb": {"id": ...}}

# metrics.jsonl train-record keys -> logged names (the losses are added as train/<name>).
_TRAIN_NAMES = {
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "epoch": "train/epoch",
    "iter_time": "time/iter_time",
    "time_per_iter": "time/time_per_iter",
    "data_time": "time/data_time",
    "iter_cpu_time": "time/iter_cpu_time",
    "images_per_s": "time/images_per_s",
}


def train_scalars(record: dict[str, Any], device_type: str) -> dict[str, float]:
    """A ``metrics.jsonl`` train record as logged scalars: ``train/loss`` and every
    ``train/loss_*`` term, ``train/lr``, ``train/grad_norm`` (when clipping), ``time/*``
    seconds and images/s, and the memory: ``memory/cuda_max_allocated_mb`` on a GPU,
    ``memory/peak_rss_mb`` (the process's peak resident set) on the CPU."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        if key == "loss" or key.startswith("loss_"):
            out[f"train/{key}"] = float(value)
        elif key in _TRAIN_NAMES:
            out[_TRAIN_NAMES[key]] = float(value)
        elif key == "memory_mb":
            name = "cuda_max_allocated_mb" if device_type == "cuda" else "peak_rss_mb"
            out[f"memory/{name}"] = float(value)
    return out


def val_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The 12 COCO numbers of an evaluation as ``val/AP``, ``val/AP50``, ... ``val/ARl``."""
    return {
        f"val/{k}": float(metrics[k])
        for k in COCO_METRICS
        if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])
    }


def read_state(run: Path, logger: str) -> dict[str, Any] | None:
    """What ``logger`` stored in ``RUN/loggers.json`` (its run id), or None."""
    try:
        state = json.loads((run / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    entry = state.get(logger) if isinstance(state, dict) else None
    return entry if isinstance(entry, dict) else None


def write_state(run: Path, logger: str, entry: dict[str, Any]) -> None:
    """Store ``entry`` for ``logger`` in ``RUN/loggers.json`` (atomically, keeping the others')."""
    try:
        state = json.loads((run / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            state = {}
    except (OSError, json.JSONDecodeError):
        state = {}
    state[logger] = entry
    write_json(run / STATE_FILE, state)


def run_config(run: Path) -> dict[str, Any]:
    """The run's ``config.json`` (written before the loop starts), or ``{}``."""
    try:
        data = json.loads((run / "config.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def final_checkpoints(run: Path) -> list[Path]:
    """The checkpoints a finished run hands to MLflow and W&B: last.pt, and best.pt if any."""
    return [p for p in (run / "last.pt", run / "best.pt") if p.is_file()]


class ExperimentLogger(HookBase):
    """A trainer hook (rank 0 only: :func:`~fpncli.training.loggers.logger_hooks` builds it
    there alone) that logs each ``metrics.jsonl`` train record and each evaluation.

    Subclasses implement :meth:`start` (open, or reopen on resume), :meth:`log` and
    :meth:`finish`, and may implement :meth:`evaluated`. A logger that fails during the run
    says so once and stops logging: a log must never cost the training.
    """

    name = "logger"

    def __init__(self, run: Path, cfg: TrainConfig, emit: ProgressFn) -> None:
        self.run, self.cfg, self.emit = run, cfg, emit
        self.active = False

    # ---------------------------------------------------------------- to implement
    def start(self, start_iter: int, resumed: bool) -> None:
        raise NotImplementedError

    def log(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def evaluated(self, step: int) -> None:
        """After an evaluation was logged (e.g. draw validation images)."""

    def finish(self, status: str) -> None:
        """``status``: ``"finished"``, ``"interrupted"`` (Ctrl-C; resumable) or ``"failed"``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the hook
    def before_train(self) -> None:
        t = self.trainer
        try:
            self.start(t.start_iter, resumed=self.cfg.resume)
        except FpnError:
            raise
        except Exception as exc:  # e.g. an unreachable tracking server
            raise FpnError(f"--logger {self.name}: cannot start ({first_line(exc)})") from None
        self.active = True

    def after_iteration(self) -> None:
        t = self.trainer
        if not self.active:
            return
        try:
            if t.train_record is not None and t.record_iter == t.iteration:
                self.log(train_scalars(t.train_record, t.device.type), t.iteration)
            if t.last_metrics is not None and t.metrics_iter == t.iteration:
                scalars = val_scalars(t.last_metrics)
                if t.best_value is not None:
                    scalars[f"val/best_{self.cfg.best_metric}"] = float(t.best_value)
                self.log(scalars, t.iteration)
                self.evaluated(t.iteration)
        except Exception as exc:
            self._failed(exc)

    def after_train(self) -> None:
        if self.active:
            try:
                self.finish("interrupted" if self.trainer.interrupted else "finished")
            except Exception as exc:
                self._failed(exc)
            self.active = False

    def after_failure(self) -> None:
        if self.active:
            self.active = False
            with contextlib.suppress(Exception):  # the run's own error is what the user must see
                self.finish("failed")

    def _failed(self, exc: Exception) -> None:
        self.active = False
        self.emit(
            {
                "event": "warning",
                "message": f"--logger {self.name} stopped logging ({first_line(exc)}); training goes on",
            }
        )
        with contextlib.suppress(Exception):
            self.finish("failed")
