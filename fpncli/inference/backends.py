"""The path a model runs on (``--backend``) at the precision asked for (``--precision``).

Exact paths (float32 detections equal to the model's, to float rounding):

* ``torch``: PyTorch's oneDNN kernels with BatchNorm folded and channels-last memory;
* ``winograd``: BatchNorm folded, 3x3 convolutions through NNPACK's Winograd (NCHW);
* ``onnxruntime``: the detector exported as one ONNX graph (``fpn export``'s, with Winograd
  3x3 convolutions) run by ONNX Runtime;
* ``openvino``: the same graph, direct convolutions, compiled by OpenVINO (optional extra).

On the CPU each runs as single-threaded replicas, one per core (processes for the PyTorch
paths, threads sharing one session for the graph paths). ``auto`` takes the fastest that
:mod:`fpncli.inference.probe` measured on this CPU (cached per CPU model, flags and library
versions), measures now when there is no cache and the run is long enough to repay it, and
otherwise takes the static default (Winograd where NNPACK exists).

Reduced precision: ``bf16`` (CPUs with AVX512-BF16 or AMX, or CUDA) runs the exported graph
with OpenVINO's bfloat16 inference precision when OpenVINO is installed (OpenVINO chooses which
ops stay float32), else the backbone and neck (the bulk of the multiply-adds) under PyTorch's
bfloat16 autocast with the heads and box decoding in float32;
``int8`` quantizes the graph's convolutions (:mod:`fpncli.deploy.quantize`) for OpenVINO
(when installed: its int8 kernels ran the graph ~2x faster than ONNX Runtime's here) or ONNX
Runtime; ``fp16`` is ``--half`` on CUDA.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpncli.errors import FpnError
from fpncli.inference.settings import InferenceArgs

EXACT = ("torch", "winograd", "onnxruntime", "openvino")
GRAPH = ("onnxruntime", "openvino")  # the paths that run the exported ONNX graph
BF16_AUTO = "the fastest bf16 path installed"
# Below this many images a probe (two passes of one replica per core, ~10-20 s per candidate
# at 800 px) would cost more than it saves.
PROBE_MIN_IMAGES = 24


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


def check_bf16(device_type: str) -> None:
    """bfloat16 only where it is native: one line otherwise."""
    import torch

    if device_type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise FpnError("--precision bf16: this GPU has no bfloat16; use fp16 (--half) or fp32")
        return
    from fpncli.inference.probe import cpu_info, has_native_bf16

    if not has_native_bf16():
        raise FpnError(
            f"--precision bf16: this CPU ({cpu_info()['model']}) has no native bfloat16 "
            "(AVX512-BF16 or AMX); use fp32 or int8"
        )


def choose_path(
    args: InferenceArgs, device_type: str, *, exported: bool, images: int, needs_torch: bool = False
) -> PathChoice:
    """The path and why, before the model is loaded (a refusal costs nothing). ``auto`` on
    the CPU at float32 is ``"auto"`` here: :func:`prepare` measures or reads the cache.
    ``needs_torch``: slicing, TTA or eval's level analysis need the PyTorch model."""
    precision, backend = args.dtype, args.backend
    if precision == "bf16":
        check_bf16(device_type)
    if backend == "openvino" or (backend == "onnxruntime" and not exported):
        from fpncli.modeling.exported import import_onnxruntime, import_openvino

        import_openvino() if backend == "openvino" else import_onnxruntime()
    if exported:
        if backend not in ("auto", *GRAPH):
            raise FpnError(f"--backend {backend}: an exported file runs on onnxruntime or openvino")
        if precision not in ("fp32", "int8"):
            raise FpnError(
                f"--precision {precision}: an exported file runs at the precision it was exported "
                "with (fp32 or int8); for bf16 run the checkpoint it was exported from"
            )
        # int8 is checked against the file once it is open (prepare).
        return PathChoice(backend if backend != "auto" else "exported file", precision, "the file")
    if device_type == "cuda":
        if backend not in ("auto", "torch") or precision == "int8":
            what = f"--backend {backend}" if backend not in ("auto", "torch") else "--precision int8"
            raise FpnError(f"{what} runs on the CPU; pass --device cpu")
        return PathChoice("torch", precision, "CUDA" if backend == "auto" else "user choice")
    if precision == "fp16":
        raise FpnError("--precision fp16 needs a CUDA device; on the CPU use bf16 or int8")
    if needs_torch and (backend in GRAPH or precision == "int8"):
        raise FpnError(
            f"--backend {backend} / --precision {precision}: --slice, --tta and --analyze need a PyTorch path "
            "(torch or winograd, fp32 or bf16)"
        )
    if not args.optimize:
        if backend != "auto" or precision != "fp32":
            raise FpnError("--no-optimize runs the model as it is: it takes no --backend or --precision")
        return PathChoice("stock", "fp32", "--no-optimize")
    if precision == "bf16":
        if backend not in ("auto", "torch", "openvino"):
            raise FpnError(f"--precision bf16 runs on torch or openvino, not {backend}")
        if backend == "auto":
            # OpenVINO's bf16 kernels ran 1.5x PyTorch's autocast here (docs/speed.md).
            backend = "openvino" if installed("openvino") else "torch"
            return PathChoice(backend, precision, BF16_AUTO)
        return PathChoice(backend, precision, "user choice")
    if precision == "int8":
        if args.calibrate is not None:
            from fpncli.deploy.quantize import usable_calibration

            usable_calibration(Path(args.calibrate))  # a folder without a readable image: refused now
        if backend not in ("auto", "onnxruntime", "openvino"):
            raise FpnError(f"--precision int8 runs on onnxruntime or openvino, not {backend}")
        if not installed("onnxruntime"):
            from fpncli.modeling.exported import import_onnxruntime

            import_onnxruntime()
        if backend == "auto":
            # OpenVINO runs the quantized graph ~2x faster than ONNX Runtime here (docs/speed.md).
            backend = "openvino" if installed("openvino") else "onnxruntime"
            return PathChoice(backend, precision, "the fastest int8 runtime installed")
        return PathChoice(backend, precision, "user choice")
    if backend != "auto":
        if not installed(backend):
            raise FpnError(f"--backend {backend}: not available in this PyTorch build")
        return PathChoice(backend, precision, "user choice")
    return PathChoice("auto", precision, "")


