"""`fpn eval --coco`: COCO box metrics of a model or of an existing results file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape as esc

from fpncli.cli.common import (
    JsonOption,
    OptionalWeightsOption,
    console,
    err_console,
    handle_errors,
)
from fpncli.cli.inference_params import inference_options
from fpncli.inference.settings import InferenceArgs

HELP = (
    "Evaluate with COCO box metrics: the 12 standard numbers and a per-class table; "
    "writes metrics.json (and detections.json when a model runs)."
)
EPILOG = (
    "Examples:\n\n"
    "  fpn eval --coco val.json --images val2017/ --weights runs/exp/best.pt --out runs/eval\n\n"
    "  fpn eval --coco val.json --images val2017/ --weights coco --plots\n\n"
    "  fpn eval --coco val.json --results detections.json --out runs/eval-dets\n\n"
    "  fpn eval --coco val.json --results dets.json --images val2017/ --analyze --out runs/why\n\n"
    "Numbers are pycocotools' COCOeval numbers; --coco-backend auto uses faster-coco-eval "
    '(pip install "fpncli\\[fast]") when installed: same numbers, several times faster.'
)


@handle_errors
@inference_options
def eval_coco(
    coco: Annotated[
        Path, typer.Option("--coco", help="COCO annotation file (JSON) of the evaluation images.")
    ],
    results: Annotated[
        Path | None,
        typer.Option(
            help="Evaluate this COCO results file (list of {image_id, category_id, bbox, score}); no model needed."
        ),
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder the annotation file names are relative to.")
    ] = None,
    weights: OptionalWeightsOption = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder for metrics.json, detections.json and plots.")
    ] = Path("runs/eval"),
    plots: Annotated[
        bool, typer.Option("--plots", help="Save precision-recall curves (overall and per class) as PNG.")
    ] = False,
    coco_backend: Annotated[
        str,
        typer.Option(
            "--coco-backend",
            help="COCO evaluation backend: auto, pycocotools or faster-coco-eval (--backend takes "
            "these too, as before it chose the inference path).",
        ),
    ] = "auto",
    max_images: Annotated[
        int | None, typer.Option(min=1, help="Only the first N images (quick check).")
    ] = None,
    inference: InferenceArgs | None = None,
    analyze: Annotated[
        bool,
        typer.Option(
            "--analyze",
            help="Also write analysis.json and analysis/: TIDE's error breakdown, COCO's error-analysis "
            "curves per size, a confusion matrix, the worst images drawn by error type (needs --images), "
            "errors.csv, and with a model the pyramid level behind each error.",
        ),
    ] = False,
    conf_thr: Annotated[
        float, typer.Option(help="--analyze: the confusion matrix's score threshold (also for drawing).")
    ] = 0.3,
    conf_iou: Annotated[
        float,
        typer.Option(
            help="--analyze: the IoU at which a detection and an object pair up in the confusion matrix."
        ),
    ] = 0.5,
    worst: Annotated[
        int, typer.Option(min=0, help="--analyze: how many worst images (lowest per-image AP50) to draw.")
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    import dataclasses

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from fpncli.cli.display import make_progress
    from fpncli.evaluation.evaluate import EvalOptions, run_eval

    analysis = None
    if analyze:
        from fpncli.evaluation.analysis.report import AnalyzeOptions

        analysis = AnalyzeOptions(conf_thr=conf_thr, conf_iou=conf_iou, worst=worst)

    assert inference is not None  # inference_options passes it
    coco_backend = _coco_backend(inference, coco_backend)
    options = EvalOptions(
        **dataclasses.asdict(inference),
        annotations=coco,
        results=results,
        images=images,
        weights=weights,
        out=out,
        plots=plots,
        coco_backend=coco_backend,
        max_images=max_images,
        analyze=analysis,
    )
    # One progress display under torchrun (read from the environment: results mode must
    # not import torch), and none when a results file is evaluated.
    quiet = results is not None or int(os.environ.get("RANK", "0")) != 0
    columns = (TextColumn("detecting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with make_progress(*columns, console=err_console, transient=True) if not quiet else _NoProgress() as bar:
        task = bar.add_task("detect", total=None)
        metrics = run_eval(options, progress=lambda event: _show(event, bar, task))
    if metrics is None:
        return  # under torchrun, a rank other than 0: rank 0 reports
    if as_json:
        import json

        typer.echo(json.dumps(metrics, indent=2))
        return
    print_metrics(metrics)
    if metrics.get("fp32"):
        exact = metrics["fp32"]
        console.print(
            f"{metrics['path']}: AP {_fmt(metrics['AP'])}, AP50 {_fmt(metrics['AP50'])}; the same model at "
            f"fp32 ({exact['path']}): AP {_fmt(exact['AP'])}, AP50 {_fmt(exact['AP50'])} "
            f"({100 * (metrics['AP'] - exact['AP']):+.1f} AP points)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if metrics.get("analysis"):
        print_analysis(metrics["analysis"])
    written = [out / "metrics.json"]
    if metrics.get("detections_file"):
        written.insert(0, Path(metrics["detections_file"]))
    written += [Path(p) for p in metrics.get("plots", [])]
    if metrics.get("analysis"):
        written += [out / "analysis.json", out / "analysis"]
    console.print(
        "wrote " + ", ".join(str(p) for p in written), highlight=False, markup=False, soft_wrap=True
    )


def _coco_backend(inference: InferenceArgs, coco_backend: str) -> str:
    """``--backend pycocotools|faster-coco-eval`` (its meaning before it chose the inference
    path) is ``--coco-backend``; anything unknown to both is one line."""
    from fpncli.errors import FpnError
    from fpncli.evaluation.coco_eval import BACKENDS as COCO_BACKENDS
    from fpncli.inference.settings import BACKENDS

    value = inference.backend
    if value in COCO_BACKENDS and value not in BACKENDS:
        inference.backend = "auto"
        return value
    if value not in BACKENDS:
        raise FpnError(
            f"unknown evaluation backend or inference path {value!r}: --backend chooses the path "
            f"({', '.join(BACKENDS)}); --coco-backend the evaluation (auto, {', '.join(COCO_BACKENDS)})"
        )
    return coco_backend


class _NoProgress:
    """A progress display that shows nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


