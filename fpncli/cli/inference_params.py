"""The inference option group of `fpn detect`, `fpn eval` and (its model part) `fpn export`,
declared once: flag, type, default and help of each option live here, and the commands get
what the user gave as one :class:`~fpncli.inference.settings.InferenceArgs`.

:func:`inference_options` adds every option where the command has its ``inference``
parameter; ``fields`` restricts it to a subset (``fpn export`` takes only the thresholds and
sizes it writes into the graph). Checking and turning the options into the engine's
settings is :mod:`fpncli.inference.settings`' job.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fpncli.cli.common import (
    DeviceOption,
    MaxSizeOption,
    MinSizeOption,
    SliceOption,
    SliceOverlapOption,
    TTAOption,
)
from fpncli.cli.params import inject_group
from fpncli.inference.settings import InferenceArgs

F = TypeVar("F", bound=Callable[..., Any])

_AUTO = "auto"
# (field, annotation, default): the one declaration of each inference option.
INFERENCE_OPTIONS: list[tuple[str, Any, Any]] = [
    (
        "score_thr",
        Annotated[
            float | None,
            typer.Option(
                help="Keep detections scoring at least this (default: 0.5 in fpn detect; the model's own, "
                "0.05 for coco and fpn train's models, in fpn eval, whose AP needs low-scoring "
                "detections, and in fpn export).",
                show_default=False,
            ),
        ],
        None,
    ),
    (
        "nms_iou",
        Annotated[
            float | None,
            typer.Option(help="Per-class NMS IoU threshold (default: the model's, 0.5).", show_default=False),
        ],
        None,
    ),
    (
        "max_dets",
        Annotated[
            int | None,
            typer.Option(
                help="At most this many detections per image (default: the model's, 100).", show_default=False
            ),
        ],
        None,
    ),
    ("min_size", MinSizeOption, None),
    ("max_size", MaxSizeOption, None),
    (
        "batch_size",
        Annotated[
            int | None,
            typer.Option(
                help="Images per forward pass; auto: 2 on CUDA (only equal-size images share one, so "
                "results do not depend on it), 1 on the CPU (batching there needs --workers 0).",
                show_default=_AUTO,
            ),
        ],
        None,
    ),
    (
        "workers",
        Annotated[
            int | None,
            typer.Option(
                help="Worker processes; auto: the CPU cores, at most 4. CUDA: they decode and resize "
                "images. CPU: each is a model replica that decodes and detects whole images (for an "
                ".onnx model, threads sharing one session); 0 = all in one process.",
                show_default=_AUTO,
            ),
        ],
        None,
    ),
    ("device", DeviceOption, "auto"),
    ("half", Annotated[bool, typer.Option("--half", help="float16 inference (CUDA only).")], False),
    (
        "max_pixels",
        Annotated[
            int | None,
            typer.Option(
                help="Refuse images with more pixels than this (default 100,000,000, or $FPN_MAX_PIXELS; "
                "~14 bytes of memory per pixel).",
                show_default=False,
            ),
        ],
        None,
    ),
    (
        "optimize",
        Annotated[
            bool,
            typer.Option(
                "--optimize/--no-optimize",
                help="Fold BatchNorm into convolutions; Winograd 3x3 convolutions "
                "on the CPU, channels-last memory on CUDA.",
            ),
        ],
        True,
    ),
    ("slice_size", SliceOption, None),
    ("slice_overlap", SliceOverlapOption, None),
    ("tta", TTAOption, None),
    (
        "backend",
        Annotated[
            str,
            typer.Option(
                "--backend",
                help="The CPU path: auto (the fastest exact one measured on this CPU, cached; see "
                "docs/speed.md), torch (oneDNN, BatchNorm folded, channels-last), winograd (NNPACK "
                'Winograd replicas), onnxruntime (the exported graph), openvino (pip install "fpncli\\[openvino]").',
            ),
        ],
        "auto",
    ),
    (
        "precision",
        Annotated[
            str | None,
            typer.Option(
                help="fp32 (the default; an exported file: the precision it was exported at); fp16 (CUDA, "
                "= --half); bf16 (CPUs with AVX512-BF16 or AMX, or CUDA: backbone and neck in bfloat16); "
                "int8 (CPU: convolutions quantized with ONNX Runtime, calibrated on --calibrate). "
                "Reduced precision changes detections: fpn eval prints its AP cost.",
                show_default=False,
            ),
        ],
        None,
    ),
    (
        "calibrate",
        Annotated[
            Path | None,
            typer.Option(
                help="--precision int8: a folder of calibration images (default: a sample of the images "
                "being processed; in fpn eval the evaluation images).",
                show_default=False,
            ),
        ],
        None,
    ),
    (
        "calibration",
        Annotated[
            str | None,
            typer.Option(
                help="--precision int8: how activation ranges are taken from the calibration images: "
                "minmax (the extremes over all of them; the default) or mean (the mean of each image's "
                "minimum and maximum: narrower, an outlier counts 1/n). docs/speed.md has the AP of each.",
                show_default=False,
            ),
        ],
        None,
    ),
    (
        "reprobe",
        Annotated[
            bool,
            typer.Option("--reprobe", help="--backend auto: measure the paths on this CPU again (cached)."),
        ],
        False,
    ),
]

# What fpn export writes into its graph (int8: ONNX only).
MODEL_OVERRIDE_FIELDS = (
    "score_thr",
    "nms_iou",
    "max_dets",
    "min_size",
    "max_size",
    "precision",
    "calibrate",
    "calibration",
)


def inference_options(fn: F | None = None, *, fields: Sequence[str] | None = None) -> Any:
    """Command decorator: adds the inference options (all, or only ``fields``) where ``fn``
    has its ``inference`` parameter, and calls ``fn`` with ``inference=InferenceArgs``."""

    def decorate(command: F) -> F:
        chosen = [o for o in INFERENCE_OPTIONS if fields is None or o[0] in fields]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, annotation, default in chosen
        ]
        return inject_group(command, "inference", added, lambda values: InferenceArgs(**values))

    return decorate(fn) if fn is not None else decorate
