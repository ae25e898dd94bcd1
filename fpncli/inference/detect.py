"""`fpn detect` as a plain function: expand sources, run the model, write JSON and pictures.

Outputs in ``out_dir``:
    predictions.json   ``{"images": [{"file", "width", "height", "detections": [{"box":
                       [x1, y1, x2, y2], "score", "category_id", "label"}], "annotated"}],
                       "errors":
                       [{"file", "error"}]}``; boxes in original-image pixels (EXIF
                       orientation applied). Rewritten atomically every few seconds, so it
                       is valid for the images done so far even after Ctrl-C, a crash or
                       a full disk; not touched before the first image (a run refused for
                       a bad option or output path leaves the previous file as it was).
    --coco-results     ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.
    annotated images   one per readable input, at the input's path relative to the common
                       folder of all inputs (so equal names in different folders never
                       collide), renamed ``<stem>_det`` (``_det2``, ...) where that path is
                       an input of the run or a file this tool did not write.
    .fpn-outputs.json  the ledger of the annotated files written here (see outputs.py):
                       a later run replaces only those, and never reads them as inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpncli.atomic import atomic_write, remove_stale_temporaries, write_json
from fpncli.data.sources import expand_sources
from fpncli.data.video import is_stream, is_video_file, stream_output_name
from fpncli.errors import FpnError
from fpncli.outputs import check_outputs, read_ledger, record_outputs, safe_targets
from fpncli.runtime.events import ProgressFn

PREDICTIONS_FILE = "predictions.json"
# Rewriting predictions.json at most this often (and less often as it grows, see run_detect)
# keeps a 10k-image run from spending its time rewriting the file.
_FLUSH_SECONDS = 2.0
# Annotated images waiting to be encoded; bounds memory when drawing is slower than the model.
_MAX_PENDING_DRAWS = 8


@dataclass
class DetectOptions:
    """Everything `fpn detect` needs besides the sources (``None`` = the model's own value)."""

    weights: str
    out_dir: Path
    score_thr: float = 0.5
    nms_iou: float | None = None
    max_dets: int | None = None
    classes: list[str] | None = None
    min_size: int | None = None
    max_size: int | None = None
    batch_size: int | None = None  # None: 2 on CUDA, 1 on CPU
    # None: up to 4. On CUDA: decoding processes. On the CPU: model replicas, each decoding
    # and detecting whole images (0: everything in this process).
    workers: int | None = None
    device: str = "auto"
    half: bool = False
    draw: bool = True
    recursive: bool = False
    coco_results: Path | None = None
    coco_annotations: Path | None = None
    max_pixels: int | None = None  # None: default_max_pixels()
    optimize: bool = True
    # Sliced inference and test-time augmentation (see inference/augment.py).
    slice_size: int | None = None
    slice_overlap: float | None = None  # None: augment.DEFAULT_SLICE_OVERLAP
    tta: str | None = None
    vid_stride: int = 1  # videos and streams: detect every Nth frame


@dataclass
class DetectSummary:
    """What a run did: counts, per-class detections, speed, where the outputs are."""

    images_total: int
    images_read: int = 0
    images_failed: int = 0
    detections: int = 0
    per_class: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    interrupted: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)
    predictions_path: Path | None = None
    coco_results_path: Path | None = None
    coco_unmatched: list[str] = field(default_factory=list)
    device: str = "cpu"
    weights: str = ""
    predictions: dict[str, Any] = field(default_factory=dict)
    videos_total: int = 0
    videos_failed: int = 0  # could not be opened, or ended in a decoding error
    frames: int = 0  # video frames detected in
    # (natural path, chosen path) of annotated copies renamed so as to replace no input
    # and no file this tool did not write.
    renamed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        done = self.images_read + self.images_failed
        return done / self.seconds if self.seconds > 0 else 0.0