def prepare(
    model: Any,
    choice: PathChoice,
    args: InferenceArgs,
    device_type: str,
    *,
    images: int,
    calibration: Sequence[Path] = (),
    source: str = "",
    candidates: Sequence[str] = EXACT,
    on_note: Callable[[str], None] | None = None,
) -> tuple[Any, PathChoice]:
    """``(model ready to run, final choice)``: resolve ``auto`` (cache, probe or default),
    then rewrite ``model`` (in place where it can) for the chosen path."""
    if choice.backend == "auto":
        choice = _resolve_auto(model, args, images, candidates, source, on_note)
    if choice.backend in GRAPH and choice.reason != "the file":
        why = _graph_refusal(model)
        if why is not None and choice.precision == "bf16" and choice.reason == BF16_AUTO:
            choice = PathChoice("torch", "bf16", f"PyTorch autocast: {why}")
        elif why is not None:
            asked = (
                f"--precision {choice.precision}"
                if choice.precision == "int8"
                else f"--backend {choice.backend}"
            )
            raise FpnError(f"{source or 'the model'}: {asked} runs the exported graph, but {why}")
    if choice.reason == "the file":
        return _exported_file(model, choice)
    if choice.backend == "stock":
        return model, choice
    built = build(
        model, choice.backend, choice.precision, device_type, calibration, source, args, note=on_note
    )
    if getattr(built, "graph_reused", False):
        saved = f", {built.graph_saved_seconds:.0f} s saved" if built.graph_saved_seconds >= 1 else ""
        choice = PathChoice(choice.backend, choice.precision, f"{choice.reason}; graph from the cache{saved}")
    return built, choice


