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
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpncli.atomic import remove_stale_temporaries, write_json
from fpncli.data.coco import coco_image_ids
from fpncli.data.sources import expand_sources
from fpncli.data.video import is_stream, is_video_file
from fpncli.errors import FpnError
from fpncli.inference.annotated import output_paths, save_annotated
from fpncli.inference.backends import choose_path, prepare_path
from fpncli.inference.classes import resolve_classes
from fpncli.inference.settings import (
    DETECT_SCORE_THR,
    InferenceArgs,
    check_half,
    check_inference_options,
    inference_overrides,
    resolve_parallelism,
)
from fpncli.inference.video_detect import VideoRun, detect_video
from fpncli.outputs import check_outputs, record_outputs
from fpncli.runtime.events import ProgressFn
from fpncli.runtime.interrupts import deferred_interrupt

PREDICTIONS_FILE = "predictions.json"
# Rewriting predictions.json at most this often (and less often as it grows, see run_detect)
# keeps a 10k-image run from spending its time rewriting the file.
_FLUSH_SECONDS = 2.0
# Annotated images waiting to be encoded; bounds memory when drawing is slower than the model.
_MAX_PENDING_DRAWS = 8


@dataclass(kw_only=True)
class DetectOptions(InferenceArgs):
    """Everything `fpn detect` needs besides the sources: the inference options
    (:class:`~fpncli.inference.settings.InferenceArgs`, ``None`` = the model's own value)
    and what to keep and write."""

    weights: str
    out_dir: Path
    score_thr: float = DETECT_SCORE_THR
    classes: list[str] | None = None
    draw: bool = True
    recursive: bool = False
    coco_results: Path | None = None
    coco_annotations: Path | None = None
    vid_stride: int = 1  # videos and streams: detect every Nth frame
    track: str | None = None  # videos and streams: follow objects with this tracker (inference/tracking/)
    count_line: str | None = None  # with track: "x1,y1,x2,y2", count the tracks crossing it


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
    # False when the run ended before its first image: the previous files were left as they were.
    predictions_written: bool = False
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


# --------------------------------------------------------------------------- the run


