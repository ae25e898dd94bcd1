"""The training engine behind `fpn train`: plain Python, progress through a callback.

    from fpncli.training.train import train
    from fpncli.training.config import TrainConfig
    summary = train(TrainConfig(data="data/shapes", preset="tiny", out="runs/shapes", iters=300))

The run folder (``cfg.out``) gets ``config.json`` (the resolved TrainConfig, the model
config, versions, world size), ``skipped_images.txt`` (every training image left out:
missing, unreadable or unfit for the model's sizes, one per line), ``metrics.jsonl`` (one
JSON object per logged iteration and per evaluation), ``last.pt`` and ``best.pt`` (by the
validation metric ``cfg.best_metric``; fpncli checkpoints, loadable with ``--weights``),
``curves.png``, and what the experiment loggers of ``cfg.loggers`` write
(:mod:`fpncli.training.loggers`). ``TrainConfig(out=RUN, resume=True)`` continues a run
exactly: model, optimizer, scheduler, grad scaler, iteration, RNG states and data order.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from fpncli.checkpoint import unwrap
from fpncli.data.dataset import DetectionDataset, collate
from fpncli.data.sampler import GroupedBatches
from fpncli.errors import FpnError
from fpncli.modeling.detector import FPNFasterRCNN
from fpncli.runtime import distributed as D
from fpncli.runtime.events import ProgressFn
from fpncli.runtime.interrupts import workers_ignore_sigterm
from fpncli.training.config import TrainConfig, filled
from fpncli.training.loggers import check_loggers, logger_hooks
from fpncli.training.model_setup import build_training_model
from fpncli.training.resume import best_so_far, restore_train_state, resumed_config, saved_train_state
from fpncli.training.run_folder import (
    SKIPPED_FILE,
    UnreadableImages,
    check_run_outputs,
    run_record,
    start_run_folder,
)
from fpncli.training.trainer import (
    BestCheckpointer,
    HookBase,
    IterationLogger,
    LastCheckpointer,
    PeriodicEvaluation,
    Trainer,
    json_safe,
)

# ----------------------------------------------------------------------------- helpers


def lr_factor(
    iteration: int, total: int, warmup_iters: int, warmup_factor: float, steps: list[float], gamma: float
) -> float:
    """Multiplier of the base lr at ``iteration`` (0-based): linear warm-up from
    ``warmup_factor`` over ``warmup_iters``, then ``gamma`` after each fraction in ``steps``."""
    factor = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    for step in steps:
        if iteration >= int(step * total):
            factor *= gamma
    return factor


class _StopFlag:
    """First Ctrl-C asks the loop to stop at the end of the iteration (then it saves);
    a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


class _Batches:
    """Endless batch sampler for the DataLoader, starting at a global iteration."""

    def __init__(self, plan: GroupedBatches, start: int) -> None:
        self.plan, self.start = plan, start

    def __iter__(self):
        for _epoch, _i, batch in self.plan.iterate(self.start):
            yield batch


# ----------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig, progress: ProgressFn | None = None, hooks: Sequence[HookBase] = ()
) -> dict[str, Any]:
    """Train a detector as ``cfg`` says; returns a summary.

    Args:
        cfg: the run (see :class:`TrainConfig`); with ``cfg.resume`` the run in ``cfg.out``
            continues from its ``last.pt`` with its saved config (``iters``/``epochs`` of
            ``cfg`` may extend it).
        progress: called with event dicts: ``{"event": "start"|"iter"|"eval"|"warning"|
            "checkpoint"|"end", ...}`` (only on rank 0).
        hooks: extra :class:`~fpncli.training.trainer.HookBase` objects, called after the
            built-in ones (logging, evaluation, ``best.pt``, ``last.pt``) at every step.

    Returns:
        ``{"run", "iterations", "total_iterations", "epochs", "interrupted", "best_metric",
        "best_value", "final_metrics", "last", "best", "seconds", "images_per_s", "model"}``; ``model`` is
        the trained (unwrapped) model, the rest is JSON-safe.

    Raises:
        TrainingDiverged: a NaN/inf loss (the message names the iteration).
        FpnError: bad data, configuration or weights.
    """
    info = D.setup(cfg.device)
    try:
        return _train(cfg, info, progress, hooks)
    except BaseException as exc:
        # The traceback's frames hold the DDP wrapper, and it the process group: let go of
        # them, so that the group really ends in cleanup (see D.cleanup).
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        D.cleanup(info)


