"""`fpn plot`: training curves of one run (in progress or finished), or several overlaid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape as esc

from fpncli.cli.common import console, handle_errors

HELP = "Draw training curves (losses, learning rate, validation AP) from runs' metrics.jsonl."
EPILOG = (
    "Examples:\n\n"
    "  fpn plot runs/shapes                       # runs/shapes/curves.png, also while it trains\n\n"
    "  fpn plot runs/a runs/b --out compare.png   # both runs overlaid, legend by run name\n\n"
    "One run: every loss term, lr, and AP/AP50/APs/APm/APl. Several: the total loss, lr, AP and "
    "AP50 of each, one colour per run."
)


@handle_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Training run folders (or their metrics.jsonl files).")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="PNG to write (default: RUN/curves.png for one run, curves.png for several)."
        ),
    ] = None,
) -> None:
    from fpncli.outputs import check_outputs
    from fpncli.viz.curves import metrics_file, plot_runs, plot_training_curves, run_labels

    files = [metrics_file(run) for run in runs]  # each: exists and holds records, or one line
    if out is None:
        out = files[0].parent / "curves.png" if len(files) == 1 else Path("curves.png")
    check_outputs(files=[out], inputs=files)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(files) == 1:
        plot_training_curves(files[0], out)
    else:
        plot_runs(files, run_labels(runs), out)
    console.print(f"wrote {esc(str(out))} ({len(files)} run{'s' if len(files) > 1 else ''})", highlight=False)