def output_paths(
    paths: Sequence[Path],
    out_dir: Path,
    streams: Sequence[str] = (),
    reserved: Sequence[Path | str | None] = (),
) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """Where the annotated copy of each input file, then of each stream, goes; and the
    copies given another name than the natural one. ``reserved``: the run's other
    inputs and output files.

    A file's copy goes to its path relative to the inputs' common folder, under
    ``out_dir`` (equal names in different folders never collide); a stream's to
    ``out_dir/<stream_output_name>``. A copy never replaces an input of the run
    (``paths`` and ``reserved``), another copy, or a file that ``out_dir``'s ledger does
    not list as ours: it becomes ``<stem>_det<suffix>`` (or ``_det2``, ...) instead, see
    :func:`fpncli.outputs.safe_targets`.
    """
    absolute = [Path(os.path.abspath(p)) for p in paths]
    wanted: list[Path] = []
    if absolute:
        common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
        wanted = [out_dir / p.relative_to(common) for p in absolute]
    wanted += [out_dir / stream_output_name(s) for s in streams]
    others = [Path(p) for p in reserved if p is not None]
    return safe_targets(wanted, [*absolute, *others], owned=read_ledger(out_dir))


# --------------------------------------------------------------------------- classes


def resolve_classes(
    class_names: Sequence[str], category_ids: Sequence[int], wanted: Sequence[str] | None
) -> set[int]:
    """The model labels (1..K) to report: ``wanted`` names or category ids (comma-separated
    items allowed), or all; placeholder classes (``N/A`` in torchvision's COCO_V1) never."""
    from fpncli.modeling.weights import UNUSED_CLASS

    usable = {i + 1 for i, name in enumerate(class_names) if name != UNUSED_CLASS}
    if not wanted:
        return usable
    by_name = {name.lower(): i + 1 for i, name in enumerate(class_names) if name != UNUSED_CLASS}
    by_id = {cid: i + 1 for i, cid in enumerate(category_ids) if i + 1 in usable}
    labels: set[int] = set()
    named = False
    for item in wanted:
        for token in (t.strip() for t in str(item).split(",")):
            if not token:
                continue
            named = True
            if token.lower() in by_name:
                labels.add(by_name[token.lower()])
            elif token.lstrip("-").isdigit() and int(token) in by_id:
                labels.add(by_id[int(token)])
            else:
                examples = ", ".join([n for n in class_names if n != UNUSED_CLASS][:8])
                raise FpnError(
                    f"--classes: {token!r} is neither a class name nor a category id of "
                    f"this model (classes include: {examples}...)"
                )
    if not named:
        # An empty --classes would silently drop every detection.
        raise FpnError(f"--classes: no class given (got {', '.join(repr(str(w)) for w in wanted)})")
    return labels


# --------------------------------------------------------------------------- writing
def _coco_image_ids(paths: Sequence[Path], annotations: Path | None) -> tuple[dict[int, int], list[str]]:
    """Input index -> COCO image id, and the files the annotation file does not list.

    With an annotation file an image matches the entry whose ``file_name`` ends its path
    (so ``val2017/x.jpg`` and ``x.jpg`` both work); otherwise ids are 1..N in input order.
    """
    if annotations is None:
        return {i: i + 1 for i in range(len(paths))}, []
    from fpncli.data.coco import read_json

    data = read_json(annotations)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FpnError(f"{annotations}: not a COCO annotation file (no 'images' list)")
    by_name: dict[str, list[tuple[str, int]]] = {}
    for entry in data["images"]:
        if isinstance(entry, dict) and "file_name" in entry and "id" in entry:
            name = str(entry["file_name"]).replace("\\", "/")
            by_name.setdefault(name.rsplit("/", 1)[-1], []).append((name, entry["id"]))
    ids, unmatched = {}, []
    for i, p in enumerate(paths):
        posix = Path(os.path.abspath(p)).as_posix()
        candidates = [c for c in by_name.get(p.name, []) if posix.endswith("/" + c[0]) or posix == c[0]]
        if candidates:
            ids[i] = candidates[0][1]
        else:
            unmatched.append(str(p))
    return ids, unmatched


def _save_annotated(result, target: Path, names: list[str], keys: list[int]) -> None:
    from PIL import Image

    from fpncli.viz.draw import draw_detections

    image = Image.fromarray(result.image.permute(1, 2, 0).numpy())
    drawn = draw_detections(image, result.boxes.tolist(), names, result.scores.tolist(), keys)
    fmt = Image.registered_extensions().get(target.suffix.lower(), "PNG")
    params = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    # Atomic: a full disk or a kill leaves no partial picture and no temporary behind.
    atomic_write(target, lambda f: drawn.save(f, format=fmt, **params), binary=True, clean_stale=False)


