"""`fpn export` as a plain function: write a detector as ONNX or TorchScript, proven equal.

The exported graph is :class:`fpncli.modeling.export.ExportableDetector`: an RGB uint8 image
of any size in, boxes in its pixels out, every pre- and post-processing step inside. Before
the file is written, the exported graph (ONNX Runtime for onnx, ``torch.jit.load`` for
torchscript, both loaded from the very bytes about to be written) and the PyTorch model run on
the check set: images of many sizes and both orientations, the smallest accepted sizes, one
without detections, and the user's ``--check-images``. Any detection that differs beyond
:data:`BOX_TOL` px / :data:`SCORE_TOL` is an error naming the image; then nothing is written.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpncli.atomic import atomic_write
from fpncli.errors import FpnError, first_line
from fpncli.outputs import check_outputs
from fpncli.runtime.events import ProgressFn

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from fpncli.modeling.detector import FPNFasterRCNN

FORMATS = ("onnx", "torchscript")
BOX_TOL = 0.01  # px, in the original image
SCORE_TOL = 1e-4
# Options a format cannot express: (config field, value) -> (those formats, reason). Every
# neck and RoI-pooling option of the registry exports today (tests/test_export.py keeps that
# true); an option that cannot is listed here and refused with its reason, before any work.
REFUSED: dict[tuple[str, Any], tuple[tuple[str, ...], str]] = {
    ("sac_deform", True): (
        ("onnx",),
        "ONNX has no operator for torchvision::deform_conv2d (TorchScript has)",
    ),
}


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


@dataclass
class CheckedImage:
    """One image of the self-check: PyTorch's detection count and the largest differences of
    the exported model's matched detections (box coordinates in px, scores)."""

    name: str
    width: int
    height: int
    detections: int
    box_diff: float = 0.0
    score_diff: float = 0.0
    near_limit: int = 0  # detections within SCORE_TOL of the threshold or the cut, allowed to differ


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

    @property
    def box_diff(self) -> float:
        return max((c.box_diff for c in self.images), default=0.0)

    @property
    def score_diff(self) -> float:
        return max((c.score_diff for c in self.images), default=0.0)


# --------------------------------------------------------------------------- check set


