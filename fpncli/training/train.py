"""The training engine behind `fpn train`: plain Python, progress through a callback.

    from fpncli.training.train import train
    from fpncli.training.config import TrainConfig
    summary = train(TrainConfig(data="data/shapes", preset="tiny", out="runs/shapes", iters=300))

The run folder (``cfg.out``) gets ``config.json`` (the resolved TrainConfig, the model
config, versions, world size), ``skipped_images.txt`` (every training image left out:
missing, unreadable or unfit for the model's sizes, one per line), ``metrics.jsonl`` (one
JSON object per logged iteration and per evaluation), ``last.pt`` and ``best.pt`` (by validation AP; fpncli checkpoints, loadable
with ``--weights``) and ``curves.png``. ``TrainConfig(out=RUN, resume=True)`` continues a run
exactly: model, optimizer, scheduler, grad scaler, iteration, RNG states and data order.
"""

from __future__ import annotations

import json
import platform
import random
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from fpncli.atomic import atomic_write, write_json, write_text
from fpncli.checkpoint import read_checkpoint, unwrap
from fpncli.config import preset_config
from fpncli.data.dataset import DetectionDataset, collate
from fpncli.data.sampler import GroupedBatches
from fpncli.errors import FpnError, first_line
from fpncli.modeling.detector import FPNFasterRCNN
from fpncli.modeling.necks.registry import neck_options
from fpncli.modeling.options import owned_elsewhere
from fpncli.outputs import check_outputs
from fpncli.runtime import distributed as D
from fpncli.runtime.events import ProgressFn
from fpncli.training.config import TrainConfig, read_run_config
from fpncli.training.trainer import (
    BestCheckpointer,
    HookBase,
    IterationLogger,
    LastCheckpointer,
    PeriodicEvaluation,
    Trainer,
    json_safe,
)

SKIPPED_FILE = "skipped_images.txt"  # in the run folder: every training image left out, one per line
MAX_WARNED = 10  # unreadable training images named on the console; the file lists all


T = TypeVar("T")

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


def _set(value: T | None) -> T:
    """A :class:`TrainConfig` field that :meth:`TrainConfig.resolved` has filled in."""
    if value is None:
        raise RuntimeError("the training configuration was used before TrainConfig.resolved()")
    return value


def _rng_state() -> dict[str, Any]:
    """This process's RNG states in a ``torch.load(weights_only=True)``-safe form."""
    np_state: Any = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


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


# ----------------------------------------------------------------------------- model


def _build_model(cfg: TrainConfig, categories: Any) -> tuple[FPNFasterRCNN, str]:
    """A detector for the dataset's classes, from the configured weights."""
    from fpncli.modeling.detector import build_model
    from fpncli.modeling.weights import load_detector

    names, ids = list(categories.names), list(categories.category_ids)
    overrides = cfg.model_overrides()
    if cfg.weights == "none":
        config = preset_config(cfg.preset, class_names=names, category_ids=ids, **overrides)
        loaded = load_detector(
            "none", config=config, backbone_weights=_set(cfg.backbone_weights), training=True
        )
        return loaded.model, loaded.source
    loaded = load_detector(cfg.weights, training=True)
    model = loaded.model
    if (
        list(model.config.category_ids) == ids
        and list(model.config.class_names) == names
        and not any(v is not None for v in overrides.values())
    ):
        return model, loaded.source
    config = _switch_neck(model.config, overrides).replace(class_names=names, category_ids=ids, **overrides)
    given = {k: v for k, v in overrides.items() if v is not None}
    foreign = owned_elsewhere(given, neck_options(), config.neck)  # e.g. --rfp-steps on an fpn run
    if foreign is not None:
        raise FpnError(foreign)
    config = config.replace(roi_pooling=config.resolved_roi_pooling())  # compared with the file's below
    new = build_model(config, pretrained_backbone=model.norm == "frozen_bn")
    if _other_architecture(model.config, config):
        # Another neck or RoI pooling (an FPN run into nasfpn / afp): take what fits, say what is new.
        from fpncli.modeling.weights import describe_transfer, transfer_state

        report = transfer_state(new, model.state_dict())
        return new, f"{loaded.source}: {describe_transfer(report, new)}"
    # Fine-tuning on other classes: same architecture, new box predictor.
    new.load_all_but_box_predictor(model)
    return new, f"{loaded.source}, new box predictor for {len(names)} classes"


def _switch_neck(old: Any, overrides: dict[str, Any]) -> Any:
    """``old`` (a ModelConfig) ready for another ``--neck`` (``overrides["neck"]``): options
    of the old neck go back to their defaults, and an RoI pooling that was the old neck's
    own default becomes the new neck's (an FPN run into augfpn gets soft RoI selection; an
    explicit ``afp`` is kept). Unchanged when the neck stays."""
    from fpncli.config import ModelConfig
    from fpncli.modeling.necks.registry import get_neck

    neck = overrides.get("neck")
    if neck is None or neck == old.neck:
        return old
    defaults = ModelConfig()
    reset = {k: getattr(defaults, k) for k in get_neck(old.neck).option_fields if overrides.get(k) is None}
    if overrides.get("roi_pooling") is None and old.roi_pooling == get_neck(old.neck).roi_pooling:
        reset["roi_pooling"] = "auto"
    return old.replace(**reset)


