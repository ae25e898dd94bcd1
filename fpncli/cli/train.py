"""`fpn train`: train a detector on COCO-format data (one process, or many under torchrun)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape as esc

from fpncli.cli.common import (
    DeviceOption,
    MaxSizeOption,
    MinSizeOption,
    console,
    err_console,
    handle_errors,
)
from fpncli.cli.params import ModelArgs, model_options
from fpncli.errors import FpnError

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import TaskID

HELP = (
    "Train an FPN Faster R-CNN on COCO-format data: the paper's recipe by default, resumable, "
    "multi-GPU with torchrun."
)
EPILOG = (
    "Examples:\n\n"
    "  fpn data synth data/shapes && fpn train --data data/shapes --preset tiny --out runs/shapes\n\n"
    "  fpn train --data /data/coco --out runs/r50 --epochs 12        # the paper's recipe, ImageNet backbone\n\n"
    "  fpn train --data /data/coco --out runs/pan --neck panet --roi-pooling afp   # the full PANet\n\n"
    "  fpn train --data /data/coco --out runs/aug --neck augfpn      # AugFPN: RFA, soft RoI selection, consistent supervision\n\n"
    "  fpn train --data /data/coco --out runs/drs --neck rfp --sac   # DetectoRS (RFP + SAC)\n\n"
    "  fpn train --resume runs/r50                                    # continue exactly where it stopped\n\n"
    "  torchrun --nproc_per_node=8 -m fpncli train --data /data/coco --out runs/r50 --amp\n\n"
    "  fpn train --data /data/coco --out runs/r50 --logger tensorboard,csv --eval-every 1   # then: tensorboard --logdir runs/r50\n\n"
    "The run folder gets config.json, metrics.jsonl, last.pt, best.pt (by --best-metric) and curves.png "
    "(redraw it, or compare runs, with fpn plot)."
)


def _sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated sizes like 224,256,288, got {text!r}") from None


# What may change when a run is resumed: its length and how fast it loads data. Anything
# else would silently not apply (the run's config.json is reused), so it is refused.
RESUME_OPTIONS = ("resume", "iters", "epochs", "workers", "logger")


@handle_errors
@model_options
def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(help="COCO-layout root: annotations/instances_train*.json, train*/ (and the val pair)."),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Run folder (config.json, metrics.jsonl, last.pt, best.pt, curves.png)."
        ),
    ] = Path("runs/train"),
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this folder from its last.pt (its config is reused)."),
    ] = None,
    train_ann: Annotated[
        Path | None, typer.Option(help="Training annotation file (instead of --data).")
    ] = None,
    train_images: Annotated[
        Path | None, typer.Option(help="Training images folder (with --train-ann).")
    ] = None,
    val_ann: Annotated[Path | None, typer.Option(help="Validation annotation file.")] = None,
    val_images: Annotated[
        Path | None, typer.Option(help="Validation images folder (with --val-ann).")
    ] = None,
    preset: Annotated[
        str,
        typer.Option(
            help="Model + recipe: default (the paper: R50-FPN, SGD) or tiny (CPU, from scratch, AdamW)."
        ),
    ] = "default",
    model: ModelArgs | None = None,
    weights: Annotated[
        str, typer.Option(help="Start from: none, coco, or an fpncli checkpoint / torchvision state dict.")
    ] = "none",
    backbone_weights: Annotated[
        str | None, typer.Option(help="imagenet, none or a ResNet state dict (default: the recipe's).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Training length in epochs (default: the recipe's).")
    ] = None,
    iters: Annotated[
        int | None, typer.Option(help="Training length in iterations (wins over --epochs).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per batch per process (default: 2, tiny: 4).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate for --batch-size on one process (default: 0.02 per 16 images; scaled by the number of processes)."
        ),
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adamw (default: the recipe's).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay (default 1e-4).")] = None,
    warmup_iters: Annotated[int | None, typer.Option(help="Linear warm-up iterations.")] = None,
    clip_grad: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).")] = 10.0,
    min_size: MinSizeOption = None,
    max_size: MaxSizeOption = None,
    train_sizes: Annotated[
        str | None,
        typer.Option(help="Multi-scale training: shorter sides to draw from, e.g. 640,672,704,736,768,800."),
    ] = None,
    no_flip: Annotated[
        bool, typer.Option("--no-flip", help="Turn off horizontal-flip augmentation.")
    ] = False,
    drop_negatives: Annotated[bool, typer.Option(help="Leave out images without annotations.")] = False,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 2,
    device: DeviceOption = "auto",
    amp: Annotated[
        bool, typer.Option(help="Mixed precision on CUDA (bf16 where supported, else fp16 + grad scaler).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for weights, data order, flips and sampling.")] = 0,
    eval_every: Annotated[
        int, typer.Option(help="Validate every N epochs (0: only at the end, -1: never).")
    ] = 1,
    log_every: Annotated[int, typer.Option(help="Log to metrics.jsonl every N iterations.")] = 20,
    save_every: Annotated[
        int, typer.Option(help="Write last.pt every N iterations (0: each epoch end).")
    ] = 0,
    best_metric: Annotated[
        str,
        typer.Option(
            help="Validation metric that chooses best.pt (higher is better): AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm or ARl."
        ),
    ] = "AP",
    logger: Annotated[
        list[str] | None,
        typer.Option(
            help="Experiment loggers besides metrics.jsonl, comma-separated or repeated: tensorboard, mlflow, "
            "wandb (offline unless WANDB_MODE says otherwise), csv. Each but csv is a pip extra, e.g. "
            "pip install 'fpncli[tensorboard]'. With --resume: the run's own loggers unless given."
        ),
    ] = None,
) -> None:
    import os

    from fpncli.training.config import TrainConfig, metric_name
    from fpncli.training.loggers import parse_loggers
    from fpncli.training.train import train as run_training

    loggers = parse_loggers(logger) if logger else None

    assert model is not None  # model_options passes it
    given = dict(model.given)
    backbone, neck = given.pop("backbone", None), given.pop("neck", None)
    overrides: dict[str, Any] = {
        k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None
    }
    overrides.update(given)
    if resume is not None:
        _refuse_on_resume(ctx, resume)
        _say_resume_changes(ctx, resume)
        cfg = TrainConfig(
            out=str(resume), resume=True, iters=iters, epochs=epochs, workers=workers, loggers=loggers
        )
    else:
        cfg = TrainConfig(
            out=str(out),
            data=str(data) if data else None,
            train_ann=str(train_ann) if train_ann else None,
            train_images=str(train_images) if train_images else None,
            val_ann=str(val_ann) if val_ann else None,
            val_images=str(val_images) if val_images else None,
            preset=preset,
            backbone=backbone,
            neck=neck,
            model=overrides,
            weights=weights,
            backbone_weights=backbone_weights,
            epochs=epochs,
            iters=iters,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            warmup_iters=warmup_iters,
            clip_grad=clip_grad or None,
            train_sizes=_sizes(train_sizes),
            flip=not no_flip,
            drop_negatives=drop_negatives,
            workers=workers,
            device=device,
            amp=amp,
            seed=seed,
            eval_every=eval_every,
            log_every=log_every,
            save_every=save_every,
            best_metric=metric_name(best_metric),
            loggers=loggers,
        )
    is_main = int(os.environ.get("RANK", "0")) == 0
    display = TrainDisplay() if is_main else None
    try:
        summary = run_training(cfg, progress=display)
    finally:
        if display is not None:
            display.close()
    if not is_main:
        return
    run = summary["run"]
    if summary["interrupted"]:
        err_console.print(
            f"interrupted at iteration {summary['iterations']}/{summary['total_iterations']}; "
            + (
                f"saved {esc(str(summary['last']))}. Continue with: fpn train --resume {esc(str(run))}"
                if summary["last"]
                else "no checkpoint written yet"
            ),
            style="yellow",
            highlight=False,
        )
        raise typer.Exit(130)
    console.print(
        f"trained {summary['iterations']} iterations ({summary['epochs']:.2f} epochs) in "
        f"{summary['seconds']:.0f} s, {summary['images_per_s']:.1f} images/s",
        highlight=False,
    )
    if summary["final_metrics"]:
        m = summary["final_metrics"]
        console.print(
            f"val: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  APs {m['APs']:.3f}  APm {m['APm']:.3f}  "
            f"APl {m['APl']:.3f}"
            + (
                f"   best {summary['best_metric']} {summary['best_value']:.3f}"
                if summary.get("best_value") is not None
                else ""
            ),
            highlight=False,
        )
    if summary.get("skipped_images"):
        err_console.print(
            f"[yellow]warning:[/] {summary['skipped_images']} training image(s) skipped; "
            f"listed in {esc(str(Path(run) / 'skipped_images.txt'))}",
            highlight=False,
        )
    console.print(
        f"run folder: [bold]{esc(str(run))}[/]  ({'last.pt, ' if summary['last'] else ''}{'best.pt, ' if summary['best'] else ''}"
        f"metrics.jsonl, config.json{', curves.png' if summary.get('curves') else ''})",
        highlight=False,
    )
    _say_logs(Path(run))


# What each logger left in the run folder, and how to look at it.
_LOG_HINTS = (
    ("tensorboard", "tensorboard --logdir {run}/tensorboard"),
    ("mlruns", "MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {run}/mlruns"),
    ("wandb", "wandb sync {run}/wandb/offline-run-*  (offline run; uploads it)"),
    ("metrics.csv", "{run}/metrics.csv"),
)


def _say_logs(run: Path) -> None:
    """One line per logger output in ``run``: the command that opens it."""
    for name, hint in _LOG_HINTS:
        if name == "wandb" and not any((run / name).glob("offline-run-*")):
            hint = "{run}/wandb (synced as it ran)"
        if (run / name).exists():
            console.print(f"  {name}: {esc(hint.format(run=run))}", highlight=False)


def _other_losses(event: dict[str, Any]) -> str:
    """`` aux 0.123``: the sum of the losses beyond torchvision's four (AugFPN's auxiliary
    head), or nothing."""
    from fpncli.training.trainer import LOSS_KEYS

    other = [v for k, v in event.items() if k.startswith("loss_") and k not in LOSS_KEYS]
    return f" aux {sum(other):.3f}" if other else ""


class TrainDisplay:
    """Rich live display: progress bar with ETA, losses, lr and images/s; warnings and evals
    printed above it."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from fpncli.cli.display import make_progress

        self.progress = make_progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self.task: TaskID | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            console.print(
                f"run {esc(str(event['run']))}: {event['train_images']} training images, "
                f"{event['total_iterations']} iterations ({event['iterations_per_epoch']}/epoch), "
                f"batch {event['effective_batch']} on {event['world_size']}x {event['device']}, "
                f"{event['optimizer']} lr {event['lr']:.3g}, weights: {esc(str(event['weights']))}"
                + (f", AMP {event['amp']}" if event.get("amp") else ""),
                highlight=False,
            )
            if event.get("best_value") is not None:
                at = f" (iteration {event['best_iteration']})" if event.get("best_iteration") else ""
                console.print(
                    f"best {event['best_metric']} so far {event['best_value']:.3f}{at}: best.pt is "
                    "replaced only by a better evaluation",
                    highlight=False,
                )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=event["total_iterations"], completed=event["start_iteration"], status=""
            )
        elif kind in ("iter", "tick") and self.task is not None:
            fields: dict[str, Any] = {}
            if kind == "iter":
                fields["status"] = (
                    f"loss {event['loss']:.3f} (cls {event['loss_classifier']:.3f} "
                    f"box {event['loss_box_reg']:.3f} obj {event['loss_objectness']:.3f} "
                    f"rpn {event['loss_rpn_box_reg']:.3f}{_other_losses(event)})  lr {event['lr']:.2e}  "
                    f"{event['images_per_s']:.1f} img/s"
                )
            self.progress.update(self.task, completed=event["iter"], **fields)
        elif kind == "eval_start":
            self._print(f"iteration {event['iter']}: evaluating on the validation set ...")
        elif kind == "eval":
            self._print(
                f"iteration {event['iter']}: val AP {event['AP']:.3f}  AP50 {event['AP50']:.3f}  "
                f"APs {event['APs']:.3f}  APm {event['APm']:.3f}  APl {event['APl']:.3f}"
            )
        elif kind == "warning":
            self._print(f"[yellow]warning:[/] {esc(str(event['message']))}")
        elif kind == "checkpoint" and "best_value" in event:
            was = event.get("previous_best")
            self._print(
                f"iteration {event['iteration']}: new best {event['best_metric']} {event['best_value']:.3f}"
                + (f" (was {was:.3f})" if was is not None else "")
                + f" -> {esc(str(event['path']))}"
            )

    def _print(self, text: str) -> None:
        (self.progress.console if self.task is not None else err_console).print(text, highlight=False)

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set option ``name`` (on the command line or in the environment)."""
    # By name: Typer bundles its own click, whose enum is not the installed click's.
    return getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")


def _refuse_on_resume(ctx: typer.Context, run: Path) -> None:
    """A resumed run keeps its own config: options that would change the model, the data or
    the recipe are refused in one line, naming them (only RESUME_OPTIONS may change)."""
    given = [
        p.opts[0] if getattr(p, "opts", None) else p.name
        for p in ctx.command.params
        if p.name not in RESUME_OPTIONS and _given(ctx, p.name or "")
    ]
    if given:
        allowed = ", ".join("--" + name for name in RESUME_OPTIONS[1:])
        raise FpnError(
            f"{', '.join(given)}: --resume {run} continues that run with its own configuration; "
            f"only {allowed} may change (start a new run with --out, or --weights {run}/last.pt)"
        )


def _say_resume_changes(ctx: typer.Context, run: Path) -> None:
    """Name the options a resumed run takes from this command line, with the run's values."""
    from fpncli.training.config import read_run_config

    try:
        old = read_run_config(run)
    except FpnError:
        return  # not a run folder: the training itself says so
    from fpncli.training.loggers import parse_loggers

    def now_and_before(name: str) -> tuple[Any, Any]:
        if name == "logger":
            return ",".join(parse_loggers(ctx.params[name] or [])), ",".join(old.loggers or []) or "none"
        return ctx.params[name], getattr(old, name)

    changed = []
    for name in RESUME_OPTIONS[1:]:
        if _given(ctx, name):
            now, before = now_and_before(name)
            if now != before:
                changed.append(f"--{name} {now} (was {before})")
    if changed:
        err_console.print(f"resuming {esc(str(run))} with {esc(', '.join(changed))}", highlight=False)
