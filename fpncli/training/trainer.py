"""The training loop and its hooks, in the spirit of Detectron2's ``TrainerBase``.

:class:`Trainer` runs one optimisation step at a time (:meth:`Trainer.run_step`); everything
around the step (logging, evaluation, ``best.pt``, ``last.pt``) is a :class:`HookBase`
called after each step, so a new loss (the model returns it in its loss dict and it is
logged like the others) or a new evaluation (another hook) does not touch the loop.

Collective operations (DDP all-reduce, barriers) happen in the same order on every rank:
the step, the stop flag, then each hook in order.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fpncli.checkpoint import save_checkpoint
from fpncli.errors import FpnError
from fpncli.runtime import distributed as D
from fpncli.runtime.events import ProgressFn
from fpncli.training.config import COCO_METRICS

# torchvision's four Faster R-CNN losses, logged first and in this order; any other loss a
# model returns (e.g. an auxiliary head's) is logged after them under its own name.
LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
VAL_KEYS = COCO_METRICS


class TrainingDiverged(FpnError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class StepResult:
    """What one optimisation step produced (the same on every rank).

    Attributes:
        losses: ``name -> value`` averaged over ranks, ``"loss"`` (the sum) first.
        grad_norm: total gradient norm before clipping (only when clipping).
        step_time, data_time, cpu_time: seconds of the step, of waiting for the batch, and of
            this process's CPU time for both.
        images: images in this rank's batch.
    """

    losses: dict[str, float]
    grad_norm: float | None
    step_time: float
    data_time: float
    cpu_time: float
    images: int


class HookBase:
    """Called by :class:`Trainer`; ``self.trainer`` is set before :meth:`before_train`.

    Per iteration, every hook's :meth:`after_step` runs first (what only reads the step:
    logging), then the stop flag is settled (``trainer.should_stop``), then every hook's
    :meth:`after_iteration` (what acts on the run: evaluation, checkpoints).
    """

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_step(self, step: StepResult) -> None:
        pass

    def after_iteration(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def after_failure(self) -> None:
        """Called instead of :meth:`after_train` when the loop raised (a NaN loss, an error,
        a second Ctrl-C): release files and connections; must not raise."""


class Trainer:
    """Runs ``total`` optimisation steps from ``start_iter``, calling ``hooks`` after each.

    Args:
        model: the detector (unwrapped); ``ddp_model`` is what the step calls (the same
            module, or its ``DistributedDataParallel`` wrapper).
        data: yields ``(images, targets, unreadable)`` batches: ``[Tensor[3, H, W] uint8]``,
            ``[{"boxes": Tensor[N, 4] xyxy pixels, "labels": Int64Tensor[N]}]`` and the
            reasons of the batch's images that could not be read (given to ``on_unreadable``).
        stop_requested: read after each step (on every rank); True ends the run cleanly.
        best_value: the best validation value so far of ``best_metric`` (a resumed run's).
        nothing_read: when a whole epoch (or the whole run) passes before any rank has read
            one image, ``raise nothing_read(batches)``: nothing can be trained.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        ddp_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        data: Any,
        info: D.DistInfo,
        start_iter: int,
        total: int,
        per_epoch: int,
        run: Path,
        emit: ProgressFn,
        hooks: Sequence[HookBase] = (),
        amp_dtype: torch.dtype | None = None,
        clip_grad: float | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
        best_value: float | None = None,
        on_unreadable: Callable[[list[str]], None] = lambda reasons: None,
        nothing_read: Callable[[int], FpnError] | None = None,
    ) -> None:
        self.model, self.ddp_model = model, ddp_model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.data, self.info = data, info
        self.start_iter, self.iteration, self.total, self.per_epoch = start_iter, start_iter, total, per_epoch
        self.run, self.emit = run, emit
        self.amp_dtype, self.clip_grad = amp_dtype, clip_grad
        self.stop_requested = stop_requested
        self.best_value = best_value
        self.on_unreadable = on_unreadable
        self.nothing_read = nothing_read
        self.images_trained = 0  # on this rank
        self.empty_streak = 0  # batches in a row without a readable image (on every rank)
        self.last_metrics: dict[str, Any] | None = None  # the latest evaluation's metrics
        self.metrics_iter: int | None = None  # the iteration they were computed at
        self.train_record: dict[str, Any] | None = None  # the latest metrics.jsonl train record
        self.record_iter: int | None = None  # its iteration
        self.should_stop = False
        self.interrupted = False
        self.images_seen = 0
        self.hooks = list(hooks)
        for hook in self.hooks:
            hook.trainer = self

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def epoch_end(self) -> bool:
        return self.iteration % self.per_epoch == 0

    def train(self) -> None:
        data_iter: Any = None
        finished = False
        try:
            for hook in self.hooks:
                hook.before_train()
            data_iter = iter(self.data)
            t_data, cpu_data = time.perf_counter(), time.process_time()
            while self.iteration < self.total:
                step = self.run_step(data_iter, t_data, cpu_data)
                if step is not None:  # a batch without a readable image is logged by nobody
                    for hook in self.hooks:
                        hook.after_step(step)
                self.should_stop = D.any_rank(self.stop_requested(), self.info)
                for hook in self.hooks:
                    hook.after_iteration()
                if self.should_stop:
                    self.interrupted = True
                    break
                t_data, cpu_data = time.perf_counter(), time.process_time()
            finished = True
        finally:
            del data_iter
            # The DDP wrapper holds the process group; hooks (the caller's too) keep this
            # trainer, so let go of it here for the group to end with the run (D.cleanup).
            self.ddp_model = self.model
            if not finished:
                for hook in self.hooks:
                    hook.after_failure()
        for hook in self.hooks:
            hook.after_train()

    def run_step(self, data_iter: Any, t_data: float, cpu_data: float) -> StepResult | None:
        """One optimisation step on the next batch; None when no rank had a readable image."""
        images, targets, unreadable = next(data_iter)
        self.on_unreadable(unreadable)
        data_time = time.perf_counter() - t_data
        if D.any_rank(not images, self.info):
            self.emit(
                {
                    "event": "warning",
                    "message": f"iteration {self.iteration}: no readable image in the batch, skipped",
                }
            )
            self.iteration += 1
            self.empty_streak += 1
            self.scheduler.step()
            nothing_trained = not D.any_rank(self.images_trained > 0, self.info)
            limit = min(self.per_epoch, self.total - self.start_iter)
            if nothing_trained and self.empty_streak >= limit and self.nothing_read is not None:
                raise self.nothing_read(self.empty_streak)
            return None
        self.empty_streak = 0
        self.images_trained += len(images)
        t0 = time.perf_counter()
        device = self.device
        images = [im.to(device, non_blocking=True).float().div_(255) for im in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            loss_dict = self.ddp_model(images, targets)
        names = [k for k in LOSS_KEYS if k in loss_dict] + [k for k in loss_dict if k not in LOSS_KEYS]
        loss: Tensor = loss_dict[names[0]]
        for k in names[1:]:
            loss = loss + loss_dict[k]
        logged = torch.stack([loss.detach().float()] + [loss_dict[k].detach().float() for k in names])
        values = D.all_reduce_mean(logged, self.info).cpu().tolist()
        losses = dict(zip(("loss", *names), values))
        if not all(math.isfinite(v) for v in values):
            parts = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
            last = self.run / "last.pt"
            raise TrainingDiverged(
                f"loss is not finite at iteration {self.iteration + 1} ({parts}); stopped. "
                f"The last good checkpoint is {last}"
                + ("" if last.exists() else " (none written yet)")
                + "; try a lower --lr, a longer warm-up or --clip-grad"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_time = time.perf_counter() - t0
        self.images_seen += len(images) * self.info.world_size
        return StepResult(
            losses, grad_norm, step_time, data_time, time.process_time() - cpu_data, len(images)
        )


# --------------------------------------------------------------------------- hooks


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class IterationLogger(HookBase):
    """Appends a ``{"type": "train", ...}`` record to ``metrics.jsonl`` every ``log_every``
    iterations (and at the first and last) and emits it as an ``iter`` event; other
    iterations emit a ``tick``. Rank 0 only."""

    def __init__(self, metrics_path: Path, log_every: int, batch_size: int, progress: bool) -> None:
        self.metrics_path, self.log_every, self.batch_size = metrics_path, log_every, batch_size
        self.progress = progress
        self.window: list[float] = []

    def after_step(self, step: StepResult) -> None:
        t = self.trainer
        self.window.append(step.step_time + step.data_time)
        if not t.info.is_main:
            return
        it = t.iteration
        if it % self.log_every == 0 or it == t.total or it == t.start_iter + 1:
            avg = sum(self.window) / len(self.window)
            record = {
                "type": "train",
                "iter": it,
                "epoch": it / t.per_epoch,
                "lr": t.optimizer.param_groups[0]["lr"],
                **{k: round(v, 6) for k, v in step.losses.items()},
                "grad_norm": step.grad_norm,
                "time_per_iter": avg,
                "iter_time": step.step_time + step.data_time,
                # this process's CPU time for the iteration: a figure that other jobs on a
                # shared machine disturb far less than wall-clock time
                "iter_cpu_time": step.cpu_time,
                "data_time": step.data_time,
                "images_per_s": self.batch_size * t.info.world_size / avg,
                "memory_mb": round(_memory_mb(t.device), 1),
            }
            append_jsonl(self.metrics_path, record)
            t.train_record, t.record_iter = record, it
            t.emit({"event": "iter", **record, "total_iterations": t.total, "eta_s": avg * (t.total - it)})
            self.window = self.window[-50:]
        elif self.progress:
            t.emit({"event": "tick", "iter": it, "total_iterations": t.total})


class PeriodicEvaluation(HookBase):
    """Evaluates at the last iteration and every ``eval_every`` epochs (0 = only at the end),
    unless the run is stopping. ``evaluate(model)`` runs on every rank and returns the
    metrics on rank 0 (None elsewhere); they are logged as a ``{"type": "val"}`` record and
    kept in ``trainer.last_metrics``."""

    def __init__(
        self, evaluate: Callable[[nn.Module], dict[str, Any] | None], metrics_path: Path, eval_every: int
    ) -> None:
        self.evaluate, self.metrics_path, self.eval_every = evaluate, metrics_path, eval_every

    def due(self) -> bool:
        t = self.trainer
        if self.eval_every < 0:
            return False
        if t.iteration == t.total:
            return True
        return self.eval_every > 0 and t.epoch_end and (t.iteration // t.per_epoch) % self.eval_every == 0

    def after_iteration(self) -> None:
        t = self.trainer
        if not self.due() or t.should_stop:
            return
        if t.info.is_main:
            t.emit({"event": "eval_start", "iter": t.iteration})
        # Inference must not consume the training RNG, or a resumed run would diverge.
        devices = [t.device] if t.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            metrics = self.evaluate(t.model)
        t.model.train()
        if metrics is not None:
            record = {
                "type": "val",
                "iter": t.iteration,
                "epoch": t.iteration / t.per_epoch,
                **{k: metrics[k] for k in VAL_KEYS if k in metrics},
            }
            append_jsonl(self.metrics_path, record)
            t.emit({"event": "eval", **record})
            t.last_metrics, t.metrics_iter = metrics, t.iteration


class BestCheckpointer(HookBase):
    """Saves ``best.pt`` (atomically) whenever a new evaluation beats the best value of
    ``metric`` so far (``trainer.best_value``; higher is better, as for every COCO number).
    Its ``train_state`` records ``iteration``, ``best_metric``, ``best_value`` and all of
    that evaluation's metrics (``val``)."""

    def __init__(self, path: Path, metric: str = "AP") -> None:
        self.path, self.metric = path, metric

    def after_iteration(self) -> None:
        t = self.trainer
        metrics = t.last_metrics
        if metrics is None or t.metrics_iter != t.iteration or self.metric not in metrics:
            return
        value = float(metrics[self.metric])
        if not math.isfinite(value):
            return
        if t.best_value is None or value > t.best_value:
            previous, t.best_value = t.best_value, value
            if t.info.is_main:
                state = {
                    "iteration": t.iteration,
                    "best_metric": self.metric,
                    "best_value": value,
                    "val": json_safe(metrics),
                }
                save_checkpoint(self.path, t.model, train_state=state)
                t.emit(
                    {
                        "event": "checkpoint",
                        "path": str(self.path),
                        "iteration": t.iteration,
                        "best_metric": self.metric,
                        "best_value": value,
                        "previous_best": previous,
                    }
                )


class LastCheckpointer(HookBase):
    """Saves ``last.pt`` with the whole training state at each epoch's end, every
    ``save_every`` iterations, at the last iteration and when the run is stopped.
    ``train_state(iteration)`` is collective (every rank takes part)."""

    def __init__(
        self, path: Path, save_every: int | None, train_state: Callable[[int], dict[str, Any]]
    ) -> None:
        self.path, self.save_every, self.train_state = path, save_every, train_state

    def after_iteration(self) -> None:
        t = self.trainer
        it = t.iteration
        if t.should_stop or it == t.total or t.epoch_end or (self.save_every and it % self.save_every == 0):
            state = self.train_state(it)
            if t.info.is_main:
                save_checkpoint(self.path, t.model, train_state=state)
                t.emit({"event": "checkpoint", "path": str(self.path), "iteration": it})


def json_safe(obj: Any) -> Any:
    """Numbers, strings, lists and dicts only (for weights_only checkpoints and JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return json_safe(obj.item())
    return str(obj)
