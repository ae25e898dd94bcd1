"""An exported model (``fpn export``: ONNX or TorchScript) where a PyTorch detector is expected.

:class:`ExportedDetector` offers the part of ``FPNFasterRCNN``'s inference API that the
batched pipeline (:func:`fpncli.inference.predict.predict_images`) uses, so ``fpn detect`` and
``fpn eval`` run an exported file through the same workers, ordering, per-image errors and
outputs as a checkpoint. The file holds the whole detector (resize, normalise, NMS,
thresholds), so thresholds and sizes were fixed at export: a run may only ask for a stricter
score threshold or fewer detections (exactly what the graph would give, see
:func:`load_exported`).

ONNX Runtime sessions are made lazily in each process that runs the model: ``fpn detect``'s
CPU workers are forked, and a session must not cross a fork.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fpncli.config import ModelConfig
from fpncli.errors import FpnError, first_line
from fpncli.modeling.export import INPUT_NAME
from fpncli.weight_files import ONNX_INSTALL_HINT, TORCHSCRIPT_METADATA, exported_format, onnx_metadata

EXPORT_FORMATS = ("onnx", "torchscript")
EXPORT_VERSION = 1  # layout of the metadata; a newer file is refused


def import_onnxruntime() -> Any:
    """``onnxruntime``, or one :class:`FpnError` saying what to install."""
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise FpnError(f"running or exporting ONNX models needs onnxruntime: {ONNX_INSTALL_HINT}") from None
    except ImportError as exc:  # installed but broken (or its initialisation was interrupted)
        raise FpnError(f"onnxruntime is installed but failed to import ({first_line(exc)})") from None
    return onnxruntime


def onnx_session(model: str | os.PathLike | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with fpncli's settings (measured in ``scripts/bench_detect.py``):
    ``threads`` intra-op threads (default: torch's thread count), one inter-op thread,
    sequential execution, every graph optimisation."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Fatal only: a failing run raises, and fpncli reports it in one line; ONNX Runtime's own
    # log lines (warnings about unused initialisers, the same error again) would only add noise.
    opts.log_severity_level = 4
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def read_metadata(path: str | os.PathLike, fmt: str | None = None) -> tuple[dict[str, Any], Any]:
    """``(metadata, runner)`` of an exported file: the JSON ``fpn export`` stored, and the
    loaded ``torch.jit`` module (torchscript) or None (onnx: sessions are made where they run)."""
    path = Path(path)
    fmt = fmt or exported_format(path)
    if not path.exists():
        raise FpnError(f"{path}: no such file")
    if path.is_dir():
        raise FpnError(f"{path}: is a folder, expected a model file")
    if fmt == "onnx":
        # The metadata through the onnx package, not an ONNX Runtime session: a session made
        # here would be forked into fpn detect's workers, where ONNX Runtime deadlocks.
        import_onnxruntime()
        raw = onnx_metadata(path)
        runner: Any = None  # made by ExportedDetector.run, in the process that runs it
    elif fmt == "torchscript":
        import warnings

        extra = {TORCHSCRIPT_METADATA: ""}
        # A file exported with --winograd calls NNPACK's convolution, which fails ("NNPACK
        # SpatialConvolution_updateOutput failed") until NNPACK is initialised, and a fresh
        # process has not done that: this call does it (cheap, and harmless for other files).
        if hasattr(torch, "_nnpack_available"):
            torch._nnpack_available()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
                runner = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise FpnError(f"{path}: not a readable TorchScript model ({first_line(exc)})") from None
        raw = extra[TORCHSCRIPT_METADATA] or None
    else:
        raise FpnError(f"{path}: not an exported model (.onnx, or TorchScript from fpn export)")
    if raw is None:
        raise FpnError(f"{path}: has no fpncli metadata (not written by fpn export); re-export it")
    try:
        meta = json.loads(raw)
        version = meta["version"]
        ModelConfig.from_dict(meta["model_config"])
    except (ValueError, KeyError, TypeError, FpnError) as exc:
        raise FpnError(f"{path}: bad fpncli metadata ({first_line(exc)})") from None
    if not isinstance(version, int) or isinstance(version, bool):
        raise FpnError(f"{path}: bad fpncli metadata (export version {version!r} is not a number)")
    if version > EXPORT_VERSION:
        raise FpnError(f"{path}: export version {version!r} is newer than this fpncli understands; upgrade")
    return meta, runner


OPENVINO_INSTALL_HINT = 'pip install "fpncli[openvino]"'


def import_openvino() -> Any:
    """``openvino``, or one :class:`FpnError` saying what to install."""
    try:
        import openvino
    except ModuleNotFoundError:
        raise FpnError(f"--backend openvino needs OpenVINO: {OPENVINO_INSTALL_HINT}") from None
    except ImportError as exc:  # installed but broken
        raise FpnError(f"openvino is installed but failed to import ({first_line(exc)})") from None
    return openvino


def openvino_reason(exc: BaseException) -> str:
    """The line of an OpenVINO exception that says what failed: its first lines only name
    the C++ source files the exception passed through ("Exception from src/.../core.cpp:117:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return told[-1] if told else first_line(exc)


class OpenVinoRunner:
    """An OpenVINO CPU model behind ONNX Runtime's ``run(None, {name: array})``: one compiled
    model, one infer request per calling thread (OpenVINO runs them concurrently, without
    the GIL), ``streams`` of them in parallel with ``threads`` threads in all."""

    def __init__(self, onnx: bytes | str | os.PathLike, threads: int, streams: int, precision: str = "f32"):
        import threading

        ov = import_openvino()
        core = ov.Core()
        source = onnx if isinstance(onnx, bytes) else str(onnx)
        model = core.read_model(source) if not isinstance(source, bytes) else core.read_model(source, b"")
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": streams,
            "INFERENCE_PRECISION_HINT": precision,
        }
        self._compiled = core.compile_model(model, "CPU", config)
        self._local = threading.local()
        # Touch OpenVINO's numpy bridge once here, on the calling thread: its lazy set-up
        # (pybind11's npy_api, a function-local static) deadlocks when two detect threads
        # run it at once for the first time (seen in CI: both stuck in Tensor.data).
        _ = ov.Tensor(np.zeros((1,), dtype=np.float32)).data

    def run(self, _outputs: Any, feeds: dict[str, Any]) -> list[Any]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer(list(feeds.values()))
        return [result[i].copy() for i in range(len(result))]


