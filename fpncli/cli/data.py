"""`fpn data ...`: dataset tools. `fpn data synth` writes the synthetic shapes dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape as esc

from fpncli.cli.common import console, handle_errors

app = typer.Typer(
    name="data",
    help="Dataset tools (synthetic data for offline training).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

SYNTH_HELP = (
    "Write a COCO-layout dataset of synthetic multi-scale shapes (4 classes, 8 px to most "
    "of the image, clutter): something to train on with no download."
)
SYNTH_EPILOG = (
    "Examples:\n\n"
    "  fpn data synth data/shapes                       # 800 train + 100 val images\n\n"
    "  fpn data synth data/shapes --train 2000 --val 200 --seed 1\n\n"
    "  fpn train --data data/shapes --preset tiny --out runs/shapes"
)


@app.command("synth", help=SYNTH_HELP, epilog=SYNTH_EPILOG)
@handle_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Dataset root to create (annotations/, train/, val/).")],
    train: Annotated[int, typer.Option(min=0, help="Training images.")] = 800,
    val: Annotated[int, typer.Option(min=0, help="Validation images.")] = 100,
    seed: Annotated[int, typer.Option(help="Every image is a pure function of (seed, split, index).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset at OUT.")] = False,
    size: Annotated[
        list[str] | None,
        typer.Option(
            help="Image size WxH (repeat for a mix; default 256x256, 320x224, 224x320). Large "
            "canvases, e.g. 1024x768, hold small objects: the case for `fpn eval --slice`.",
            show_default=False,
        ),
    ] = None,
) -> None:
    from fpncli.data.synth import SIZES, synthesize
    from fpncli.errors import FpnError

    sizes: tuple[tuple[int, int], ...] = SIZES
    if size:
        try:
            sizes = tuple((int(w), int(h)) for w, h in (s.lower().split("x") for s in size))
        except ValueError:
            raise FpnError(f"--size: expected WxH in pixels, e.g. 1024x768 (got {', '.join(size)})") from None

    from fpncli.cli.display import make_progress

    with make_progress(console=console, transient=True) as bar:
        task = bar.add_task("drawing", total=train + val)
        summary = synthesize(
            out,
            train=train,
            val=val,
            seed=seed,
            overwrite=overwrite,
            sizes=sizes,
            progress=lambda split, done, total: bar.advance(task),
        )
    for split, info in summary["splits"].items():
        console.print(
            f"{split}: {info['images']} images, {info['objects']} objects "
            f"(small {info['small']}, medium {info['medium']}, large {info['large']}) "
            f"-> {esc(str(info['annotation_file']))}",
            highlight=False,
        )
    console.print(
        f"train on it: [bold]fpn train --data {esc(str(out))} --preset tiny --out runs/shapes[/]",
        highlight=False,
    )
