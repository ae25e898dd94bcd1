"""`fpn export`: a detector as one ONNX or TorchScript file, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape as esc

from fpncli.cli.common import (
    WeightsOption,
    console,
    err_console,
    handle_errors,
)
from fpncli.cli.inference_params import MODEL_OVERRIDE_FIELDS, inference_options
from fpncli.inference.settings import InferenceArgs

HELP = (
    "Export a detector to ONNX or TorchScript: RGB uint8 image of any size in, boxes in its pixels "
    "out (resize, normalise, NMS and thresholds inside); checked against PyTorch before it is written."
)
EPILOG = (
    "Examples:\n\n"
    "  fpn export --weights runs/exp/best.pt --format onnx --out model.onnx\n\n"
    "  fpn export --weights coco --format torchscript --out frcnn.torchscript --check-images photos/\n\n"
    "  fpn detect photos/ --weights model.onnx --out out/\n\n"
    "The thresholds and sizes below are fixed in the file; a run of the file may only raise "
    "--score-thr or lower --max-dets. Exit code 1 (and no file) when the exported model differs "
    "from PyTorch on any checked image (boxes beyond 0.01 px, scores beyond 1e-4)."
)


@handle_errors
@inference_options(fields=MODEL_OVERRIDE_FIELDS)
def export(
    weights: WeightsOption,
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write (.onnx for onnx).")],
    check_images: Annotated[
        Path | None,
        typer.Option(help="A folder of your images to add to the self-check (besides the built-in set)."),
    ] = None,
    inference: InferenceArgs | None = None,
    winograd: Annotated[
        bool | None,
        typer.Option(
            "--winograd/--no-winograd",
            help="ONNX: write the 3x3 convolutions with 256 channels as Winograd F(4x4,3x3), faster "
            "in ONNX Runtime on the CPU (default for onnx; --no-winograd for runtimes with their "
            "own fast convolutions: GPU, TensorRT). TorchScript: fold BatchNorm and use NNPACK's "
            "Winograd as fpn detect does (off by default: the file then runs on CPUs only).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-image check lines.")] = False,
) -> None:
    from fpncli.deploy.export import ExportOptions, run_export
    from fpncli.inference.settings import check_inference_options

    assert inference is not None  # inference_options passes it
    check_inference_options(inference)
    options = ExportOptions(
        weights=weights,
        fmt=fmt,
        out=out,
        check_images=check_images,
        score_thr=inference.score_thr,
        nms_iou=inference.nms_iou,
        max_dets=inference.max_dets,
        min_size=inference.min_size,
        max_size=inference.max_size,
        precision=inference.precision or "fp32",
        calibrate=inference.calibrate,
        calibration=inference.calibration or "minmax",
        winograd=winograd,
    )

    def show(event: dict) -> None:
        if quiet:
            return
        if event["event"] == "exported":
            err_console.print(
                f"exported in {event['seconds']:.1f} s; checking against PyTorch on {event['total']} images "
                "in a fresh process",
                highlight=False,
            )
        elif event["event"] == "checked":
            c = event["image"]
            ties = f", {c.excused} excused as ties" if c.excused else ""
            err_console.print(
                f"  [{event['done']}/{event['total']}] {esc(c.name)}: {c.detections} detections equal "
                f"(box diff {c.box_diff:.2g} px of {c.box_tol:.2g} allowed, score diff {c.score_diff:.2g} "
                f"of {c.score_tol:.2g}{ties})",
                highlight=False,
                soft_wrap=True,
            )

    summary = run_export(options, progress=show)
    for line in summary.skipped:
        err_console.print(f"[yellow]skipped:[/] {esc(line)}", highlight=False, soft_wrap=True)
    for note in summary.notes:
        err_console.print(f"note: {esc(note)}", highlight=False, soft_wrap=True)
    empty = sum(1 for c in summary.images if c.detections == 0)
    compared = sum(c.detections for c in summary.images)
    ties = f", {summary.excused} excused as ties" if summary.excused else ""
    console.print(
        f"wrote {summary.out} ({summary.format}, {summary.size_bytes / 1e6:.1f} MB) from {summary.source}; "
        f"checked equal to PyTorch in a fresh process on {len(summary.images)} images ({compared} detections, "
        f"{empty} without detections{ties}): max box diff {summary.box_diff:.2g} px, max score diff "
        f"{summary.score_diff:.2g}, each within its image's tolerance (in the file's metadata)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