def _train(
    cfg: TrainConfig, info: D.DistInfo, progress: ProgressFn | None, hooks: Sequence[HookBase]
) -> dict[str, Any]:
    emit = progress if (progress is not None and info.is_main) else (lambda event: None)
    run = Path(cfg.out)
    cfg, resume_state = resumed_config(cfg, run)
    cfg = cfg.resolved()
    check_loggers(cfg.loggers or [])  # a missing extra is one line before any work
    device = info.device
    if info.is_main:
        check_run_outputs(cfg, run)
    train_set = _datasets(cfg, emit)
    model, source = _model(cfg, info, train_set, run if resume_state is not None else None, emit)

    batch_size = filled(cfg.batch_size)
    plan = GroupedBatches(
        train_set.aspect_groups(),
        batch_size,
        seed=cfg.seed,
        flip=cfg.flip,
        rank=info.rank,
        world_size=info.world_size,
    )
    per_epoch = len(plan)
    total = cfg.iters if cfg.iters is not None else filled(cfg.epochs) * per_epoch
    lr = filled(cfg.lr) * info.world_size  # linear scaling with the effective batch
    opt = _optimisation(cfg, model, device, lr, total, emit)
    start_iter, best_value, best_iter = 0, None, None
    if resume_state is not None:
        start_iter, best_value = restore_train_state(
            resume_state, run, opt.optimizer, opt.scheduler, opt.scaler, info, total, emit
        )
        best_value, best_iter = best_so_far(run, cfg.best_metric, best_value)
    model, ddp_model = _distributed(model, info)

    metrics_path = run / "metrics.jsonl"
    if info.is_main:
        record = run_record(cfg, model, source, info, batch_size, lr, total, per_epoch, len(train_set))
        start_run_folder(cfg, run, record, metrics_path, start_iter, train_set)
    D.barrier(info)

    loader = DataLoader(
        train_set,
        batch_sampler=_Batches(plan, start_iter),
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator(),
        prefetch_factor=4 if cfg.workers > 0 else None,
        worker_init_fn=workers_ignore_sigterm,
    )
    unreadable = UnreadableImages(run / SKIPPED_FILE, info.is_main, emit)
    emit(
        {
            "event": "start",
            "run": str(run),
            "start_iteration": start_iter,
            "total_iterations": total,
            "iterations_per_epoch": per_epoch,
            "train_images": len(train_set),
            "device": str(device),
            "world_size": info.world_size,
            "effective_batch": batch_size * info.world_size,
            "lr": lr,
            "optimizer": cfg.optimizer,
            "weights": source,
            "amp": str(opt.amp_dtype).replace("torch.", "") if opt.amp_dtype else None,
            "best_metric": cfg.best_metric,
            "best_value": best_value,  # a resumed run's best so far
            "best_iteration": best_iter,
            "loggers": cfg.loggers or [],
        }
    )

    def train_state(iteration: int) -> dict[str, Any]:
        return saved_train_state(
            iteration,
            optimizer=opt.optimizer,
            scheduler=opt.scheduler,
            scaler=opt.scaler,
            best_value=trainer.best_value,
            per_epoch=per_epoch,
            info=info,
            cfg=cfg,
        )

    stop = _StopFlag()
    trainer = Trainer(
        model=model,
        ddp_model=ddp_model,
        optimizer=opt.optimizer,
        scheduler=opt.scheduler,
        scaler=opt.scaler,
        data=loader,
        info=info,
        start_iter=start_iter,
        total=total,
        per_epoch=per_epoch,
        run=run,
        emit=emit,
        hooks=[
            *_default_hooks(cfg, info, run, metrics_path, batch_size, progress, emit, train_state),
            *hooks,
        ],
        amp_dtype=opt.amp_dtype,
        clip_grad=cfg.clip_grad,
        stop_requested=lambda: stop.requested,
        best_value=best_value,
        on_unreadable=unreadable,
        # A whole epoch (or the whole run) without one readable image: nothing to train,
        # and no checkpoint is written.
        nothing_read=lambda batches: FpnError(
            f"{cfg.train_ann}: no training image could be read in {batches} "
            f"batch(es) ({len(unreadable.seen)} unreadable, e.g. {min(unreadable.seen, default='?')}); "
            f"nothing trained, no checkpoint written (list in {run / SKIPPED_FILE})"
        ),
    )
    t_start = time.perf_counter()
    with stop.installed():
        trainer.train()
    D.broadcast_buffers(model, info)
    seconds = time.perf_counter() - t_start
    summary = _summary(trainer, run, total, per_epoch, seconds, train_set, unreadable)
    summary["best_metric"] = cfg.best_metric
    if info.is_main:
        try:
            from fpncli.viz.curves import plot_training_curves

            summary["curves"] = str(plot_training_curves(metrics_path, run / "curves.png"))
        except Exception as exc:  # a plot must never cost the trained model
            emit({"event": "warning", "message": f"training curves not drawn ({exc})"})
    emit({"event": "end", **summary})
    summary["model"] = model
    return summary


