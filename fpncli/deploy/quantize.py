"""int8 post-training static quantization of an exported detector graph (ONNX Runtime).

What is quantized: the convolutions (the ResNet, the neck and the RPN head: nearly all of
the multiply-adds) and the box head's two hidden linear layers (fc6 alone is ~12 GMACs for
1000 RoIs of an R50-FPN), in ONNX Runtime's QDQ form with per-channel int8 weights and uint8
activations whose ranges come from calibration images (min-max, or the mean of each image's
extremes: ``--calibration``). The layers whose outputs
are scores and box offsets stay float32: the box predictor (class scores, box deltas) and
the RPN head's two 1x1 output convolutions (objectness logits, anchor deltas), as do RoIAlign,
box decoding, NMS and the thresholds; so only the features they are computed from are
rounded. Keeping the RPN's outputs float took a model trained on the COCO slice from -2.8 to
-0.8 AP against its float32 AP (calibrated on other images) for <0.1 % of the arithmetic.

Calibration images: ``fpn detect --calibrate DIR`` / ``fpn export --calibrate DIR``, or a
sample of the images being processed (:func:`calibration_sample`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpncli.errors import FpnError

# Enough for the activation ranges of a detector; each costs a whole-graph run with every
# intermediate tensor recorded (~10 s at 800 px on one core).
CALIBRATION_IMAGES = 8
# How each activation's range is taken from the calibration images: "minmax", the extremes
# over all of them (the default), or "mean", the mean of each image's minimum and maximum
# (narrower: an outlier in one image widens it by 1/n, not fully). Neither wins everywhere
# (docs/speed.md, OpenVINO on a Zen 5 EPYC): the demo's model lost 1.1 AP with minmax and 0.2
# with mean, a model trained on real COCO images gained 0.1 with minmax and lost 1.0 with mean.
CALIBRATIONS = ("minmax", "mean")


def check_calibration(method: str) -> None:
    """One :class:`FpnError` line for a ``--calibration`` that is not one of :data:`CALIBRATIONS`."""
    if method not in CALIBRATIONS:
        raise FpnError(f"--calibration: unknown {method!r}; choose one of {', '.join(CALIBRATIONS)}")


def calibration_sample(
    paths: Sequence[Path],
    count: int = CALIBRATION_IMAGES,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    max_pixels: int | None = None,
) -> list[Path]:
    """Up to ``count`` images of ``paths`` to calibrate with, spread evenly over them. Each
    candidate is decoded and kept only when it reads whole as an image (under the pixel cap),
    one the model can resize when ``min_size`` and ``max_size`` are given; a broken
    candidate's place goes to the next usable file, so a folder with good images among bad
    ones still calibrates."""
    paths = list(paths)
    step = max(1.0, len(paths) / count)
    usable: dict[int, bool] = {}  # each header opened once
    picked: set[int] = set()
    for start in (int(i * step) for i in range(min(count, len(paths)))):
        for index in (i % len(paths) for i in range(start, start + len(paths))):
            if index in picked:
                continue
            if index not in usable:
                usable[index] = _usable(paths[index], min_size, max_size, max_pixels)
            if usable[index]:
                picked.add(index)
                break
    return [paths[i] for i in sorted(picked)]


def _usable(path: Path, min_size: int | None, max_size: int | None, max_pixels: int | None) -> bool:
    """Whether ``path`` is a regular file that decodes whole as an image under the pixel cap,
    of a size the model can resize (a FIFO would block; a truncated file only fails when
    decoded, so the sample decodes its candidates: a few images, not the run's)."""
    from fpncli.data.images import ImageReadError, default_max_pixels, model_size_problem, read_image

    if not path.is_file():
        return False
    try:
        image = read_image(path, max_pixels=max_pixels or default_max_pixels())
    except ImageReadError:
        return False
    return (
        min_size is None
        or max_size is None
        or model_size_problem(image.width, image.height, min_size, max_size) is None
    )


def calibration_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` (recursively), or one :class:`FpnError` when none exists."""
    from fpncli.data.sources import expand_sources

    try:
        found = expand_sources([folder], recursive=True)
    except FpnError:
        found = []
    if not found:
        raise FpnError(f"{folder}: --calibrate: no image to calibrate int8 with")
    return found


def check_int8_export(
    precision: str, fmt: str, calibrate: Path | None, check_images: Path | None
) -> list[Path] | None:
    """``fpn export --precision``: None for fp32, for int8 the folder's images (at least one
    readable: the model's sizes sample them once it is loaded), or one :class:`FpnError` line
    (a format that cannot hold int8, no calibration images)."""
    if precision == "fp32":
        return None
    if precision != "int8":
        raise FpnError(f"--precision {precision}: fpn export writes fp32 or int8 (ONNX) files")
    if fmt != "onnx":
        raise FpnError(f"--precision int8: {fmt} files cannot hold int8 here; export --format onnx")
    folder = calibrate if calibrate is not None else check_images
    if folder is None:
        raise FpnError("--precision int8 needs calibration images: --calibrate DIR (or --check-images DIR)")
    if not Path(folder).is_dir():
        raise FpnError(f"{folder}: --calibrate needs a folder of images")
    return usable_calibration(Path(folder))


def usable_calibration(folder: Path) -> list[Path]:
    """``folder``'s images, or one :class:`FpnError` when none of them decodes as an image:
    checked before any export or model is loaded (the sample is drawn once the model's sizes
    are known)."""
    pool = calibration_images(folder)
    if not calibration_sample(pool, 1):  # stops at the first image that decodes
        raise FpnError(f"{folder}: no readable image to calibrate int8 with")
    return pool


def _read(paths: Sequence[Path], max_pixels: int | None, sizes: tuple[int, int] | None) -> list[Any]:
    """The readable images as ``uint8 [H, W, 3]`` arrays (the exported graph's input), less
    those the model cannot resize (``sizes``: its shorter side and longer-side cap), on which
    the graph's resize would fail."""
    import numpy as np

    from fpncli.data.images import ImageReadError, default_max_pixels, model_size_problem, read_image

    arrays = []
    for path in paths:
        try:
            image = read_image(path, max_pixels=max_pixels or default_max_pixels())
        except ImageReadError:
            continue
        if sizes is None or model_size_problem(image.width, image.height, *sizes) is None:
            arrays.append(np.asarray(image))
    return arrays


def _float_nodes(graph: Path) -> list[str]:
    """The nodes that make scores and box offsets, which int8 would round directly: the box
    predictor's (``box_predictor/cls_score``, ``box_predictor/bbox_pred``) and the RPN head's
    output convolutions (``head/cls_logits``, ``head/bbox_pred``, one per level)."""
    import onnx

    def scores_or_offsets(name: str) -> bool:
        return "box_predictor" in name or "/cls_logits" in name or "/bbox_pred" in name

    return [n.name for n in onnx.load(str(graph)).graph.node if scores_or_offsets(n.name)]


def quantize_graph(
    graph: bytes,
    images: Sequence[Path],
    *,
    where: str,
    max_pixels: int | None = None,
    sizes: tuple[int, int] | None = None,
    method: str = "minmax",
) -> bytes:
    """The int8 (QDQ) version of the ONNX detector ``graph`` (``uint8 [H, W, 3]`` image in),
    calibrated on ``images`` (those it can read, of a size the model resizes: ``sizes`` =
    its ``(min_size, max_size)``) by ``method`` (one of :data:`CALIBRATIONS`); ``where``
    names their source in the error when none is left."""
    import logging

    from fpncli.modeling.export import INPUT_NAME
    from fpncli.modeling.exported import import_onnxruntime

    import_onnxruntime()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    check_calibration(method)
    arrays = _read(images, max_pixels, sizes)
    if not arrays:
        raise FpnError(f"{where}: no readable image to calibrate int8 with")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(arrays)

        def get_next(self) -> dict[str, Any] | None:
            item = next(self.items, None)
            return None if item is None else {INPUT_NAME: item}

    # quantize_static works on files; its own warnings (pre-processing advice, biases the
    # tracer kept as computed values) say nothing a user can act on.
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory(prefix="fpn-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(source),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                op_types_to_quantize=["Conv", "Gemm"],  # RoIAlign, decoding, NMS: float
                nodes_to_exclude=_float_nodes(source),  # scores and box deltas: float
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                    # ONNX Runtime averages the per-image extremes when it collects every
                    # image's outputs at once, as here (no CalibMaxIntermediateOutputs, which
                    # would turn the mean into a moving average over chunks).
                    "CalibMovingAverage": method == "mean",
                },
            )
        finally:
            root.setLevel(level)
        return target.read_bytes()