def validate_options(options: DetectOptions) -> None:
    """Every numeric option in range, before anything is read or written."""
    check_inference_options(options)
    if options.vid_stride < 1:
        raise FpnError(f"--vid-stride must be at least 1, got {options.vid_stride}")
    from fpncli.inference.tracking.session import check_track_options

    check_track_options(options.track, options.count_line)


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
    if options.track is not None and not videos:
        raise FpnError("--track follows objects across video frames; no source is a video or stream")
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
    from fpncli.modeling.weights import load_for_inference
    from fpncli.weight_files import exported_format

    # An exported file (fpn export) runs on the CPU: "auto" means the CPU for it.
    exported = weights_file is not None and exported_format(weights_file) is not None
    device = DI.inference_device("cpu" if exported and options.device == "auto" else options.device)
    main, world = DI.is_main(), DI.world()[1]  # under torchrun only rank 0 writes the JSON files
    check_half(options, device.type)
    track = None
    if options.track is not None:
        from fpncli.inference.tracking.session import plan_tracking

        track = plan_tracking(
            options.track, options.score_thr, options.count_line, weights_file if exported else None
        )
    # The path (--backend, --precision) is settled before the model loads: a refusal costs nothing.
    choice = choose_path(
        options,
        device.type,
        exported=exported,
        images=len(paths) + 1000 * len(videos),  # a video is many images
        needs_torch=options.slice_size is not None or options.tta is not None,
    )
    # With --track the detector may run lower, for the tracker (see inference/tracking/adapter.py).
    model_thr = track.detector_thr if track is not None else options.score_thr

    model, source = load_for_inference(options.weights, **inference_overrides(options, score_thr=model_thr))
    cfg = model.config
    keep = resolve_classes(cfg.class_names, cfg.category_ids, options.classes)
    max_dets = cfg.box_detections_per_img
    filtered = len(keep) < len(cfg.class_names)
    if filtered:
        # Filter before the top-k cut, not after it: let the model keep every detection,
        # drop the unwanted classes, then take the best max_dets.
        model.set_detections_per_img(1_000_000)
    model, choice = prepare_path(
        model, options, choice, device.type, paths, source, progress, images=len(paths) + 1000 * len(videos)
    )
    from fpncli.inference.augment import augmented, check_slice, parse_tta

    model = augmented(
        model,
        check_slice(options.slice_size, options.slice_overlap),
        parse_tta(options.tta),
        max_pixels=options.max_pixels,
    )
    cuda = device.type == "cuda"
    # The cores of a machine are shared by its torchrun processes.
    plan = resolve_parallelism(options, cuda, cores=max(1, (os.cpu_count() or 1) // DI.local_world_size()))
    batch_size, workers, cpu_processes = plan.batch_size, plan.workers, plan.cpu_replicas

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
        image_ids, unmatched = coco_image_ids(paths, options.coco_annotations)
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
        summary.predictions_written = True

    def flush_if_begun() -> None:
        """A run stopped before its first image or video frame (a runtime refusing the graph
        as the first image starts, Ctrl-C then, or while a stream waits for its first frame)
        leaves the previous run's files as they were; one that has begun writes what it has.
        (A video's record exists from the moment it opens: frames, not records, count.)"""
        if images or errors or summary.frames or summary.predictions_written:
            flush()

    if main and options.draw:
        # Listed before they are written, so no later run takes them for the user's files.
        record_outputs(out_dir, [t for t in [*targets, *video_targets] if t is not None])

    def seal() -> None:
        """Record the written copies' size and time in the ledger: a file someone puts at
        one of these names later is theirs, not ours."""
        if main and options.draw:
            written = [t for t in [*targets, *video_targets] if t is not None and t.exists()]
            record_outputs(out_dir, written, written=True)

    # A killed earlier run may have left temporaries of annotated images: clean each folder once.
    for folder in sorted({t.parent for t in [*targets, *video_targets] if t is not None}):
        remove_stale_temporaries(folder, any_name=True)
    index = {p: i for i, p in enumerate(paths)}
    drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fpn-draw") if options.draw else None
    pending: list[Future] = []

    def select(result, all_scores: bool = False):
        """The result's boxes, scores and labels of the wanted classes (best max_dets); those
        under --score-thr that a lowered detector threshold let in only when ``all_scores``."""
        boxes, scores, labels = result.boxes, result.scores, result.labels
        if model_thr < options.score_thr and not all_scores:
            ok = scores >= options.score_thr
            boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        if not filtered:
            return boxes, scores, labels
        mask = torch.tensor([int(label) in keep for label in labels.tolist()], dtype=torch.bool)
        return boxes[mask][:max_dets], scores[mask][:max_dets], labels[mask][:max_dets]

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
        pending.append(drawer.submit(save_annotated, drawn, targets[index[result.path]], names, cat_ids))
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

    video_state = VideoRun(
        model=model,
        device=device,
        half=options.dtype == "fp16",
        stride=options.vid_stride,
        summary=summary,
        records=video_records,
        select=select,
        detection_records=detection_records,
        progress=progress,
        after_frame=maybe_flush,
        start=start,
        tracking=track,
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
                "path": choice.describe(),
            }
        )
    try:
        for result in DI.predict_sharded(
            model,
            paths,
            device=device,
            batch_size=batch_size,
            workers=workers,
            half=options.dtype == "fp16",
            max_pixels=options.max_pixels,
            keep_images=options.draw,
            cpu_processes=cpu_processes,
            on_local=draw,
        ):
            i = index[result.path]
            # The record, its COCO results and the counts change together or not at all.
            with deferred_interrupt():
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
            detect_video(source, target, video_state)
    except KeyboardInterrupt:
        summary.interrupted = True
    except BaseException:
        # Keep what is done (e.g. the disk filled while drawing): record the finished images,
        # then report the original error (a second write failure must not hide it).
        with deferred_interrupt(), contextlib.suppress(FpnError, OSError):
            _finish(drawer, summary, start)
            flush_if_begun()
            seal()
        raise
    # Held: a second Ctrl-C while the last pictures and predictions.json are written lost the
    # file (or left an older one, counting fewer frames than the video).
    with deferred_interrupt():
        _finish(drawer, summary, start)
        if summary.interrupted:
            flush_if_begun()
        else:
            flush()
        seal()
    for f in pending:
        f.result()
    if options.coco_results is not None:
        summary.coco_results_path = Path(options.coco_results)
    return summary


def _finish(drawer: ThreadPoolExecutor | None, summary: DetectSummary, start: float) -> None:
    if drawer is not None:
        drawer.shutdown(wait=True)
    summary.seconds = time.perf_counter() - start