# ----------------------------------------------------------------------------- the steps


def _datasets(cfg: TrainConfig, emit: ProgressFn) -> DetectionDataset:
    """The training set (its skipped images reported); the validation set is only checked."""
    train_set = DetectionDataset(
        filled(cfg.train_ann), filled(cfg.train_images), drop_negatives=cfg.drop_negatives
    )
    if len(train_set) == 0:
        skipped = train_set.report.skipped_images()
        example = f" ({len(skipped)} skipped, e.g. {skipped[0]})" if skipped else ""
        raise FpnError(f"{cfg.train_ann}: no usable training images in {cfg.train_images}{example}")
    for line in train_set.report.warnings():
        emit({"event": "warning", "message": f"{cfg.train_ann}: {line}"})
    if cfg.val_ann:
        DetectionDataset(cfg.val_ann, filled(cfg.val_images), categories=train_set.categories)  # fail early
    return train_set


def _model(
    cfg: TrainConfig, info: D.DistInfo, train_set: DetectionDataset, resume_run: Path | None, emit: ProgressFn
) -> tuple[FPNFasterRCNN, str]:
    """The model on the device in training mode, and where its weights came from (``resume_run``:
    its last.pt). Training images it cannot take at its sizes are dropped from ``train_set``."""
    device = info.device
    # Identical initial weights on every rank (DDP also broadcasts them).
    torch.manual_seed(cfg.seed)
    if resume_run is not None:
        from fpncli.modeling.weights import load_detector

        model = load_detector(str(resume_run / "last.pt"), training=True).model
        source = f"resumed from {resume_run / 'last.pt'}"
    else:
        model, source = build_training_model(cfg, train_set.categories)
    model.to(device).train()
    # Images the model cannot take at its training sizes (e.g. 3000x1 px) are left out, reported.
    unfit = train_set.drop_unfit(
        list(cfg.train_sizes) if cfg.train_sizes else [model.min_size], model.max_size
    )
    if unfit:
        emit(
            {
                "event": "warning",
                "message": f"{cfg.train_ann}: {len(unfit)} image(s) skipped, e.g. {unfit[0]}",
            }
        )
    if len(train_set) == 0:
        raise FpnError(
            f"{cfg.train_ann}: no usable training images in {cfg.train_images} "
            f"({len(train_set.report.skipped_images())} skipped, e.g. {train_set.report.skipped_images()[0]})"
        )
    if cfg.train_sizes:
        # torchvision's transform draws the shorter side from this tuple for each batch in
        # training mode (torch RNG, so it is seeded and resumable); the saved config keeps
        # min_size for inference.
        model.set_train_sizes(tuple(cfg.train_sizes))
    if cfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    # Each rank draws different RPN/RoI samples.
    torch.manual_seed(cfg.seed + info.rank)
    return model, source


@dataclass
class _Optimisation:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None


def _optimisation(
    cfg: TrainConfig, model: torch.nn.Module, device: torch.device, lr: float, total: int, emit: ProgressFn
) -> _Optimisation:
    """Optimizer, lr schedule (warm-up, then steps) and mixed precision, as ``cfg`` says."""
    optimizer = _make_optimizer(cfg, model, lr)
    warmup = min(filled(cfg.warmup_iters), max(total // 5, 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: lr_factor(it, total, warmup, cfg.warmup_factor, filled(cfg.lr_steps), cfg.lr_gamma),
    )
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        want_bf16 = cfg.amp_dtype == "bf16" or (cfg.amp_dtype == "auto" and torch.cuda.is_bf16_supported())
        amp_dtype = torch.bfloat16 if want_bf16 else torch.float16
    elif cfg.amp:
        emit({"event": "warning", "message": "--amp needs a CUDA device; training in float32"})
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return _Optimisation(optimizer, scheduler, scaler, amp_dtype)


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=filled(cfg.weight_decay))
    return torch.optim.AdamW(params, lr=lr, weight_decay=filled(cfg.weight_decay))


