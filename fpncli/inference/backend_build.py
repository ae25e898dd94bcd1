"""The paths a detector runs on (``--backend``), whether each is installed here, and a model
built for one of them at one precision: the PyTorch model rewritten in place (``torch``,
``winograd``), or its exported ONNX graph, int8-quantized for ``int8`` and read from the graph
cache when it holds it (``onnxruntime``, ``openvino``). :mod:`fpncli.inference.backends`
chooses the path; :mod:`fpncli.inference.auto_path` resolves ``--backend auto``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpncli.inference.settings import InferenceArgs

EXACT = ("torch", "winograd", "onnxruntime", "openvino")
GRAPH = ("onnxruntime", "openvino")  # the paths that run the exported ONNX graph
BF16_AUTO = "the fastest bf16 path installed"


@dataclass
class PathChoice:
    """What runs and why (the run's header line)."""

    backend: str
    precision: str
    reason: str

    def describe(self) -> str:
        return f"{self.backend} {self.precision} ({self.reason})"


def installed(backend: str) -> bool:
    """Whether ``backend`` can run here."""
    if backend == "winograd":
        from fpncli.modeling.optimize import winograd_available

        return winograd_available()
    if backend in GRAPH:
        try:
            __import__("onnxruntime" if backend == "onnxruntime" else "openvino")
            __import__("onnx")
        except ImportError:
            return False
    return True


def static_default() -> str:
    """The path without a measurement: NNPACK's Winograd where this PyTorch has it."""
    return "winograd" if installed("winograd") else "torch"


def build(
    model: Any,
    backend: str,
    precision: str,
    device_type: str,
    calibration: Sequence[Path] = (),
    source: str = "",
    args: InferenceArgs | None = None,
    note: Callable[[str], None] | None = None,
) -> Any:
    """``model`` (an ``FPNFasterRCNN``; rewritten in place for the PyTorch paths) as ``backend``
    runs it at ``precision``; ``note`` hears of a calibration before it starts."""
    from fpncli.modeling.optimize import optimize_for_inference

    if backend in ("torch", "winograd"):
        cuda = device_type == "cuda"
        winograd = backend == "winograd" and not cuda
        # NNPACK wants NCHW; oneDNN (and CUDA's tensor cores) run channels-last natively.
        model = optimize_for_inference(model, inplace=True, winograd=winograd, channels_last=not winograd)
        if precision == "bf16":
            _bf16_backbone(model, device_type)
        return model
    from fpncli.inference import graph_cache
    from fpncli.modeling.export import onnx_bytes
    from fpncli.modeling.exported import ExportedDetector

    meta = graph_metadata(model, source)
    # ONNX Runtime gains from the Winograd graph; OpenVINO and int8 want direct convolutions.
    winograd = backend == "onnxruntime" and precision == "fp32"
    cache = graph_cache.limit_bytes() > 0
    state = graph_cache.state_digest(model) if cache else ""
    fp32_key = graph_key(state, meta, winograd, "fp32") if cache else None

    def export() -> bytes:
        return onnx_bytes(model, meta, winograd=winograd)

    if precision == "int8":
        from fpncli.deploy.quantize import quantize_graph

        where = str(args.calibrate) if args is not None and args.calibrate is not None else "the run's images"
        from fpncli.data.images import default_max_pixels

        # The cap calibration reads images under (FPN_MAX_PIXELS when not given): part of the key.
        max_pixels = (args.max_pixels if args else None) or default_max_pixels()
        method = (args.calibration if args is not None else None) or "minmax"

        def quantized() -> bytes:
            if note is not None:
                ranges = "" if method == "minmax" else f" ({method} ranges)"
                note(f"int8: calibrating on {len(calibration)} image(s){ranges}")
            fp32, _ = graph_cache.cached_graph(fp32_key, export)
            sizes = (int(model.config.min_size), int(model.config.max_size))
            return quantize_graph(
                fp32, calibration, where=where, max_pixels=max_pixels, sizes=sizes, method=method
            )

        int8_key = graph_key(state, meta, False, "int8", calibration, max_pixels, method) if cache else None
        graph, saved = graph_cache.cached_graph(int8_key, quantized)
    else:
        graph, saved = graph_cache.cached_graph(fp32_key, export)
    ov_precision = "bf16" if precision == "bf16" else "f32"
    detector = ExportedDetector(
        Path(f"<{backend} {precision} graph of {source or 'the model'}>"),
        "onnx",
        meta,
        None,
        data=graph,
        engine=backend,
        precision=ov_precision,
    )
    detector.config = model.config  # the run's thresholds (the graph has them too)
    detector.graph_reused = saved is not None
    detector.graph_saved_seconds = saved or 0.0
    return detector


def graph_metadata(model: Any, source: str) -> dict[str, Any]:
    """The export metadata of ``model``'s graph: its configuration, with the number of
    detections the model keeps now (``fpn detect --classes`` raises it before the class
    filter), which the traced graph holds."""
    from fpncli.deploy.metadata import export_metadata

    meta = export_metadata(model, "onnx", source)
    live = getattr(getattr(model, "roi_heads", None), "detections_per_img", None)
    if live is not None:
        meta["model_config"]["box_detections_per_img"] = int(live)
    return meta


def graph_key(
    state: str,
    meta: dict[str, Any],
    winograd: bool,
    precision: str,
    calibration: Sequence[Path] = (),
    max_pixels: int | None = None,
    method: str = "minmax",
) -> str:
    """The graph cache's key for the graph (Winograd or direct convolutions; fp32, or int8
    calibrated on ``calibration`` by ``method``) of the model whose state digest is ``state``."""
    from fpncli.inference import graph_cache

    kind: dict[str, Any] = {"winograd": winograd, "precision": precision}
    if precision == "int8":
        kind.update(calibration=graph_cache.files_fingerprint(calibration), max_pixels=max_pixels)
        if method != "minmax":  # keys of graphs cached before the choice existed stay valid
            kind["method"] = method
    return graph_cache.graph_key(state, meta, kind)


def _bf16_backbone(model: Any, device_type: str) -> None:
    """Run ``model.backbone`` (ResNet + neck) under bfloat16 autocast, its maps back in
    float32: RPN, RoIAlign, the box head, decoding and NMS stay float32."""
    import torch

    backbone = model.backbone
    inner = backbone.forward

    def forward(x: Any) -> Any:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            maps = inner(x)
        return OrderedDict((k, v.float()) for k, v in maps.items())

    backbone.forward = forward


def graph_refusal(model: Any) -> str | None:
    """Why ``model`` has no ONNX graph for the graph paths, or None."""
    from fpncli.deploy.formats import refusal

    return refusal(model.config, "onnx")
