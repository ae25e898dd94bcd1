"""`fpn detect` on videos and streams: detect in every Nth frame, record it, write the annotated video."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpncli.errors import FpnError
from fpncli.runtime.events import ProgressFn
from fpncli.runtime.interrupts import deferred_interrupt

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.inference.detect import DetectSummary
    from fpncli.inference.tracking.session import TrackOptions


@dataclass
class VideoRun:
    """What :func:`detect_video` shares with :func:`~fpncli.inference.detect.run_detect`'s image loop."""

    model: Any
    device: Any
    half: bool
    stride: int
    summary: DetectSummary
    records: list[dict[str, Any]]
    # (result, all_scores) -> boxes, scores, labels; all_scores: also those under --score-thr
    # that the detector keeps for the tracker
    select: Callable[[Any, bool], tuple[Any, Any, Any]]
    detection_records: Callable[..., tuple[list[dict[str, Any]], list[str], list[int]]]
    progress: ProgressFn | None
    after_frame: Callable[[], None]
    start: float
    tracking: TrackOptions | None = None  # --track


def detect_video(source: str, target: Path | None, run: VideoRun) -> None:
    """Detect in every ``stride``-th frame of a video file or stream; its ``videos`` entry in
    predictions.json grows frame by frame, and the annotated video (when ``target``) gets
    every frame. A source that cannot be opened, or a decoding fault, is one entry in
    ``errors``; the frames before the fault are kept. Ctrl-C leaves a finished video.
    With ``run.tracking`` the detected frames go through a tracker (see inference/tracking/):
    each reported detection gets a ``track_id``, the record its ``tracks``."""
    import numpy as np
    import torch
    from PIL import Image

    from fpncli.data.video import VideoReader, VideoWriter
    from fpncli.inference.predict import ImageResult
    from fpncli.viz.draw import draw_detections
    from fpncli.viz.tracks import draw_tracks

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
    tracking = None
    try:
        if run.tracking is not None:
            from fpncli.inference.tracking.session import VideoTracking

            tracking = VideoTracking(run.tracking, record, float(reader.rate), run.stride)
        if target is not None:
            writer = VideoWriter(target, reader.width, reader.height, reader.rate)
        if progress is not None:
            progress({"event": "video", "file": source, "frames_total": reader.frames_total})
        run.model.eval().to(run.device)
        shown: tuple[list, list, list, list, list] = ([], [], [], [], [])  # drawn on the frames in between
        for frame in reader:
            detected = frame.index % run.stride == 0
            if detected:
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
                boxes, scores, labels = run.select(result, tracking is not None)
                track_ids: list[int] = []
                if tracking is not None:
                    keep, track_ids = tracking.update(frame.time, boxes, scores, labels, frame.rgb)
                    index = torch.tensor(keep, dtype=torch.long)
                    boxes, scores, labels = boxes[index], scores[index], labels[index]
                detections, names, cat_ids = run.detection_records(boxes, scores, labels)
            # A frame's record and its annotated frame land together, or neither does.
            with deferred_interrupt():
                if detected:
                    if tracking is not None:
                        tracking.observe(frame.index, frame.time, detections, track_ids)
                    record["frames"].append(
                        {"frame": frame.index, "time": round(frame.time, 4), "detections": detections}
                    )
                    summary.frames += 1
                    summary.detections += len(detections)
                    summary.per_class.update(names)
                    shown = (boxes.tolist(), names, scores.tolist(), cat_ids, track_ids)
                if writer is not None:
                    image = Image.fromarray(frame.rgb)
                    if tracking is not None:
                        line, text = tracking.options.count_line, tracking.count_text()
                        drawn = draw_tracks(image, *shown[:3], shown[4], tracking.paths(shown[4]), line, text)
                    else:
                        drawn = draw_detections(image, *shown[:4])
                    writer.write(np.asarray(drawn))
            summary.seconds = time.perf_counter() - run.start
            if progress is not None:
                progress(
                    {
                        "event": "frame",
                        "file": source,
                        "frame": frame.index,
                        "frames_total": reader.frames_total,
                        "detected": detected,
                        "summary": summary,
                    }
                )
            run.after_frame()
        if reader.error is not None:
            summary.errors.append({"file": source, "error": reader.error})
            summary.videos_failed += 1
    finally:
        # A second Ctrl-C while the encoder flushes (~0.5 s at 1080p) lost the whole video.
        with deferred_interrupt():
            reader.close()
            if writer is not None:
                done = writer.close()
                record["annotated"] = str(done) if done is not None else None