def _distributed(model: FPNFasterRCNN, info: D.DistInfo) -> tuple[FPNFasterRCNN, torch.nn.Module]:
    """The model (its BatchNorm synchronised where it trains) and what the loop calls: under
    torchrun its DistributedDataParallel wrapper, else the model itself."""
    device = info.device
    ddp_model: torch.nn.Module = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if device.type == "cuda" and model.norm == "bn":
            # From scratch, BatchNorm trains; a few images per GPU give poor statistics, so
            # they are computed over the whole effective batch (names and state_dict unchanged).
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, ddp_model


def _default_hooks(
    cfg: TrainConfig,
    info: D.DistInfo,
    run: Path,
    metrics_path: Path,
    batch_size: int,
    progress: ProgressFn | None,
    emit: ProgressFn,
    train_state: Callable[[int], dict[str, Any]],
) -> list[HookBase]:
    """Logging, evaluation with best.pt, last.pt and the experiment loggers, in the order
    they must run."""
    # Order matters: evaluation runs before best.pt is compared and before last.pt records
    # the best value; the experiment loggers read what the others left on the trainer and
    # log the final last.pt; extra hooks (new evaluations, new logs) run after the built-in ones.
    default_hooks: list[HookBase] = [
        IterationLogger(metrics_path, cfg.log_every, batch_size, progress is not None)
    ]
    if cfg.val_ann:
        default_hooks += [
            PeriodicEvaluation(lambda m: _validate(m, cfg, info, emit), metrics_path, cfg.eval_every),
            BestCheckpointer(run / "best.pt", cfg.best_metric),
        ]
    default_hooks.append(LastCheckpointer(run / "last.pt", cfg.save_every, train_state))
    default_hooks += logger_hooks(cfg, run, info.is_main, emit)
    return default_hooks


def _summary(
    trainer: Trainer,
    run: Path,
    total: int,
    per_epoch: int,
    seconds: float,
    train_set: DetectionDataset,
    unreadable: UnreadableImages,
) -> dict[str, Any]:
    """What :func:`train` returns, JSON-safe (the model is added after)."""
    best_value, last_metrics = trainer.best_value, trainer.last_metrics
    return {
        "run": str(run),
        "iterations": trainer.iteration,
        "total_iterations": total,
        "epochs": trainer.iteration / per_epoch,
        "interrupted": trainer.interrupted,
        "best_value": best_value,
        "final_metrics": json_safe(last_metrics) if last_metrics else None,
        "last": str(run / "last.pt") if (run / "last.pt").is_file() else None,
        "skipped_images": len(train_set.report.skipped_images()) + len(unreadable.seen),
        "best": str(run / "best.pt") if (run / "best.pt").is_file() else None,
        "seconds": seconds,
        "images_per_s": trainer.images_seen / seconds if seconds > 0 else None,
    }


def _validate(
    model: torch.nn.Module, cfg: TrainConfig, info: D.DistInfo, emit: ProgressFn
) -> dict[str, Any] | None:
    """COCO evaluation on rank 0 (the others wait); returns the metrics there, None elsewhere
    (and None when it fails: a warning, never the end of the run)."""
    metrics = None
    if info.is_main:
        from fpncli.evaluation.evaluate import evaluate_model

        try:
            metrics = evaluate_model(
                unwrap(model),
                filled(cfg.val_ann),
                filled(cfg.val_images),
                device=info.device,
                batch_size=cfg.eval_batch_size,
                workers=min(cfg.workers, 2),
            )
            assert metrics is not None  # not sharded: every process gets the metrics
        except FpnError as exc:  # e.g. no readable validation image: must not cost the epoch
            emit({"event": "warning", "message": f"validation failed: {exc}"})
            metrics = None
    D.barrier(info)
    return metrics