# --------------------------------------------------------------------------- the run


def validate_options(options: DetectOptions) -> None:
    """Every numeric option in range, before anything is read or written."""
    if not 0.0 <= options.score_thr <= 1.0:
        raise FpnError(f"--score-thr must be in 0..1, got {options.score_thr}")
    if options.nms_iou is not None and not 0.0 < options.nms_iou <= 1.0:
        raise FpnError(f"--nms-iou must be in (0, 1], got {options.nms_iou}")
    if options.max_dets is not None and options.max_dets < 1:
        raise FpnError(f"--max-dets must be at least 1, got {options.max_dets}")
    for name in ("min_size", "max_size", "batch_size"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise FpnError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if options.workers is not None and options.workers < 0:
        raise FpnError(f"--workers must be 0 or more, got {options.workers}")
    if options.max_pixels is not None and options.max_pixels < 1:
        raise FpnError(f"--max-pixels must be at least 1, got {options.max_pixels}")
    from fpncli.inference.augment import check_slice, parse_tta

    check_slice(options.slice_size, options.slice_overlap)
    parse_tta(options.tta)
    if options.vid_stride < 1:
        raise FpnError(f"--vid-stride must be at least 1, got {options.vid_stride}")


def run_detect(
    sources: Sequence[str | os.PathLike],
    options: DetectOptions,
    progress: ProgressFn | None = None,
) -> DetectSummary:
    """Detect objects in every image of ``sources``; see the module docstring for outputs.

    Args:
        sources: files, folders and glob patterns (see :func:`expand_sources`).
        options: model, thresholds, speed and output settings.
        progress: receives ``{"event": "start", "images", "device", "weights"}`` once, then
            ``{"event": "image", "record", "summary"}`` after each image (``record``: its
            ``predictions.json`` entry, or ``{"file", "error"}``; ``summary``: the running one).

    Returns:
        The summary; ``summary.predictions`` holds what ``predictions.json`` holds.
        Ctrl-C ends the run early with ``summary.interrupted`` set and all outputs valid.
    """
    out_dir = Path(options.out_dir)
    validate_options(options)
    if out_dir.exists() and not out_dir.is_dir():
        raise FpnError(f"{out_dir}: exists and is not a folder")
    streams = [os.fspath(s) for s in sources if is_stream(s)]
    files = [s for s in sources if not is_stream(s)]
    # fail fast, before torch
    paths = (
        expand_sources(files, options.recursive, exclude=out_dir, videos=True) if files or not streams else []
    )
    video_files = [p for p in paths if is_video_file(p)]
    paths = [p for p in paths if not is_video_file(p)]
    videos: list[str] = [str(p) for p in video_files] + streams
    if videos:
        from fpncli.data.video import require_av

        require_av()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise FpnError(
                "videos and streams are detected in one process: run fpn detect on them without torchrun"
            )
    weights_file = options.weights if options.weights not in ("coco", "none") else None
    # Nothing is written before every option and output path has been checked.
    check_outputs(
        folders=[out_dir],
        files=[out_dir / PREDICTIONS_FILE, options.coco_results],
        inputs=[*paths, *video_files, options.coco_annotations, weights_file],
    )

    import torch

    from fpncli.evaluation.coco_eval import detections_to_coco
    from fpncli.inference import sharded as DI
    from fpncli.modeling.exported import exported_format, load_for_inference

    # An exported file (fpn export) runs on the CPU: "auto" means the CPU for it.
    exported = weights_file is not None and exported_format(weights_file) is not None
    device = DI.inference_device("cpu" if exported and options.device == "auto" else options.device)
    main, world = DI.is_main(), DI.world()[1]  # under torchrun only rank 0 writes the JSON files
    if options.half and device.type != "cuda":
        raise FpnError("--half (float16) needs a CUDA device; this run is on the CPU")

    model, source = load_for_inference(
        options.weights,
        min_size=options.min_size,
        max_size=options.max_size,
        box_score_thresh=options.score_thr,
        box_nms_thresh=options.nms_iou,
        box_detections_per_img=options.max_dets,
    )
    cfg = model.config
    keep = resolve_classes(cfg.class_names, cfg.category_ids, options.classes)
    max_dets = cfg.box_detections_per_img
    filtered = len(keep) < len(cfg.class_names)
    if filtered:
        # Filter before the top-k cut, not after it: let the model keep every detection,
        # drop the unwanted classes, then take the best max_dets.
        model.set_detections_per_img(1_000_000)
    if options.optimize and not exported:
        from fpncli.modeling.optimize import optimize_for_inference

        # CPU: NNPACK's Winograd needs NCHW; CUDA: channels-last feeds the tensor cores.
        model = optimize_for_inference(
            model, inplace=True, winograd=device.type == "cpu", channels_last=device.type == "cuda"
        )
    from fpncli.inference.augment import augmented, check_slice, parse_tta

    model = augmented(
        model,
        check_slice(options.slice_size, options.slice_overlap),
        parse_tta(options.tta),
        max_pixels=options.max_pixels,
    )
    cuda = device.type == "cuda"
    batch_size = options.batch_size or (2 if cuda else 1)
    # The cores of a machine are shared by its torchrun processes.
    cores = max(1, (os.cpu_count() or 1) // DI.local_world_size())
    workers = options.workers if options.workers is not None else min(4, cores)
    # On the CPU each worker is a whole single-threaded model replica (see predict_images).
    cpu_processes = workers if not cuda else 0

    targets: list[Path] = []
    video_targets: list[Path | None] = [None] * len(videos)
    renamed: list[tuple[Path, Path]] = []
    if options.draw:
        planned, renamed = output_paths(
            paths + video_files,
            out_dir,
            streams,
            reserved=[
                options.coco_annotations,
                weights_file,
                out_dir / PREDICTIONS_FILE,
                options.coco_results,
            ],
        )
        targets, video_targets = planned[: len(paths)], list(planned[len(paths) :])
    image_ids: dict[int, int] = {}
    unmatched: list[str] = []
    if options.coco_results is not None:
        image_ids, unmatched = _coco_image_ids(paths, options.coco_annotations)
    predictions_path = out_dir / PREDICTIONS_FILE
    summary = DetectSummary(
        images_total=len(paths),
        videos_total=len(videos),
        device=str(device) if world == 1 else f"{device.type} x {world} processes",
        weights=source,
        predictions_path=predictions_path,
        coco_unmatched=unmatched,
        renamed=[(str(a), str(b)) for a, b in renamed],
    )
    images: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = summary.errors
    coco: list[dict[str, Any]] = []
    summary.predictions = {"images": images, "errors": errors}
    video_records: list[dict[str, Any]] = []
    if videos:
        summary.predictions["videos"] = video_records

    def flush() -> None:
        if not main:
            return
        write_json(predictions_path, summary.predictions, indent=None)
        if options.coco_results is not None:
            write_json(Path(options.coco_results), coco, indent=None)

    if main and options.draw:
        # Listed before they are written, so no later run takes them for the user's files.
        record_outputs(out_dir, [t for t in [*targets, *video_targets] if t is not None])
    # A killed earlier run may have left temporaries of annotated images: clean each folder once.
    for folder in sorted({t.parent for t in [*targets, *video_targets] if t is not None}):
        remove_stale_temporaries(folder, any_name=True)
    index = {p: i for i, p in enumerate(paths)}
    drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fpn-draw") if options.draw else None
    pending: list[Future] = []

    def select(result):
        """The result's boxes, scores and labels of the wanted classes (best max_dets)."""
        if not filtered:
            return result.boxes, result.scores, result.labels
        mask = torch.tensor([int(label) in keep for label in result.labels.tolist()], dtype=torch.bool)
        return result.boxes[mask][:max_dets], result.scores[mask][:max_dets], result.labels[mask][:max_dets]

    def detection_records(boxes, scores, labels) -> tuple[list[dict[str, Any]], list[str], list[int]]:
        """predictions.json's detections, and the class names and category ids."""
        label_list = labels.tolist()
        cat_ids = [cfg.category_ids[label - 1] for label in label_list]
        names = [cfg.class_names[label - 1] for label in label_list]
        detections = [
            {
                "box": [round(v, 2) for v in box],
                "score": round(score, 4),
                "category_id": cid,
                "label": name,
            }
            for box, score, cid, name in zip(boxes.tolist(), scores.tolist(), cat_ids, names)
        ]
        return detections, names, cat_ids

    def draw(result) -> None:
        """Queue the annotated picture; under torchrun on the process that holds the pixels."""
        if drawer is None or result.error is not None:
            return
        boxes, scores, labels = select(result)
        names = [cfg.class_names[label - 1] for label in labels.tolist()]
        cat_ids = [cfg.category_ids[label - 1] for label in labels.tolist()]
        drawn = dataclasses.replace(result, boxes=boxes, scores=scores)
        pending.append(drawer.submit(_save_annotated, drawn, targets[index[result.path]], names, cat_ids))
        while pending and (pending[0].done() or len(pending) > _MAX_PENDING_DRAWS):
            pending.pop(0).result()  # re-raises a failed write

    start = time.perf_counter()
    last_flush, flush_every = start, _FLUSH_SECONDS

    def maybe_flush() -> None:
        nonlocal last_flush, flush_every
        if time.perf_counter() - last_flush >= flush_every:
            t0 = time.perf_counter()
            flush()
            last_flush = time.perf_counter()
            # A big run's file takes long to rewrite: keep that under ~10% of the time.
            flush_every = max(_FLUSH_SECONDS, 10 * (last_flush - t0))

    video_state = _VideoRun(
        model=model,
        device=device,
        half=options.half,
        stride=options.vid_stride,
        summary=summary,
        records=video_records,
        select=select,
        detection_records=detection_records,
        progress=progress,
        after_frame=maybe_flush,
        start=start,
    )
    # No early empty flush: a run that fails before its first image leaves the previous
    # predictions.json as it was; from the first flush on the file holds this run's results.
    if progress is not None:
        progress(
            {
                "event": "start",
                "images": len(paths),
                "videos": len(videos),
                "device": summary.device,
                "weights": source,
            }
        )
    try:
        for result in DI.predict_sharded(
            model,
            paths,
            device=device,
            batch_size=batch_size,
            workers=workers,
            half=options.half,
            max_pixels=options.max_pixels,
            keep_images=options.draw,
            cpu_processes=cpu_processes,
            on_local=draw,
        ):
            i = index[result.path]
            if result.error is not None:
                record: dict[str, Any] = {"file": str(result.path), "error": result.error}
                errors.append(record)
                summary.images_failed += 1
            else:
                boxes, scores, labels = select(result)
                label_list = labels.tolist()
                detections, names, _ = detection_records(boxes, scores, labels)
                record = {
                    "file": str(result.path),
                    "width": result.width,
                    "height": result.height,
                    "detections": detections,
                }
                if options.draw:
                    record["annotated"] = str(targets[i])
                if options.coco_results is not None and i in image_ids:
                    record["image_id"] = image_ids[i]
                    coco.extend(
                        detections_to_coco(
                            boxes.tolist(), scores.tolist(), label_list, image_ids[i], cfg.category_ids
                        )
                    )
                images.append(record)
                summary.images_read += 1
                summary.detections += len(detections)
                summary.per_class.update(names)
            summary.seconds = time.perf_counter() - start
            if progress is not None:
                progress({"event": "image", "record": record, "summary": summary})
            maybe_flush()
        for source, target in zip(videos, video_targets):
            _detect_video(source, target, video_state)
    except KeyboardInterrupt:
        summary.interrupted = True
    except BaseException:
        # Keep what is done (e.g. the disk filled while drawing): record the finished images,
        # then report the original error (a second write failure must not hide it).
        _finish(drawer, summary, start)
        with contextlib.suppress(FpnError):
            flush()
        raise
    _finish(drawer, summary, start)
    flush()
    for f in pending:
        f.result()
    if options.coco_results is not None:
        summary.coco_results_path = Path(options.coco_results)
    return summary


def _finish(drawer: ThreadPoolExecutor | None, summary: DetectSummary, start: float) -> None:
    if drawer is not None:
        drawer.shutdown(wait=True)
    summary.seconds = time.perf_counter() - start


# --------------------------------------------------------------------------- videos


@dataclass
class _VideoRun:
    """What :func:`_detect_video` shares with :func:`run_detect`'s image loop."""

    model: Any
    device: Any
    half: bool
    stride: int
    summary: DetectSummary
    records: list[dict[str, Any]]
    select: Callable[[Any], tuple[Any, Any, Any]]
    detection_records: Callable[..., tuple[list[dict[str, Any]], list[str], list[int]]]
    progress: ProgressFn | None
    after_frame: Callable[[], None]
    start: float


def _detect_video(source: str, target: Path | None, run: _VideoRun) -> None:
    """Detect in every ``stride``-th frame of a video file or stream; its ``videos`` entry in
    predictions.json grows frame by frame, and the annotated video (when ``target``) gets
    every frame. A source that cannot be opened, or a decoding fault, is one entry in
    ``errors``; the frames before the fault are kept. Ctrl-C leaves a finished video."""
    import numpy as np
    import torch
    from PIL import Image

    from fpncli.data.video import VideoReader, VideoWriter
    from fpncli.inference.predict import ImageResult
    from fpncli.viz.draw import draw_detections

    summary, progress = run.summary, run.progress
    try:
        reader = VideoReader(source)
    except FpnError as exc:
        summary.errors.append({"file": source, "error": str(exc)})
        summary.videos_failed += 1
        if progress is not None:
            progress({"event": "video_error", "file": source, "error": str(exc), "summary": summary})
        return
    record: dict[str, Any] = {
        "file": source,
        "width": reader.width,
        "height": reader.height,
        "fps": round(float(reader.rate), 3),
        "frames_total": reader.frames_total,
        "vid_stride": run.stride,
        "annotated": None,
        "frames": [],
    }
    run.records.append(record)
    writer: VideoWriter | None = None
    try:
        if target is not None:
            writer = VideoWriter(target, reader.width, reader.height, reader.rate)
        if progress is not None:
            progress({"event": "video", "file": source, "frames_total": reader.frames_total})
        run.model.eval().to(run.device)
        shown: tuple[list, list, list, list] = ([], [], [], [])  # drawn on the frames in between
        for frame in reader:
            if frame.index % run.stride == 0:
                height, width = frame.rgb.shape[:2]
                pixels = torch.from_numpy(frame.rgb).to(run.device).permute(2, 0, 1).float().div_(255)
                with torch.inference_mode():
                    prepared = run.model.prepare_image(pixels, inplace=True)
                    out = run.model.detect_prepared([prepared], [(height, width)], half=run.half)[0]
                result = ImageResult(
                    Path(source),
                    width,
                    height,
                    out["boxes"].float().cpu(),
                    out["scores"].float().cpu(),
                    out["labels"].cpu(),
                )
                boxes, scores, labels = run.select(result)
                detections, names, cat_ids = run.detection_records(boxes, scores, labels)
                record["frames"].append(
                    {"frame": frame.index, "time": round(frame.time, 4), "detections": detections}
                )
                summary.frames += 1
                summary.detections += len(detections)
                summary.per_class.update(names)
                shown = (boxes.tolist(), names, scores.tolist(), cat_ids)
            if writer is not None:
                drawn = draw_detections(Image.fromarray(frame.rgb), shown[0], shown[1], shown[2], shown[3])
                writer.write(np.asarray(drawn))
            summary.seconds = time.perf_counter() - run.start
            if progress is not None:
                progress(
                    {
                        "event": "frame",
                        "file": source,
                        "frame": frame.index,
                        "frames_total": reader.frames_total,
                        "detected": frame.index % run.stride == 0,
                        "summary": summary,
                    }
                )
            run.after_frame()
        if reader.error is not None:
            summary.errors.append({"file": source, "error": reader.error})
            summary.videos_failed += 1
    finally:
        reader.close()
        if writer is not None:
            done = writer.close()
            record["annotated"] = str(done) if done is not None else None