def _show(event: dict[str, Any], bar: Any, task: Any) -> None:
    if event["event"] == "warning":
        err_console.print(f"note: {event['message']}", style="yellow", markup=False)
    elif event["event"] == "note":
        err_console.print(event["message"], markup=False, highlight=False, soft_wrap=True)
    elif event["event"] == "image":
        bar.update(task, completed=event["done"], total=event["total"])


def _fmt(v: float) -> str:
    return "-" if v is None or v < 0 else f"{v:.3f}"


def print_metrics(metrics: dict[str, Any], per_class_rows: int | None = None) -> None:
    """The 12 COCO numbers, the per-class table and what was skipped, with rich."""
    from rich import box
    from rich.table import Table

    from fpncli.evaluation.coco_eval import METRIC_DESCRIPTIONS, METRIC_KEYS

    for line in metrics.get("problems", [])[:8]:
        err_console.print(f"warning: {line}", style="yellow", highlight=False, markup=False, soft_wrap=True)
    if len(metrics.get("problems", [])) > 8:
        err_console.print(f"warning: ... {len(metrics['problems']) - 8} more in metrics.json", style="yellow")
    missing = metrics.get("missing_images") or []
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        err_console.print(
            f"missing: {len(missing)} image files not found, left out: {esc(shown)}",
            style="yellow",
            highlight=False,
            soft_wrap=True,
        )
    for line in (metrics.get("skipped_images") or [])[:10]:
        err_console.print(f"skipped: {line}", style="yellow", highlight=False, markup=False, soft_wrap=True)

    title = (
        f"COCO box metrics — {metrics['num_images']} images, {metrics['num_detections']} detections "
        f"({metrics['backend']})"
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("metric")
    table.add_column("")
    table.add_column("value", justify="right")
    for key in METRIC_KEYS:
        table.add_row(key, METRIC_DESCRIPTIONS[key], _fmt(metrics[key]))
    console.print(table)

    # Classes with neither instances nor detections in the evaluated images say nothing.
    rows = [r for r in metrics["per_class"] if r["instances"] or r["detections"]]
    hidden = len(metrics["per_class"]) - len(rows)
    if per_class_rows is not None:
        hidden += max(0, len(rows) - per_class_rows)
        rows = rows[:per_class_rows]
    per = Table(
        title="Per class, best AP first ('-': no ground truth of that size)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    # Fits 80 columns: names are cut at 15 characters, numbers never are.
    per.add_column("class", no_wrap=True, overflow="ellipsis", max_width=15)
    for col in ("id", "inst", "dets", "AP", "AP50", "AP75", "APs", "APm", "APl"):
        per.add_column(col, justify="right", no_wrap=True, min_width=5 if col.startswith("AP") else None)
    for r in rows:
        per.add_row(
            esc(str(r["name"])),
            str(r["category_id"]),
            str(r["instances"]),
            str(r["detections"]),
            *(_fmt(r[k]) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
        )
    console.print(per)
    if hidden:
        console.print(
            f"({hidden} classes without instances or detections not shown; all are in metrics.json)"
        )


def print_analysis(report: dict[str, Any]) -> None:
    """The short table of ``--analyze`` (everything else is in analysis.json and analysis/)."""
    from rich import box
    from rich.table import Table

    from fpncli.evaluation.analysis.report import summary_rows

    for note in report.get("notes", []):
        err_console.print(f"note: {note}", style="yellow", markup=False, soft_wrap=True)
    table = Table(
        title="Why AP is not higher (--analyze; dAP: AP50 points gained by fixing that error)",
        title_justify="left",
        box=box.SIMPLE,
        pad_edge=False,
        show_header=False,
    )
    table.add_column("what", style="bold")
    table.add_column("value")
    for what, value in summary_rows(report):
        table.add_row(what, esc(value))
    console.print(table)
