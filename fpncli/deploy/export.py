"""`fpn export` as a plain function: write a detector as ONNX or TorchScript, proven equal.

The exported graph is :class:`fpncli.modeling.export.ExportableDetector`: an RGB uint8 image
of any size in, boxes in its pixels out, every pre- and post-processing step inside. Before
the file is written it is checked: saved to a temporary file and run in a fresh process through
the loader ``fpn detect --weights FILE`` uses (:mod:`fpncli.deploy.fresh_run`), on the check
set (:mod:`fpncli.deploy.check_set`), and its detections compared with PyTorch's, to a
tolerance set by PyTorch's own float spread (:mod:`fpncli.deploy.selfcheck`). An ONNX graph
with Winograd convolutions that fails where direct convolutions pass is replaced by the direct
one (said in the summary); only a model no variant matches is refused, and then nothing is
written. The check's per-image differences and tolerances go into the file's metadata.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpncli.atomic import atomic_write
from fpncli.deploy.metadata import export_metadata, stored_metadata, with_report
from fpncli.deploy.selfcheck import BOX_TOL, SCORE_TOL, CheckedImage, compare_detections

__all__ = [
    "BOX_TOL",
    "FORMATS",
    "SCORE_TOL",
    "CheckedImage",
    "ExportOptions",
    "compare_detections",
    "run_export",
]
from fpncli.deploy.formats import FORMATS, refusal
from fpncli.errors import FpnError, first_line
from fpncli.outputs import check_outputs
from fpncli.runtime.events import ProgressFn

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from fpncli.modeling.detector import FPNFasterRCNN


@dataclass
class ExportOptions:
    """What ``fpn export`` does: ``weights`` (``coco``, a checkpoint or a torchvision state
    dict) to ``out`` in ``fmt``; the thresholds and sizes (``None`` = the model's) are fixed in
    the graph; ``check_images`` adds a folder of images to the self-check."""

    weights: str
    fmt: str
    out: Path
    check_images: Path | None = None
    score_thr: float | None = None
    nms_iou: float | None = None
    max_dets: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    # ONNX: the wide 3x3 convolutions as Winograd F(4x4, 3x3) (fpncli.modeling.winograd_graph).
    # TorchScript: BatchNorm folded and NNPACK's Winograd, as fpn detect (a CPU-only file).
    # None = yes for onnx, no for torchscript.
    winograd: bool | None = None
    # int8: the checked float graph's convolutions quantized (ONNX only, deploy/quantize.py),
    # calibrated on ``calibrate`` (default: ``check_images``).
    precision: str = "fp32"
    calibrate: Path | None = None
    calibration: str = "minmax"  # how activation ranges are taken (deploy/quantize.py)


@dataclass
class ExportSummary:
    out: Path
    format: str
    source: str
    size_bytes: int = 0
    export_seconds: float = 0.0
    check_seconds: float = 0.0
    images: list[CheckedImage] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable --check-images, "path: reason"
    winograd_convs: int = 0  # Winograd convolutions in the written graph
    notes: list[str] = field(default_factory=list)  # a fallback taken, a check made otherwise

    @property
    def excused(self) -> int:
        return sum(c.excused for c in self.images)

    def report(self) -> dict[str, Any]:
        """The check as stored in the file's metadata (``self_check``)."""
        return {
            "process": "fresh",
            "images": [c.to_json() for c in self.images],
            "notes": self.notes,
        }

    @property
    def box_diff(self) -> float:
        return max((c.box_diff for c in self.images), default=0.0)

    @property
    def score_diff(self) -> float:
        return max((c.score_diff for c in self.images), default=0.0)


# --------------------------------------------------------------------------- the run


def _runner(data: bytes, fmt: str) -> Any:
    """The exported graph from ``data`` as ``f(image) -> (boxes, scores, labels)`` tensors."""
    import warnings

    import torch

    from fpncli.modeling.export import INPUT_NAME
    from fpncli.modeling.exported import onnx_session

    if fmt == "onnx":
        session = onnx_session(data)

        def run(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            b, s, lab = session.run(None, {INPUT_NAME: image.numpy()})
            return torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(lab)

        return run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run_ts(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.inference_mode():
            return module(image)

    return run_ts


def _export_bytes(
    model: FPNFasterRCNN, fmt: str, meta: dict[str, Any], weights: str, winograd: bool = False
) -> bytes:
    from fpncli.modeling.export import onnx_bytes, torchscript_bytes

    try:
        if fmt == "onnx":
            return onnx_bytes(model, meta, winograd=winograd)
        return torchscript_bytes(model, meta, winograd=winograd)
    except FpnError:
        raise
    except Exception as exc:  # an op the exporter lacks: say which model and why, in one line
        first = first_line(exc)
        raise FpnError(
            f"{weights}: the {model.config.neck} model cannot be exported to {fmt} ({first})"
        ) from None


def _usable_labels(model: FPNFasterRCNN) -> Tensor | None:
    """The labels ``fpn detect`` reports (placeholder classes such as COCO_V1's "N/A" never),
    or None when that is every label."""
    import torch

    from fpncli.inference.classes import resolve_classes

    cfg = model.config
    usable = resolve_classes(cfg.class_names, cfg.category_ids, None)
    return torch.tensor(sorted(usable)) if len(usable) < len(cfg.class_names) else None


def _reference(model: FPNFasterRCNN, image: Tensor) -> dict[str, Tensor]:
    """PyTorch's detections as ``fpn detect`` reports them (prepare_image + detect_prepared,
    then placeholder classes such as COCO_V1's "N/A" dropped before the top-k cut)."""
    import contextlib

    import torch

    usable = _usable_labels(model)
    keep = model.config.box_detections_per_img
    limits = (
        model.inference_limits(detections_per_img=1_000_000)
        if usable is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), limits:
        x = model.prepare_image(image.permute(2, 0, 1).float().div(255))
        out = model.detect_prepared([x], [(int(image.shape[0]), int(image.shape[1]))])[0]
    if usable is None:
        return out
    mask = torch.isin(out["labels"], usable)
    return {k: v[mask][:keep] for k, v in out.items()}


def _references(
    model: FPNFasterRCNN, images: list[tuple[str, Tensor]]
) -> list[tuple[dict[str, Tensor], dict[str, Tensor], float]]:
    """Per image: PyTorch's eager detections, the same model's as ``fpn detect`` computes
    them (BatchNorm folded, Winograd convolutions on the CPU: equally valid float arithmetic,
    whose distance from the first is the image's float spread), and the resize scale
    (model-input px per image px)."""
    from fpncli.data.images import resized_size
    from fpncli.modeling.optimize import optimize_for_inference, winograd_available

    fast = optimize_for_inference(model, winograd=winograd_available())  # a copy
    cfg = model.config
    out = []
    for _, image in images:
        h, w = int(image.shape[0]), int(image.shape[1])
        scale = resized_size(w, h, cfg.min_size, cfg.max_size)[0] / w
        out.append((_reference(model, image), _reference(fast, image), scale))
    return out


def _check(
    data: bytes,
    fmt: str,
    model: FPNFasterRCNN,
    images: list[tuple[str, Tensor]],
    refs: list[tuple[dict[str, Tensor], dict[str, Tensor], float]],
) -> list[CheckedImage]:
    """Run the exported bytes in a fresh process on ``images`` and compare with ``refs``."""
    import tempfile

    import torch

    from fpncli.deploy.fresh_run import run_fresh

    with tempfile.TemporaryDirectory(prefix="fpn-export-") as tmp:
        path = Path(tmp) / ("model.onnx" if fmt == "onnx" else "model.torchscript")
        path.write_bytes(data)
        results = run_fresh(path, [image for _, image in images])
    cfg = model.config
    usable = _usable_labels(model)
    checked = []
    for (name, image), (ref, alt, scale), got in zip(images, refs, results):
        if isinstance(got, str):
            raise FpnError(f"self-check failed on {name}: the exported model raised ({got}); nothing written")
        if usable is not None:  # what fpn detect --weights FILE reports: placeholders dropped
            keep = torch.isin(got[2], usable)
            got = (got[0][keep], got[1][keep], got[2][keep])
        c = compare_detections(
            name,
            ref,
            got,
            cfg.box_score_thresh,
            cfg.box_detections_per_img,
            cfg.class_names,
            alt=alt,
            scale=scale,
        )
        c.height, c.width = int(image.shape[0]), int(image.shape[1])
        checked.append(c)
    return checked


def _written_by_fpn_export(path: Path) -> bool:
    """Whether ``path`` is a model file ``fpn export`` wrote (its metadata is there)."""
    from fpncli.weight_files import exported_format, onnx_metadata

    if exported_format(path) == "torchscript":  # recognised by its fpncli metadata only
        return True
    if path.suffix.lower() != ".onnx":
        return False
    try:
        return onnx_metadata(path) is not None
    except FpnError:  # not a readable ONNX graph
        return False


def _check_replaceable(out: Path) -> None:
    """An existing ``--out`` is replaced only when it is an earlier export: anything else (a
    checkpoint, an image, a document) is kept and the export refused in one line."""
    if out.is_file() and not _written_by_fpn_export(out):
        raise FpnError(
            f"{out}: exists and was not written by fpn export; choose another --out "
            "(an earlier export is replaced, any other file is kept)"
        )


def run_export(options: ExportOptions, progress: ProgressFn | None = None) -> ExportSummary:
    """Export ``options.weights``, check the exported graph against PyTorch, write ``options.out``.

    Args:
        options: see :class:`ExportOptions`.
        progress: receives ``{"event": "exported", "seconds"}`` once the graph is built, then
            ``{"event": "checked", "image": CheckedImage, "done", "total"}`` per checked image.

    Returns:
        The summary (what was written, the check's per-image differences).

    Raises:
        FpnError: a bad option or input, an unexportable model, or a failed self-check (then
            nothing is written).
    """
    fmt = options.fmt.lower()
    if fmt not in FORMATS:
        raise FpnError(f"unknown export format {options.fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(options.out)
    if fmt == "onnx" and out.suffix.lower() != ".onnx":
        raise FpnError(f"{out}: an ONNX file must end in .onnx (fpn detect --weights recognises it by that)")
    if fmt == "torchscript" and out.suffix.lower() == ".onnx":
        raise FpnError(f"{out}: a TorchScript file must not end in .onnx (use .torchscript or .pt)")
    # ONNX: on by default (the graph runs anywhere). TorchScript: NNPACK ties the file to the
    # CPU, so only when asked.
    winograd = options.winograd if options.winograd is not None else fmt == "onnx"
    from fpncli.deploy.quantize import check_int8_export
    from fpncli.weight_files import exported_format

    weights_file = options.weights if options.weights not in ("coco", "none") else None
    if options.weights == "none":
        raise FpnError(
            "--weights none would export a random model; give a checkpoint, a state dict or 'coco'"
        )
    # Before the options of the export itself (int8's calibration folder): they cannot help.
    if weights_file is not None and exported_format(weights_file) is not None:
        raise FpnError(
            f"{weights_file}: is an exported model already; export from the checkpoint it came from"
        )
    calibration = check_int8_export(options.precision, fmt, options.calibrate, options.check_images)
    if calibration is not None:
        winograd = False  # int8 quantizes direct convolutions (Winograd's transforms would lose more)
    if options.check_images is not None and not Path(options.check_images).is_dir():
        raise FpnError(f"{options.check_images}: --check-images must be a folder of images")
    check_outputs(files=[out], inputs=[weights_file, options.check_images])
    from fpncli.modeling.exported import import_onnxruntime

    if fmt == "onnx":
        import_onnxruntime()  # fail before any work: the check needs it
        try:
            import onnx  # noqa: F401
        except ImportError:
            from fpncli.weight_files import ONNX_INSTALL_HINT

            raise FpnError(f"exporting to ONNX needs the onnx package: {ONNX_INSTALL_HINT}") from None
    _check_replaceable(out)

    from fpncli.modeling.weights import load_detector

    loaded = load_detector(
        options.weights,
        min_size=options.min_size,
        max_size=options.max_size,
        box_score_thresh=options.score_thr,
        box_nms_thresh=options.nms_iou,
        box_detections_per_img=options.max_dets,
    )
    model = loaded.model.eval()
    cfg = model.config
    why = refusal(cfg, fmt)
    if why is not None:
        raise FpnError(f"{options.weights}: {why}")
    if calibration is not None:  # int8: sampled among the images this model can resize
        from fpncli.deploy.quantize import calibration_sample

        folder = options.calibrate or options.check_images
        calibration = calibration_sample(calibration, min_size=int(cfg.min_size), max_size=int(cfg.max_size))
        if not calibration:
            raise FpnError(f"{folder}: no image this model can resize to calibrate int8 with (too elongated)")
    summary = ExportSummary(out, fmt, loaded.source)
    from fpncli.deploy.check_set import synthetic_images, user_images

    images = synthetic_images()
    if options.check_images is not None:
        extra, summary.skipped = user_images(Path(options.check_images), cfg.min_size, cfg.max_size)
        if not extra:
            raise FpnError(
                f"{options.check_images}: no readable image to check with ({len(summary.skipped)} "
                f"skipped" + (f"; first: {summary.skipped[0]})" if summary.skipped else ")")
            )
        images += extra
    refs = _references(model, images)
    meta = export_metadata(model, fmt, loaded.source)
    data = b""
    failed: FpnError | None = None
    for use_winograd in [winograd, False] if winograd and fmt == "onnx" else [winograd]:
        start = time.perf_counter()
        data = _export_bytes(model, fmt, meta, options.weights, use_winograd)
        summary.export_seconds = time.perf_counter() - start
        if progress is not None:
            progress({"event": "exported", "seconds": summary.export_seconds, "total": len(images)})
        start = time.perf_counter()
        try:
            summary.images = _check(data, fmt, model, images, refs)
        except FpnError as exc:
            if failed is not None:  # the direct graph failed too: refuse with its line
                raise FpnError(f"{exc} (the Winograd graph failed too: {_first_clause(failed)})") from None
            if not use_winograd or fmt != "onnx":
                raise FpnError(f"{exc}{_winograd_hint(use_winograd)}") from None
            failed = exc
            continue
        summary.check_seconds = time.perf_counter() - start
        if failed is not None:
            summary.notes.append(
                "wrote direct 3x3 convolutions: the Winograd graph failed the self-check "
                f"({_first_clause(failed)}); direct ones run at about 0.85x its speed on the CPU"
            )
        summary.winograd_convs = int(json.loads(stored_metadata(data, fmt)).get("winograd_convs", 0))
        break
    if progress is not None:
        for done, checked in enumerate(summary.images, start=1):
            progress({"event": "checked", "image": checked, "done": done, "total": len(summary.images)})
    if not sum(c.detections for c in summary.images):
        # Nothing to compare above the model's threshold (an untrained model): compare its
        # raw top-k instead, on a copy of the graph with threshold 0.
        summary.images += _check_at_threshold_zero(
            model, fmt, images, options.weights, summary.winograd_convs > 0
        )
        summary.notes.append(
            f"no detections above the score threshold {cfg.box_score_thresh:g} on the check images: "
            "also compared the graph's top detections at threshold 0"
        )
    if not any(c.detections == 0 for c in summary.images):
        # No image of the set came out empty for this model: prove the empty case on a copy
        # of the graph whose threshold no score passes (ONNX Runtime used to fail there).
        summary.images.append(
            _check_empty(model, fmt, images[0], options.weights, summary.winograd_convs > 0)
        )
    if calibration is not None:
        from fpncli.deploy.quantize import quantize_graph

        data = quantize_graph(
            data,
            calibration,
            where=str(options.calibrate or options.check_images),
            sizes=(int(cfg.min_size), int(cfg.max_size)),
            method=options.calibration,
        )
        summary.notes.append(
            f"int8: convolutions quantized (per-channel, QDQ), calibrated on {len(calibration)} image(s) "
            f"({options.calibration} ranges); "
            "the check above is the float graph's: fpn eval --weights FILE shows int8's AP"
        )
    data = with_report(
        data,
        fmt,
        summary.report(),
        {"precision": "int8", "calibration": options.calibration} if calibration is not None else None,
    )
    atomic_write(out, lambda f: f.write(data), binary=True)
    summary.size_bytes = len(data)
    return summary


def _first_clause(exc: FpnError) -> str:
    """A failed check's line without its "; nothing written" tail."""
    return str(exc).split("; nothing written")[0].removeprefix("self-check failed ")


def _check_at_threshold_zero(
    model: FPNFasterRCNN, fmt: str, images: list[tuple[str, Tensor]], weights: str, winograd: bool
) -> list[CheckedImage]:
    """The check on a copy of the graph exported with score threshold 0 (its raw top-k)."""
    with model.inference_limits(score_thresh=0.0):
        saved = model.config
        model.config = saved.replace(box_score_thresh=0.0)
        try:
            data = _export_bytes(
                model, fmt, export_metadata(model, fmt, "threshold-0 probe"), weights, winograd
            )
            checked = _check(data, fmt, model, images, _references(model, images))
        finally:
            model.config = saved
    for c in checked:
        c.name = f"{c.name}, threshold 0"
    return checked


def _winograd_hint(winograd: bool) -> str:
    """What to add to a failed self-check of a Winograd graph: the way to a direct one."""
    if not winograd:
        return ""
    return " (the graph computes 3x3 convolutions by Winograd; --no-winograd exports direct ones)"


def _check_empty(
    model: FPNFasterRCNN, fmt: str, named: tuple[str, Tensor], weights: str, winograd: bool
) -> CheckedImage:
    """Export ``model`` with score threshold 1.0 (``score > 1`` is never true) and check that
    the graph returns empty outputs, as PyTorch does, instead of failing."""
    name, image = named
    with model.inference_limits(score_thresh=1.0):
        data = _export_bytes(model, fmt, export_metadata(model, fmt, "empty-output probe"), weights, winograd)
        ref = _reference(model, image)
    try:
        got = _runner(data, fmt)(image)
    except Exception as exc:
        first = first_line(exc)
        raise FpnError(
            f"self-check failed: with no detections the exported model raised ({first}); nothing written"
            + _winograd_hint(winograd)
        ) from None
    label = f"{name}, no detections (score threshold 1.0)"
    if len(ref["scores"]) or len(got[1]):
        raise FpnError(f"self-check failed on {label}: {len(got[1])} detections; nothing written")
    return CheckedImage(label, int(image.shape[1]), int(image.shape[0]), 0)
