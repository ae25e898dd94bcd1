"""The path a model runs on (``--backend``) at the precision asked for (``--precision``).

Exact paths (float32 detections equal to the model's, to float rounding):

* ``torch``: PyTorch's oneDNN kernels with BatchNorm folded and channels-last memory;
* ``winograd``: BatchNorm folded, 3x3 convolutions through NNPACK's Winograd (NCHW);
* ``onnxruntime``: the detector exported as one ONNX graph (``fpn export``'s, with Winograd
  3x3 convolutions) run by ONNX Runtime;
* ``openvino``: the same graph, direct convolutions, compiled by OpenVINO (optional extra).

On the CPU each runs as single-threaded replicas, one per core (processes for the PyTorch
paths, threads sharing one session for the graph paths). ``auto``
(:mod:`fpncli.inference.auto_path`) takes the fastest that :mod:`fpncli.inference.probe`
measured on this CPU (cached per CPU model, flags and library versions), measures now when
there is no cache and the run is long enough to repay it, and otherwise takes the static
default (Winograd where NNPACK exists).

Reduced precision: ``bf16`` (CPUs with AVX512-BF16 or AMX, or CUDA) runs the exported graph
with OpenVINO's bfloat16 inference precision when OpenVINO is installed (OpenVINO chooses which
ops stay float32), else the backbone and neck (the bulk of the multiply-adds) under PyTorch's
bfloat16 autocast with the heads and box decoding in float32;
``int8`` quantizes the graph's convolutions (:mod:`fpncli.deploy.quantize`) for OpenVINO
(when installed: its int8 kernels ran the graph ~2x faster than ONNX Runtime's here) or ONNX
Runtime; ``fp16`` is ``--half`` on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fpncli.errors import FpnError
from fpncli.inference.auto_path import resolve_auto
from fpncli.inference.backend_build import (
    BF16_AUTO,
    EXACT,
    GRAPH,
    PathChoice,
    build,
    graph_refusal,
    installed,
    static_default,
)
from fpncli.inference.settings import InferenceArgs

# An exported file run without --precision: at the precision it was exported at.
AS_EXPORTED = "as exported"

__all__ = ["EXACT", "PathChoice", "choose_path", "installed", "prepare", "prepare_path", "static_default"]


def check_bf16(device_type: str) -> None:
    """bfloat16 only where it is native: one line otherwise."""
    import torch

    if device_type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise FpnError("--precision bf16: this GPU has no bfloat16; use fp16 (--half) or fp32")
        return
    from fpncli.inference.probe import bf16_cap, cpu_info, has_native_bf16

    if not has_native_bf16():
        raise FpnError(
            f"--precision bf16: this CPU ({cpu_info()['model']}) has no native bfloat16 "
            "(AVX512-BF16 or AMX); use fp32 or int8"
        )
    cap = bf16_cap()
    if cap is not None:
        raise FpnError(
            f"--precision bf16: {cap} caps the kernels below bfloat16; unset it, or use fp32 or int8"
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
            raise FpnError(
                f"--backend {backend}: an exported file runs on its own runtime (an ONNX file on "
                "onnxruntime or openvino, a TorchScript file on PyTorch: leave --backend out)"
            )
        for given, flag in ((args.calibrate, "--calibrate"), (args.calibration, "--calibration")):
            if given is not None:
                raise FpnError(
                    f"{flag}: an exported file is not calibrated here (int8 files are calibrated "
                    "when exported: fpn export --precision int8 --calibrate DIR)"
                )
        if precision not in ("fp32", "int8"):
            raise FpnError(
                f"--precision {precision}: an exported file runs at the precision it was exported "
                f"with (fp32 or int8); for {precision} run the checkpoint it was exported from"
            )
        # Checked against the file once it is open (prepare); not given: the file's own.
        asked = AS_EXPORTED if args.precision is None and not args.half else precision
        return PathChoice(backend if backend != "auto" else "exported file", asked, "the file")
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
            "(torch or winograd; --analyze also at bf16)"
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
            # --analyze reads the PyTorch model's levels: torch's autocast then.
            backend = "openvino" if installed("openvino") and not needs_torch else "torch"
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
        choice = resolve_auto(model, args, images, candidates, source, on_note)
    if choice.backend in GRAPH and choice.reason != "the file":
        why = graph_refusal(model)
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
    if choice.precision == "int8" and getattr(model, "format", "onnx") == "torchscript":
        raise FpnError(
            f"{model.path}: a TorchScript file is fp32 (int8 files are ONNX: fpn export --precision int8)"
        )
    if choice.precision == "int8" and made != "int8":
        raise FpnError(
            f"{model.path}: exported as {made}; --precision int8 needs an int8 file "
            "(fpn export --precision int8) or the checkpoint"
        )
    if choice.precision not in (AS_EXPORTED, made):
        raise FpnError(
            f"{model.path}: exported as {made}; it runs only at that precision (leave --precision "
            f"out), --precision {choice.precision} runs the checkpoint it was exported from"
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
        cfg = model.config
        calibration = calibration_sample(
            pool, min_size=int(cfg.min_size), max_size=int(cfg.max_size), max_pixels=args.max_pixels
        )
        if not calibration:
            where = str(args.calibrate) if args.calibrate is not None else "the run's images"
            advice = "" if args.calibrate is not None else "; give --calibrate DIR"
            raise FpnError(
                f"{where}: no image to calibrate int8 with (none of {len(pool)} opens as an image "
                f"the model can resize){advice}"
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
