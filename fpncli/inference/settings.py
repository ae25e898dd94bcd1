"""The inference options of `fpn detect` and `fpn eval` (and the model part of `fpn export`):
one dataclass, one check, one translation into what the engine takes.

The command line declares them once (:func:`fpncli.cli.params.inference_options`); the
services' option classes (``DetectOptions``, ``EvalOptions``) extend :class:`InferenceArgs`,
so a service called from Python is checked by the same :func:`check_inference_options`.
Nothing here imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpncli.errors import FpnError

# Detect keeps confident boxes by default; eval needs the model's low threshold for AP.
DETECT_SCORE_THR = 0.5


@dataclass(kw_only=True)
class InferenceArgs:
    """How a model runs (``None`` = the model's own value, or "auto").

    Attributes:
        score_thr, nms_iou, max_dets, min_size, max_size: the model's thresholds and input
            sizes (shorter side resized to ``min_size``, longer capped at ``max_size``, pixels).
        batch_size: images per forward pass (None: 2 on CUDA, 1 on the CPU).
        workers: CUDA: decoding processes; CPU: single-image model replicas (None: the
            cores, at most 4; 0: everything in this process).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        half: float16 autocast (CUDA only).
        max_pixels: refuse larger images (None: ``$FPN_MAX_PIXELS`` or 100 M).
        optimize: BatchNorm folded and the CPU's or GPU's fast convolutions.
        slice_size, slice_overlap, tta: sliced inference and test-time augmentation.
        backend: the CPU path, one of :data:`BACKENDS` (``auto``: the fastest exact one
            measured on this CPU, see :mod:`fpncli.inference.backends`).
        precision: one of :data:`PRECISIONS`; ``half`` is ``fp16``; None: not given (fp32, or
            an exported file's own precision).
        calibrate: int8: the folder of calibration images (None: a sample of the run's).
        calibration: int8: how activation ranges are taken from them, one of
            :data:`~fpncli.deploy.quantize.CALIBRATIONS` (None: ``minmax``).
        reprobe: with ``backend="auto"``, measure the candidates again.
    """

    score_thr: float | None = None
    nms_iou: float | None = None
    max_dets: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    device: str = "auto"
    half: bool = False
    max_pixels: int | None = None
    optimize: bool = True
    slice_size: int | None = None
    slice_overlap: float | None = None
    tta: str | None = None
    backend: str = "auto"
    precision: str | None = None
    calibrate: Path | None = None
    calibration: str | None = None
    reprobe: bool = False

    @property
    def dtype(self) -> str:
        """The precision asked for, ``--half`` counting as ``fp16``."""
        return "fp16" if self.half else (self.precision or "fp32")


BACKENDS = ("auto", "torch", "winograd", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def check_inference_options(args: InferenceArgs) -> None:
    """Every inference option in range, before anything is read or written; one
    :class:`FpnError` line naming the flag otherwise."""
    if args.score_thr is not None and not 0.0 <= args.score_thr <= 1.0:
        raise FpnError(f"--score-thr must be in 0..1, got {args.score_thr}")
    if args.nms_iou is not None and not 0.0 < args.nms_iou <= 1.0:
        raise FpnError(f"--nms-iou must be in (0, 1], got {args.nms_iou}")
    for flag, value in (
        ("--max-dets", args.max_dets),
        ("--min-size", args.min_size),
        ("--max-size", args.max_size),
        ("--batch-size", args.batch_size),
        ("--max-pixels", args.max_pixels),
    ):
        if value is not None and value < 1:
            raise FpnError(f"{flag} must be at least 1, got {value}")
    if args.workers is not None and args.workers < 0:
        raise FpnError(f"--workers must be 0 or more, got {args.workers}")
    from fpncli.inference.augment import check_slice, parse_tta

    check_slice(args.slice_size, args.slice_overlap)
    parse_tta(args.tta)
    if args.backend not in BACKENDS:
        raise FpnError(f"--backend: unknown path {args.backend!r}; choose one of {', '.join(BACKENDS)}")
    precision = args.precision or "fp32"
    if precision not in PRECISIONS:
        raise FpnError(f"--precision: unknown {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if args.half and precision not in ("fp32", "fp16"):
        raise FpnError(f"--half is --precision fp16; it cannot go with --precision {precision}")
    if args.reprobe and args.backend != "auto":
        raise FpnError(
            f"--reprobe measures the paths for --backend auto; --backend {args.backend} needs none"
        )
    if args.reprobe and precision in ("bf16", "int8"):
        # auto at bf16/int8 takes the fastest runtime for that precision without measuring.
        raise FpnError(f"--reprobe measures the float32 paths; --precision {precision} needs none")
    if args.calibrate is not None and precision != "int8":
        raise FpnError("--calibrate gives int8's calibration images; add --precision int8")
    if args.calibration is not None and precision != "int8":
        raise FpnError("--calibration sets how int8 is calibrated; add --precision int8")
    if args.calibration is not None:
        from fpncli.deploy.quantize import check_calibration

        check_calibration(args.calibration)
    if args.calibrate is not None and not Path(args.calibrate).is_dir():
        raise FpnError(f"{args.calibrate}: --calibrate needs a folder of images")
    if precision in ("bf16", "int8") and (args.slice_size is not None or args.tta is not None):
        raise FpnError(f"--precision {precision} runs plain detection; it takes no --slice or --tta")


def inference_overrides(args: InferenceArgs, score_thr: float | None = None) -> dict[str, Any]:
    """The model-config overrides of ``args`` for
    :func:`fpncli.modeling.weights.load_for_inference` (``None`` values: the model's own).
    ``score_thr`` replaces ``args.score_thr`` (a tracker may run the detector lower)."""
    return {
        "min_size": args.min_size,
        "max_size": args.max_size,
        "box_score_thresh": args.score_thr if score_thr is None else score_thr,
        "box_nms_thresh": args.nms_iou,
        "box_detections_per_img": args.max_dets,
    }


def check_half(args: InferenceArgs, device_type: str) -> None:
    """float16 needs CUDA (on the CPU it is slower, not faster)."""
    if args.half and device_type != "cuda":
        raise FpnError(
            "--half needs a CUDA device (float16 on the CPU is slower, not faster); this run is on the CPU"
        )


@dataclass(frozen=True)
class Parallelism:
    """How images are spread: ``batch_size`` per forward pass and ``workers`` decoding
    processes (one process), or ``cpu_replicas`` single-image model replicas on the CPU."""

    batch_size: int
    workers: int
    cpu_replicas: int


def resolve_parallelism(args: InferenceArgs, cuda: bool, cores: int | None = None) -> Parallelism:
    """ "auto" batch size and workers for this run's device; ``cores``: this process's share
    of the CPU (default: all). On the CPU each worker is a whole model replica detecting one
    image at a time, so a batch size above 1 there needs ``--workers 0``."""
    cores = cores or os.cpu_count() or 1
    batch_size = args.batch_size or (2 if cuda else 1)
    workers = args.workers if args.workers is not None else min(4, cores)
    replicas = workers if not cuda else 0
    if replicas and args.batch_size is not None and args.batch_size > 1:
        # Each replica detects whole images one at a time: the option would do nothing.
        raise FpnError(
            f"--batch-size: on the CPU each of the {workers} worker replicas detects one image at "
            "a time; batching needs --workers 0"
        )
    return Parallelism(batch_size, workers, replicas)
