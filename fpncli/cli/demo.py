"""`fpn demo`: synthesise data, train the tiny preset, evaluate, detect, inspect — offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape as esc

from fpncli.cli.common import DeviceOption, console, handle_errors

HELP = (
    "Run the whole job end to end with no download: synthesise shapes, train the tiny preset "
    "from scratch, evaluate (COCO AP), detect on held-out images and inspect pyramid levels."
)
EPILOG = (
    "Examples:\n\n"
    "  fpn demo                        # writes ./fpn-demo (about 5 minutes on 2 CPU cores)\n\n"
    "  fpn demo --out /tmp/demo --iters 600   # longer training, higher AP"
)


@handle_errors
def demo(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder for everything the demo writes (a previous demo there is replaced)."
        ),
    ] = Path("fpn-demo"),
    iters: Annotated[int, typer.Option(min=1, help="Training iterations (batch 4).")] = 300,
    train_images: Annotated[int, typer.Option(min=1, help="Synthetic training images.")] = 600,
    val_images: Annotated[int, typer.Option(min=1, help="Held-out synthetic images for evaluation.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for data, weights and training.")] = 0,
    # The CPU by default: the README's demo figures are CPU figures, reproducible anywhere.
    device: DeviceOption = "cpu",
) -> None:
    from fpncli.cli.train import TrainDisplay
    from fpncli.workflows.demo import DemoConfig, run_demo

    display = TrainDisplay()

    def progress(event: dict) -> None:
        if event["event"] == "step":
            display.close()
            console.print(f"[bold cyan]{event['step']}[/]: {esc(str(event['message']))}", highlight=False)
        else:
            display(event)

    try:
        summary = run_demo(
            DemoConfig(
                out=str(out),
                iters=iters,
                train_images=train_images,
                val_images=val_images,
                seed=seed,
                device=device,
            ),
            progress=progress,
        )
    finally:
        display.close()
    console.print(
        f"\n[bold]held-out AP {summary['AP']:.3f}   AP50 {summary['AP50']:.3f}[/]   "
        f"(small {summary['APs']:.3f}, medium {summary['APm']:.3f}, large {summary['APl']:.3f})   "
        f"in {summary['seconds'] / 60:.1f} min",
        highlight=False,
    )
    rows = [
        ("dataset", summary["data"]),
        ("training run", summary["run"]),
        ("checkpoint", summary["checkpoint"]),
        ("metrics", summary["metrics"]),
    ]
    if summary.get("curves"):
        rows.append(("training curves", summary["curves"]))
    if summary.get("detect"):
        rows.append(("detections", summary["detect"]))
    if summary.get("levels"):
        rows.append(("pyramid levels", summary["levels"]))
    for name, path in rows:
        console.print(f"  {name:16s} {esc(str(path))}", highlight=False)
    console.print(
        f"next: fpn eval --weights {esc(str(summary['checkpoint']))} ... or "
        f"fpn train --data {esc(str(summary['data']))} --preset tiny --out runs/shapes",
        highlight=False,
    )