def _exported_file(model: Any, choice: PathChoice) -> tuple[Any, PathChoice]:
    """An ``fpn export`` file as it was exported: ``--precision int8`` only for an int8 file,
    whose default runtime is OpenVINO when installed (its int8 kernels ran the graph ~2x
    faster than ONNX Runtime's here)."""
    made = str(getattr(model, "precision", "fp32"))
    if choice.precision == "int8" and made != "int8":
        raise FpnError(
            f"{model.path}: exported as {made}; --precision int8 needs an int8 file "
            "(fpn export --precision int8) or the checkpoint"
        )
    backend, reason = choice.backend, "the file"
    if getattr(model, "format", "onnx") == "torchscript":
        if backend in GRAPH:
            raise FpnError(
                f"{model.path}: a TorchScript file runs on PyTorch; --backend {backend} runs ONNX files"
            )
        return model, PathChoice("torchscript", made, reason)
    if backend == "exported file" and made == "int8" and installed("openvino"):
        backend, reason = "openvino", "the file; the fastest int8 runtime installed"
    elif backend == "exported file":
        backend = "onnxruntime"
    if backend == "openvino":
        model.engine = "openvino"
    return model, PathChoice(backend, made, reason)


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

        def quantized() -> bytes:
            if note is not None:
                note(f"int8: calibrating on {len(calibration)} image(s)")
            fp32, _ = graph_cache.cached_graph(fp32_key, export)
            sizes = (int(model.config.min_size), int(model.config.max_size))
            return quantize_graph(fp32, calibration, where=where, max_pixels=max_pixels, sizes=sizes)

        int8_key = graph_key(state, meta, False, "int8", calibration, max_pixels) if cache else None
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
) -> str:
    """The graph cache's key for the graph (Winograd or direct convolutions; fp32, or int8
    calibrated on ``calibration``) of the model whose state digest is ``state``."""
    from fpncli.inference import graph_cache

    kind: dict[str, Any] = {"winograd": winograd, "precision": precision}
    if precision == "int8":
        kind.update(calibration=graph_cache.files_fingerprint(calibration), max_pixels=max_pixels)
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


def _graph_refusal(model: Any) -> str | None:
    """Why ``model`` has no ONNX graph for the graph paths, or None."""
    from fpncli.deploy.export import refusal

    return refusal(model.config, "onnx")


def _resolve_auto(
    model: Any,
    args: InferenceArgs,
    images: int,
    candidates: Sequence[str],
    source: str,
    on_note: Callable[[str], None] | None,
) -> PathChoice:
    from fpncli.inference import probe

    if args.slice_size is not None or args.tta is not None:
        candidates = [c for c in candidates if c in ("torch", "winograd")]  # they wrap the PyTorch model
    usable = [c for c in candidates if installed(c)]
    if _graph_refusal(model) is not None:
        usable = [c for c in usable if c not in GRAPH]  # e.g. deformable convolutions: no ONNX op
    # The winner depends on the CPU and libraries, and on the network and input size too.
    cfg = model.config
    key = f"{probe.machine_key()} | {cfg.backbone} {cfg.neck} {cfg.min_size}px"
    entry = None if args.reprobe else probe.cached(key)
    cores = probe.cpu_info()["cores"]
    if entry is not None and usable and set(entry.get("seconds", {})) >= set(usable):
        seconds = {k: float(v) for k, v in entry["seconds"].items() if k in usable}
        builds = _set_up_now(model, source, {k: float(v) for k, v in entry.get("builds", {}).items()}, usable)
        winner = probe.fastest(seconds, builds, images, cores)
        why = (
            "fastest"
            if winner == min(seconds, key=lambda k: seconds[k])
            else "fastest overall counting its set-up"
        )
        where = probe.cache_dir() / probe.CACHE_FILE
        return PathChoice(winner, "fp32", f"cached probe: {why} for {images} image(s); {where}")
    if images < PROBE_MIN_IMAGES and not args.reprobe:
        default = static_default()
        return PathChoice(default, "fp32", f"default; {images} image(s) are too few to probe (--reprobe)")
    if on_note is not None:
        on_note(f"probing {', '.join(usable)} on this CPU (once; cached)")
    height = int(model.config.min_size)
    width = min(int(model.config.max_size), round(height * 4 / 3))

    reused: dict[str, float] = {}

    def builder(name: str) -> Callable[[int], list[Callable[[Any], Any]]]:
        def make(replicas: int) -> list[Callable[[Any], Any]]:
            graph = name in GRAPH
            # Graph paths: one session shared by the replicas' threads, as fpn detect runs
            # them; PyTorch paths: one model copy per replica, as its worker processes have.
            models = [build(copy.deepcopy(model), name, "fp32", "cpu", source=source)]
            reused[name] = float(getattr(models[0], "graph_saved_seconds", 0.0))
            if graph:
                models[0].share_between_threads()
                models *= replicas
            else:
                models += [copy.deepcopy(models[0]) for _ in range(replicas - 1)]

            def runner(m: Any) -> Callable[[Any], Any]:
                def run(image: Any) -> Any:
                    size = (int(image.shape[1]), int(image.shape[2]))
                    return m.detect_prepared([m.prepare_image(image.clone())], [size])

                return run

            return [runner(m) for m in models]

        return make

    seconds, builds = probe.probe({name: builder(name) for name in usable}, height, width, replicas=cores)
    # The cache stores what a new model's set-up costs: a graph read from the graph cache
    # counts what making it cost.
    builds = {k: round(v + reused.get(k, 0.0), 3) for k, v in builds.items()}
    import datetime

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    best = min(seconds, key=lambda k: seconds[k])
    probe.remember(
        key, {"winner": best, "seconds": seconds, "builds": builds, "size": [height, width], "when": when}
    )
    # The probe stored this model's graphs: this run reads them instead of exporting.
    now = _set_up_now(model, source, builds, usable)
    winner = probe.fastest(seconds, now, images, cores)
    timings = ", ".join(
        f"{k} {v:.2f} (+{now[k]:.0f} s set-up)" for k, v in sorted(seconds.items(), key=lambda kv: kv[1])
    )
    return PathChoice(winner, "fp32", f"probed now, fastest for {images} image(s): s/image {timings}")