def synthetic_images(max_size: int) -> list[tuple[str, Tensor]]:
    """The built-in check set, ``(name, Tensor[H, W, 3] uint8)``: landscape, portrait, square,
    very wide and very tall images of odd sizes (so resizing and padding hit every case), the
    smallest accepted ones (1x1, and 1 px high at the longest side the model keeps), and a
    plain grey image (usually no detections). Smooth random colour fields with solid
    rectangles: something for a detector to fire on. Seeded: the same set on every run."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(16)
    sizes = {
        "landscape": (333, 500),
        "portrait": (500, 333),
        "square": (257, 257),
        "wide": (97, 701),
        "tall": (701, 97),
        "small": (37, 53),
        "smallest": (1, 1),
        "thinnest": (1, max_size),
    }
    out = []
    for name, (h, w) in sizes.items():
        coarse = torch.rand((1, 3, h // 32 + 2, w // 32 + 2), generator=g)
        img = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        for _ in range(6):
            y0, x0 = (int(torch.randint(0, max(1, s - 1), (1,), generator=g)) for s in (h, w))
            y1, x1 = y0 + max(1, h // 4), x0 + max(1, w // 4)
            img[:, y0:y1, x0:x1] = torch.rand((3, 1, 1), generator=g)
        out.append((f"{name} {w}x{h}", img.mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()))
    out.append(("grey 320x240", torch.full((240, 320, 3), 128, dtype=torch.uint8)))
    return out


def _user_images(folder: Path, max_size: int, min_size: int) -> tuple[list[tuple[str, Tensor]], list[str]]:
    from torchvision.transforms.functional import pil_to_tensor

    from fpncli.data.images import ImageReadError, model_size_problem, read_image
    from fpncli.data.sources import expand_sources

    images, skipped = [], []
    for path in expand_sources([folder]):
        try:
            img = read_image(path)
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        problem = model_size_problem(img.size[0], img.size[1], min_size, max_size)
        if problem is not None:
            skipped.append(f"{path}: {problem}")
            continue
        images.append((str(path), pil_to_tensor(img).permute(1, 2, 0).contiguous()))
    return images, skipped


# --------------------------------------------------------------------------- comparison


def compare_detections(
    name: str,
    ref: dict[str, Tensor],
    got: tuple[Tensor, Tensor, Tensor],
    score_thresh: float,
    max_dets: int,
    class_names: Sequence[str],
) -> CheckedImage:
    """Match the exported model's detections to PyTorch's (``ref``: boxes xyxy px, scores,
    labels); each must have a partner with the same label, score within :data:`SCORE_TOL`
    and every box coordinate within :data:`BOX_TOL` px.

    Detections scoring within SCORE_TOL of the score threshold, or of the last kept score when
    ``max_dets`` were kept, may be on one side only (a float rounding moves them across).

    Raises:
        FpnError: one line naming the image and the first detection without a partner.
    """
    import torch

    rb, rs, rl = ref["boxes"].float(), ref["scores"].float(), ref["labels"]
    gb, gs, gl = got[0].float(), got[1].float(), got[2]
    h_w = name
    result = CheckedImage(name, 0, 0, len(rs))
    taken = torch.zeros(len(gs), dtype=torch.bool)
    cut = min(float(rs.min()) if len(rs) else 1.0, float(gs.min()) if len(gs) else 1.0)
    full = len(rs) >= max_dets or len(gs) >= max_dets

    def may_differ(score: float) -> bool:
        return score - score_thresh <= SCORE_TOL or (full and score - cut <= SCORE_TOL)

    for i in range(len(rs)):
        box_diff = (gb - rb[i]).abs().amax(dim=1) if len(gb) else torch.zeros(0)
        score_diff = (gs - rs[i]).abs()
        ok = (~taken) & (gl == rl[i]) & (score_diff <= SCORE_TOL) & (box_diff <= BOX_TOL)
        if ok.any():
            j = int(torch.where(ok, box_diff, torch.full_like(box_diff, float("inf"))).argmin())
            taken[j] = True
            result.box_diff = max(result.box_diff, float(box_diff[j]))
            result.score_diff = max(result.score_diff, float(score_diff[j]))
            continue
        if may_differ(float(rs[i])):
            result.near_limit += 1
            continue
        label = class_names[int(rl[i]) - 1] if 0 < int(rl[i]) <= len(class_names) else str(int(rl[i]))
        nearest = ""
        same = (~taken) & (gl == rl[i])
        if same.any():
            k = int(torch.where(same, box_diff, torch.full_like(box_diff, float("inf"))).argmin())
            nearest = (
                f"; nearest exported {label}: box off by {float(box_diff[k]):.4g} px, "
                f"score by {float(score_diff[k]):.3g}"
            )
        box = ", ".join(f"{v:.1f}" for v in rb[i].tolist())
        raise FpnError(
            f"self-check failed on {h_w}: PyTorch's detection {i + 1} ({label} {float(rs[i]):.4f} "
            f"at [{box}]) has no equal in the exported model (tolerance {BOX_TOL} px, "
            f"{SCORE_TOL} score){nearest}; nothing written"
        )
    extra = [j for j in range(len(gs)) if not taken[j] and not may_differ(float(gs[j]))]
    if extra:
        j = extra[0]
        box = ", ".join(f"{v:.1f}" for v in gb[j].tolist())
        raise FpnError(
            f"self-check failed on {h_w}: the exported model has a detection PyTorch does not "
            f"(score {float(gs[j]):.4f} at [{box}]; {len(gs)} vs {len(rs)} detections); nothing written"
        )
    result.near_limit += sum(1 for j in range(len(gs)) if not taken[j])
    return result


# --------------------------------------------------------------------------- the run


def _metadata(model: FPNFasterRCNN, fmt: str, source: str) -> dict[str, Any]:
    import torch

    from fpncli import __version__
    from fpncli.modeling.exported import EXPORT_VERSION

    cfg = model.config
    return {
        "version": EXPORT_VERSION,
        "format": fmt,
        "fpncli": __version__,
        "torch": torch.__version__,
        "source": source,
        "model_config": cfg.to_dict(),
        "class_names": list(cfg.class_names),
        "category_ids": list(cfg.category_ids),
        "input": "image: uint8[H, W, 3] RGB, any size",
        "outputs": "boxes: float32[N, 4] xyxy in the input's pixels; scores: float32[N] decreasing; "
        "labels: int64[N] in 1..K (class_names[label - 1], category_ids[label - 1])",
    }


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


def _reference(model: FPNFasterRCNN, image: Tensor) -> dict[str, Tensor]:
    """PyTorch's detections as ``fpn detect`` computes them (prepare_image + detect_prepared)."""
    import torch

    with torch.inference_mode():
        x = model.prepare_image(image.permute(2, 0, 1).float().div(255))
        return model.detect_prepared([x], [(int(image.shape[0]), int(image.shape[1]))])[0]


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
    if options.check_images is not None and not Path(options.check_images).is_dir():
        raise FpnError(f"{options.check_images}: --check-images must be a folder of images")
    weights_file = options.weights if options.weights not in ("coco", "none") else None
    if options.weights == "none":
        raise FpnError(
            "--weights none would export a random model; give a checkpoint, a state dict or 'coco'"
        )
    check_outputs(files=[out], inputs=[weights_file, options.check_images])
    from fpncli.modeling.exported import import_onnxruntime
    from fpncli.weight_files import exported_format

    if weights_file is not None and exported_format(weights_file) is not None:
        raise FpnError(
            f"{weights_file}: is an exported model already; export from the checkpoint it came from"
        )
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
    for (key, value), (formats, reason) in REFUSED.items():
        if getattr(cfg, key, None) == value and fmt in formats:
            raise FpnError(f"{options.weights}: {key} {value} cannot be exported to {fmt}: {reason}")
    summary = ExportSummary(out, fmt, loaded.source)
    images = synthetic_images(cfg.max_size)
    if options.check_images is not None:
        extra, summary.skipped = _user_images(Path(options.check_images), cfg.max_size, cfg.min_size)
        if not extra:
            raise FpnError(
                f"{options.check_images}: no readable image to check with ({len(summary.skipped)} "
                f"skipped" + (f"; first: {summary.skipped[0]})" if summary.skipped else ")")
            )
        images += extra

    start = time.perf_counter()
    data = _export_bytes(model, fmt, _metadata(model, fmt, loaded.source), options.weights, winograd)
    summary.export_seconds = time.perf_counter() - start
    if progress is not None:
        progress({"event": "exported", "seconds": summary.export_seconds, "total": len(images)})
    start = time.perf_counter()
    run = _runner(data, fmt)
    for done, (name, image) in enumerate(images, start=1):
        try:
            got = run(image)
        except Exception as exc:
            first = first_line(exc)
            raise FpnError(
                f"self-check failed on {name}: the exported model raised ({first}); nothing written"
                + _winograd_hint(winograd)
            ) from None
        ref = _reference(model, image)
        try:
            checked = compare_detections(
                name, ref, got, cfg.box_score_thresh, cfg.box_detections_per_img, cfg.class_names
            )
        except FpnError as exc:
            raise FpnError(f"{exc}{_winograd_hint(winograd)}") from None
        checked.height, checked.width = int(image.shape[0]), int(image.shape[1])
        summary.images.append(checked)
        if progress is not None:
            progress({"event": "checked", "image": checked, "done": done, "total": len(images)})
    if not any(c.detections == 0 for c in summary.images):
        # No image of the set came out empty for this model: prove the empty case on a copy
        # of the graph whose threshold no score passes (ONNX Runtime used to fail there).
        summary.images.append(_check_empty(model, fmt, images[0], options.weights, winograd))
    summary.check_seconds = time.perf_counter() - start
    atomic_write(out, lambda f: f.write(data), binary=True)
    summary.size_bytes = len(data)
    return summary


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
        data = _export_bytes(model, fmt, _metadata(model, fmt, "empty-output probe"), weights, winograd)
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