class ExportedDetector:
    """An exported detector behind ``FPNFasterRCNN``'s inference API (CPU only).

    ``prepare_image`` returns the image as the graph takes it (``Tensor[H, W, 3]`` uint8
    RGB); ``detect_prepared`` runs the graph once per image. Detections: ``{"boxes":
    Tensor[N, 4] xyxy in the original image's pixels, "scores": [N], "labels": [N] int64}``.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        metadata: dict[str, Any],
        runner: Any,
        *,
        data: bytes | None = None,
        engine: str = "onnxruntime",
        precision: str = "f32",
    ) -> None:
        # ``data``: the ONNX graph in memory (made for this run, ``path`` names it only);
        # ``engine``: onnxruntime or openvino (``precision``: OpenVINO's inference precision).
        self.data, self.engine, self.ov_precision = data, engine, precision
        self.path = path
        self.format = fmt
        self.metadata = metadata
        self.config = ModelConfig.from_dict(metadata["model_config"])
        self.exported_config = self.config  # the thresholds in the graph
        self.precision = str(metadata.get("precision", "fp32"))  # fpn export --precision int8
        self._runner = runner
        self._pid = os.getpid()
        self._min_score: float | None = None  # stricter than the graph's: filtered here
        self._keep = self.config.box_detections_per_img
        # Set by fpncli.inference.backend_build.build: the graph came from the graph cache, and
        # what making it had cost.
        self.graph_reused = False
        self.graph_saved_seconds = 0.0

    # --------------------------------------------------------------- what the pipeline reads
    @property
    def min_size(self) -> int:
        return int(self.config.min_size)

    @property
    def max_size(self) -> int:
        return int(self.config.max_size)

    def size_problem(self, width: int, height: int) -> str | None:
        from fpncli.data.images import model_size_problem

        return model_size_problem(width, height, self.min_size, self.max_size)

    def prepare_image(self, image: Tensor, inplace: bool = False) -> Tensor:
        """``Tensor[3, H, W]`` float in 0..1 (the pipeline's decoded image) -> the graph's input
        ``Tensor[H, W, 3]`` uint8: exactly the decoded bytes (k / 255 * 255 rounds back to k)."""
        return image.mul(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous()

    def padded_size(self, prepared: Tensor) -> tuple[int, int]:
        """The bucket key of the pipeline; every image runs alone, so its own size."""
        return (int(prepared.shape[0]), int(prepared.shape[1]))

    def eval(self) -> ExportedDetector:
        return self

    def to(self, device: Any) -> ExportedDetector:
        if torch.device(device).type != "cpu":
            raise FpnError(f"{self.path}: an exported model runs on the CPU here; pass --device cpu")
        return self

    def set_detections_per_img(self, n: int) -> None:
        """Keep at most ``n`` of the graph's detections (it never gives more than at export)."""
        self._keep = min(int(n), self.exported_config.box_detections_per_img)

    def detect_prepared(
        self, prepared: list[Tensor], original_sizes: list[tuple[int, int]], half: bool = False
    ) -> list[dict[str, Tensor]]:
        """Run the graph on each image (``Tensor[H, W, 3]`` uint8 from :meth:`prepare_image`)."""
        if half:
            raise FpnError("--half (float16) is not available for an exported model")
        return [self.detect(image) for image in prepared]

    def detect(self, image: Tensor) -> dict[str, Tensor]:
        """Detections for one ``Tensor[H, W, 3]`` uint8 RGB image."""
        boxes, scores, labels = self.run(image)
        classes = len(self.config.class_names)
        bad = labels[(labels < 1) | (labels > classes)]
        if bad.numel():  # only a file whose metadata was edited by hand gets here
            raise FpnError(
                f"{self.path}: the graph returned label {int(bad[0])} but its metadata lists "
                f"{classes} class(es); re-export it with fpn export"
            )
        keep = self._keep
        if self._min_score is not None:
            # The graph's own test is `score > threshold`; a stricter one on its (sorted)
            # output gives exactly what a graph exported with that threshold would.
            keep = min(keep, int((scores > self._min_score).sum()))
        return {"boxes": boxes[:keep], "scores": scores[:keep], "labels": labels[:keep]}

    def run(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The graph's raw outputs ``(boxes [N, 4], scores [N], labels [N])`` for ``image``."""
        if self.format == "torchscript":
            with torch.inference_mode():
                boxes, scores, labels = self._runner(image)
            return boxes, scores, labels
        if self._runner is None or os.getpid() != self._pid:  # first use in this process
            self._runner, self._pid = self._new_session(), os.getpid()
        boxes, scores, labels = self._runner.run(None, {INPUT_NAME: image.numpy()})
        if self.engine == "openvino" and len(scores) == 1:
            # OpenVINO 2026.4 returns one uninitialised row for an empty output: keep it only if
            # the graph could have given it (score > threshold, at most 1; a known label).
            score, label = float(scores[0]), int(labels[0])
            valid = self.exported_config.box_score_thresh < score <= 1.0
            if not (valid and 1 <= label <= len(self.config.class_names)):
                boxes, scores, labels = boxes[:0], scores[:0], labels[:0]
        return torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)

    @property
    def runs_in_threads(self) -> bool:
        """Whether ``fpn detect``'s CPU replicas should be threads sharing this model rather
        than forked processes: ONNX Runtime releases the GIL and one session serves
        concurrent runs, so the graph is optimised once (about a second for an R50-FPN) and
        its weights are held once, not per process."""
        return self.format == "onnx"

    def share_between_threads(self) -> None:
        """Make the session now, in this process, with one intra-op thread per run: each
        calling thread then runs its images on its own core (see :attr:`runs_in_threads`)."""
        self._runner, self._pid = self._new_session(threads=1), os.getpid()

    def _new_session(self, threads: int | None = None) -> Any:
        source = self.data if self.data is not None else self.path
        try:
            if self.engine == "openvino":
                # Shared between threads (threads=1 per run): one stream per core.
                cores = torch.get_num_threads() if threads is None else _cores()
                streams = 1 if threads is None else cores
                return OpenVinoRunner(source, cores, streams, self.ov_precision)
            return onnx_session(source, threads)
        except FpnError:
            raise
        except Exception as exc:  # a valid protobuf that is no runnable model
            if self.engine == "openvino":
                raise FpnError(
                    f"{self.path}: OpenVINO cannot run it at {self.ov_precision} ({openvino_reason(exc)})"
                ) from None
            raise FpnError(f"{self.path}: not a runnable ONNX model ({first_line(exc)})") from None

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("an ExportedDetector is not picklable (DataLoader workers are forked)")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_exported(path: str | os.PathLike, **overrides: Any) -> ExportedDetector:
    """Open an exported model; ``overrides`` are the run's model options (``None`` = unset).

    A run may ask for a higher ``box_score_thresh`` or fewer ``box_detections_per_img`` than
    the file was exported with (filtered here, exactly as the graph would); anything else
    that would change the graph (sizes, NMS IoU, a lower threshold, more detections, other
    fields) is an :class:`FpnError` naming the value fixed at export.
    """
    path = Path(path)
    fmt = exported_format(path)
    meta, runner = read_metadata(path, fmt)
    assert fmt is not None  # read_metadata refused anything else
    model = ExportedDetector(path, fmt, meta, runner)
    cfg = model.config
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():
        fixed = getattr(cfg, key, None)
        if key == "box_score_thresh":
            if value < cfg.box_score_thresh:
                raise FpnError(
                    f"{path}: exported with score threshold {cfg.box_score_thresh}; a lower one "
                    f"({value}) needs a new export (fpn export --score-thr {value})"
                )
            model._min_score = float(value) if value > cfg.box_score_thresh else None
        elif key == "box_detections_per_img":
            if value > cfg.box_detections_per_img:
                raise FpnError(
                    f"{path}: exported with at most {cfg.box_detections_per_img} detections per image; "
                    f"{value} needs a new export (fpn export --max-dets {value})"
                )
            model._keep = int(value)
        elif value != fixed:
            option = {"box_nms_thresh": "nms-iou"}.get(key, key.replace("_", "-"))
            raise FpnError(
                f"{path}: {key} is fixed at export ({fixed}); for {value}, re-export with --{option} {value}"
            )
    # The run's view of the model: its thresholds, the graph's everything else.
    model.config = cfg.replace(
        box_score_thresh=given.get("box_score_thresh"),
        box_detections_per_img=given.get("box_detections_per_img"),
    )
    return model


def exported_config(path: str | os.PathLike) -> ModelConfig:
    """The model configuration stored in an exported file."""
    meta, _ = read_metadata(path)
    return ModelConfig.from_dict(meta["model_config"])