def _set_up_now(model: Any, source: str, builds: dict[str, float], usable: Sequence[str]) -> dict[str, float]:
    """``builds`` (each path's set-up for a model seen for the first time) less the export
    that the graph cache saves this ``model``'s ``usable`` graph paths."""
    from fpncli.inference import graph_cache

    graphs = [k for k in builds if k in GRAPH and k in usable]
    if not graphs or graph_cache.limit_bytes() == 0:
        return dict(builds)
    meta = graph_metadata(model, source)
    state = graph_cache.state_digest(model)
    now = dict(builds)
    for name in graphs:
        # As build makes them: ONNX Runtime's fp32 graph has Winograd convolutions.
        saved = graph_cache.made_seconds(graph_key(state, meta, name == "onnxruntime", "fp32"))
        now[name] = round(max(0.0, builds[name] - saved), 3)
    return now


def prepare_path(
    model: Any,
    args: InferenceArgs,
    choice: PathChoice,
    device_type: str,
    paths: Sequence[Path],
    source: str,
    progress: Callable[[dict[str, Any]], None] | None = None,
    *,
    images: int | None = None,
    candidates: Sequence[str] = EXACT,
) -> tuple[Any, PathChoice]:
    """:func:`prepare` for a run over ``paths`` (``images``: how many images in all, videos'
    frames counted): int8 calibrates on ``--calibrate``'s images or a sample of ``paths``;
    ``progress`` gets ``{"event": "note", "message"}`` before a probe or a calibration (none
    when the graph cache holds the calibrated graph)."""
    from fpncli.deploy.quantize import calibration_images, calibration_sample

    def note(message: str) -> None:
        if progress is not None:
            progress({"event": "note", "message": message})

    calibration: list[Path] = []
    if choice.precision == "int8" and choice.reason != "the file":  # an int8 file is calibrated
        pool = calibration_images(Path(args.calibrate)) if args.calibrate is not None else list(paths)
        sizes = {"min_size": int(model.config.min_size), "max_size": int(model.config.max_size)}
        calibration = calibration_sample(pool, **sizes)
        if not calibration:
            where = str(args.calibrate) if args.calibrate is not None else "the run's images"
            raise FpnError(
                f"{where}: no image to calibrate int8 with (none of {len(pool)} opens as an image "
                "the model can resize); give --calibrate DIR"
            )
    return prepare(
        model,
        choice,
        args,
        device_type,
        images=len(paths) if images is None else images,
        calibration=calibration,
        source=source,
        candidates=candidates,
        on_note=note,
    )