def _other_architecture(old, new) -> bool:
    """Whether ``new`` (a ModelConfig) changes the neck, the RoI pooling or SAC of ``old``."""
    from fpncli.modeling.necks.registry import get_neck

    options = set(get_neck(old.neck).option_fields) | set(get_neck(new.neck).option_fields)
    fields = ("neck", "roi_pooling", "sac", "sac_deform", "sac_stages", *sorted(options))
    return any(getattr(old, f) != getattr(new, f) for f in fields)


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=_set(cfg.weight_decay))
    return torch.optim.AdamW(params, lr=lr, weight_decay=_set(cfg.weight_decay))


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
        ``{"run", "iterations", "total_iterations", "epochs", "interrupted", "best_ap",
        "final_metrics", "last", "best", "seconds", "images_per_s", "model"}``; ``model`` is
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
    resume_state = None
    if cfg.resume:
        if not (run / "last.pt").is_file():
            raise FpnError(f"{run}: nothing to resume (no last.pt)")
        saved = read_run_config(run)
        saved.resume = True
        # A resumed run may be made longer; everything else comes from the run folder.
        if cfg.iters is not None or cfg.epochs is not None:
            saved.iters, saved.epochs = cfg.iters, cfg.epochs
        if cfg.workers != saved.workers:
            saved.workers = cfg.workers
        cfg = saved
        resume_state = read_checkpoint(run / "last.pt")
    cfg = cfg.resolved()
    device = info.device
    if info.is_main:
        weights = getattr(cfg, "weights", None)
        check_outputs(
            folders=[run],
            files=[
                run / n
                for n in ("config.json", "last.pt", "best.pt", "metrics.jsonl", "curves.png", SKIPPED_FILE)
            ],
            inputs=[
                cfg.train_ann,
                cfg.val_ann,
                weights if weights not in (None, "coco", "none") and not cfg.resume else None,
            ],
        )

    train_set = DetectionDataset(
        _set(cfg.train_ann), _set(cfg.train_images), drop_negatives=cfg.drop_negatives
    )
    if len(train_set) == 0:
        skipped = train_set.report.skipped_images()
        example = f" ({len(skipped)} skipped, e.g. {skipped[0]})" if skipped else ""
        raise FpnError(f"{cfg.train_ann}: no usable training images in {cfg.train_images}{example}")
    for line in train_set.report.warnings():
        emit({"event": "warning", "message": f"{cfg.train_ann}: {line}"})
    if cfg.val_ann:
        DetectionDataset(cfg.val_ann, _set(cfg.val_images), categories=train_set.categories)  # fail early

    # Identical initial weights on every rank (DDP also broadcasts them).
    torch.manual_seed(cfg.seed)
    if resume_state is not None:
        from fpncli.modeling.weights import load_detector

        model = load_detector(str(run / "last.pt"), training=True).model
        source = f"resumed from {run / 'last.pt'}"
    else:
        model, source = _build_model(cfg, train_set.categories)
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

    batch_size = _set(cfg.batch_size)
    plan = GroupedBatches(
        train_set.aspect_groups(),
        batch_size,
        seed=cfg.seed,
        flip=cfg.flip,
        rank=info.rank,
        world_size=info.world_size,
    )
    per_epoch = len(plan)
    total = cfg.iters if cfg.iters is not None else _set(cfg.epochs) * per_epoch
    lr = _set(cfg.lr) * info.world_size  # linear scaling with the effective batch
    optimizer = _make_optimizer(cfg, model, lr)
    warmup = min(_set(cfg.warmup_iters), max(total // 5, 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: lr_factor(it, total, warmup, cfg.warmup_factor, _set(cfg.lr_steps), cfg.lr_gamma),
    )
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        want_bf16 = cfg.amp_dtype == "bf16" or (cfg.amp_dtype == "auto" and torch.cuda.is_bf16_supported())
        amp_dtype = torch.bfloat16 if want_bf16 else torch.float16
    elif cfg.amp:
        emit({"event": "warning", "message": "--amp needs a CUDA device; training in float32"})
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_iter, best_ap = 0, None
    if resume_state is not None:
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
        start_iter, best_ap = int(ts["iteration"]), ts.get("best_ap")
        if ts.get("world_size", 1) != info.world_size:
            emit(
                {
                    "event": "warning",
                    "message": f"resuming a {ts.get('world_size')}-process run with "
                    f"{info.world_size} process(es): data order and lr differ from the original run",
                }
            )
        rngs = ts["rng"]
        _set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0])
        if start_iter >= total:
            raise FpnError(
                f"{run}: already trained {start_iter} of {total} iterations; "
                f"pass a larger --iters/--epochs to continue"
            )

    ddp_model: torch.nn.Module = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if device.type == "cuda" and model.norm == "bn":
            # From scratch, BatchNorm trains; a few images per GPU give poor statistics, so
            # they are computed over the whole effective batch (names and state_dict unchanged).
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    config_record = {
        "train": cfg.to_dict(),
        "model": model.config.to_dict(),
        "weights_source": source,
        "world_size": info.world_size,
        "effective_batch": batch_size * info.world_size,
        "effective_lr": lr,
        "iterations": total,
        "iterations_per_epoch": per_epoch,
        "train_images": len(train_set),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": __import__("torchvision").__version__,
            "fpncli": __import__("fpncli").__version__,
        },
    }
    metrics_path = run / "metrics.jsonl"
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and (run / "last.pt").exists():
            raise FpnError(f"{run}: already holds a run (last.pt); use --resume {run} or another --out")
        write_json(run / "config.json", config_record)
        _trim_metrics(metrics_path, start_iter)
        # Every image left out, one per line, so nothing vanishes silently (appended below
        # as unreadable ones turn up).
        write_text(run / SKIPPED_FILE, "".join(line + "\n" for line in train_set.report.skipped_images()))
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
    )

    def train_state(iteration: int) -> dict[str, Any]:
        rng = _rng_state()
        rngs = D.gather_tensors(rng["torch"], info)
        states = [dict(rng, torch=t) for t in rngs]
        return {
            "iteration": iteration,
            "epoch": iteration // per_epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": states,
            "best_ap": trainer.best_ap,
            "world_size": info.world_size,
            "train_config": json.dumps(cfg.to_dict()),
        }

    unreadable: set[str] = set()

    def note_unreadable(reasons: list[str]) -> None:
        new = [r for r in reasons if r not in unreadable]
        if not new:
            return
        unreadable.update(new)
        if info.is_main:
            with open(run / SKIPPED_FILE, "a", encoding="utf-8") as f:
                f.writelines(r + "\n" for r in new)
        shown = len(unreadable) - len(new)  # warned about so far
        for reason in new[: max(0, MAX_WARNED - shown)]:
            emit({"event": "warning", "message": f"unreadable training image skipped: {reason}"})
        if shown <= MAX_WARNED < len(unreadable):
            emit(
                {
                    "event": "warning",
                    "message": f"more unreadable training images: all in {run / SKIPPED_FILE}",
                }
            )

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
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        }
    )

    # Order matters: evaluation runs before best.pt is compared and before last.pt records
    # best_ap; extra hooks (new evaluations, new logs) run after the built-in ones.
    default_hooks: list[HookBase] = [
        IterationLogger(metrics_path, cfg.log_every, batch_size, progress is not None)
    ]
    if cfg.val_ann:
        default_hooks += [
            PeriodicEvaluation(lambda m: _validate(m, cfg, info, emit), metrics_path, cfg.eval_every),
            BestCheckpointer(run / "best.pt"),
        ]
    default_hooks.append(LastCheckpointer(run / "last.pt", cfg.save_every, train_state))
    stop = _StopFlag()
    trainer = Trainer(
        model=model,
        ddp_model=ddp_model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        data=loader,
        info=info,
        start_iter=start_iter,
        total=total,
        per_epoch=per_epoch,
        run=run,
        emit=emit,
        hooks=[*default_hooks, *hooks],
        amp_dtype=amp_dtype,
        clip_grad=cfg.clip_grad,
        stop_requested=lambda: stop.requested,
        best_ap=best_ap,
        on_unreadable=note_unreadable,
        # A whole epoch (or the whole run) without one readable image: nothing to train,
        # and no checkpoint is written.
        nothing_read=lambda batches: FpnError(
            f"{cfg.train_ann}: no training image could be read in {batches} "
            f"batch(es) ({len(unreadable)} unreadable, e.g. {min(unreadable, default='?')}); "
            f"nothing trained, no checkpoint written (list in {run / SKIPPED_FILE})"
        ),
    )
    t_start = time.perf_counter()
    with stop.installed():
        trainer.train()
    D.broadcast_buffers(model, info)
    seconds = time.perf_counter() - t_start
    best_ap, last_metrics = trainer.best_ap, trainer.last_metrics
    summary = {
        "run": str(run),
        "iterations": trainer.iteration,
        "total_iterations": total,
        "epochs": trainer.iteration / per_epoch,
        "interrupted": trainer.interrupted,
        "best_ap": best_ap,
        "final_metrics": json_safe(last_metrics) if last_metrics else None,
        "last": str(run / "last.pt") if (run / "last.pt").is_file() else None,
        "skipped_images": len(train_set.report.skipped_images()) + len(unreadable),
        "best": str(run / "best.pt") if best_ap is not None else None,
        "seconds": seconds,
        "images_per_s": trainer.images_seen / seconds if seconds > 0 else None,
    }
    if info.is_main:
        try:
            from fpncli.viz.curves import plot_training_curves

            summary["curves"] = str(plot_training_curves(metrics_path, run / "curves.png"))
        except Exception as exc:  # a plot must never cost the trained model
            emit({"event": "warning", "message": f"training curves not drawn ({exc})"})
    emit({"event": "end", **summary})
    summary["model"] = model
    return summary


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
                _set(cfg.val_ann),
                _set(cfg.val_images),
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


def _trim_metrics(path: Path, start_iter: int) -> None:
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
