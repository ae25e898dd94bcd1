"""Continuing a training run exactly: what ``last.pt`` records besides the weights (optimizer,
scheduler, grad scaler, iteration, RNG states), and restoring it with the run's saved config."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpncli.atomic import atomic_write
from fpncli.checkpoint import read_checkpoint
from fpncli.errors import FpnError, first_line
from fpncli.runtime import distributed as D
from fpncli.runtime.events import ProgressFn
from fpncli.training.config import TrainConfig, read_run_config


def resumed_config(cfg: TrainConfig, run: Path) -> tuple[TrainConfig, dict[str, Any] | None]:
    """With ``cfg.resume``: the run's saved config (``iters``/``epochs``/``workers`` of ``cfg``
    may change) and its ``last.pt``; otherwise ``cfg`` and None."""
    resume_state = None
    if cfg.resume:
        if not (run / "last.pt").is_file():
            raise FpnError(f"{run}: nothing to resume (no last.pt)")
        saved = read_run_config(run)
        saved.resume = True
        # A resumed run may be made longer and log elsewhere too; everything else comes from
        # the run folder.
        if cfg.iters is not None or cfg.epochs is not None:
            saved.iters, saved.epochs = cfg.iters, cfg.epochs
        if cfg.loggers is not None:
            saved.loggers = cfg.loggers
        if cfg.workers != saved.workers:
            saved.workers = cfg.workers
        cfg = saved
        resume_state = read_checkpoint(run / "last.pt")
    return cfg, resume_state


def rng_state() -> dict[str, Any]:
    """This process's RNG states in a ``torch.load(weights_only=True)``-safe form."""
    np_state: Any = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def saved_train_state(
    iteration: int,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    best_value: float | None,
    per_epoch: int,
    info: D.DistInfo,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """The ``train_state`` of ``last.pt``: everything but the weights (every rank's RNG)."""
    rng = rng_state()
    rngs = D.gather_tensors(rng["torch"], info)
    states = [dict(rng, torch=t) for t in rngs]
    return {
        "iteration": iteration,
        "epoch": iteration // per_epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": states,
        "best_metric": cfg.best_metric,
        "best_value": best_value,
        "world_size": info.world_size,
        "train_config": json.dumps(cfg.to_dict()),
    }


def restore_train_state(
    resume_state: dict[str, Any],
    run: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    info: D.DistInfo,
    total: int,
    emit: ProgressFn,
) -> tuple[int, float | None]:
    """Load ``last.pt``'s training state into the optimizer, scheduler, scaler and RNGs;
    returns the iteration to continue from and the best value so far of the run's best
    metric (see :func:`best_so_far`)."""
    ts = resume_state.get("train_state")
    if not ts:
        raise FpnError(f"{run / 'last.pt'}: has no training state to resume from")
    try:
        optimizer.load_state_dict(ts["optimizer"])
    except ValueError as exc:  # e.g. a c4 run of a version that still trained the unused conv5
        raise FpnError(
            f"{run / 'last.pt'}: its optimizer state does not fit this model's trainable "
            f"parameters ({first_line(exc)}); it was saved by another fpncli version: start "
            "a new run from it with --weights"
        ) from None
    scheduler.load_state_dict(ts["scheduler"])
    # The schedule's length may have changed (extended run): the lambda reads `total`.
    if ts.get("scaler"):
        scaler.load_state_dict(ts["scaler"])
    start_iter = int(ts["iteration"])
    # Runs written before --best-metric saved "best_ap" (by AP, the only choice then).
    best_value = ts.get("best_value", ts.get("best_ap"))
    if ts.get("world_size", 1) != info.world_size:
        emit(
            {
                "event": "warning",
                "message": f"resuming a {ts.get('world_size')}-process run with "
                f"{info.world_size} process(es): data order and lr differ from the original run",
            }
        )
    rngs = ts["rng"]
    set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0])
    if start_iter >= total:
        raise FpnError(
            f"{run}: already trained {start_iter} of {total} iterations; "
            f"pass a larger --iters/--epochs to continue"
        )
    return start_iter, best_value


def best_so_far(run: Path, metric: str, recorded: float | None) -> tuple[float | None, int | None]:
    """The best ``metric`` value of the run and its iteration, read from ``RUN/best.pt`` (what
    is on disk wins: a run killed between writing best.pt and last.pt must not let a worse
    model replace it); ``recorded`` (last.pt's) when best.pt is absent or says nothing of
    ``metric``. ``(None, None)``: no evaluation yet."""
    path = run / "best.pt"
    if path.is_file():
        try:
            ts = read_checkpoint(path).get("train_state") or {}
        except FpnError:
            ts = {}
        val = ts.get("val") or {}
        value = ts.get("best_value") if ts.get("best_metric") == metric else val.get(metric)
        if isinstance(value, (int, float)):
            return float(value), ts.get("iteration")
    return recorded, None


def trim_metrics(path: Path, start_iter: int) -> None:
    """On resume, forget records logged after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("iter", 0) <= start_iter:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write(path, lambda f: f.write("".join(line + "\n" for line in keep)))
