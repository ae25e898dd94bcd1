"""One video's tracking, as :func:`fpncli.inference.video_detect.detect_video` uses it: the
tracker, the track summary, the recent paths for drawing and the line counter, writing into
the video's ``predictions.json`` record as frames go by."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from fpncli.errors import FpnError
from fpncli.inference.tracking.adapter import Tracker
from fpncli.inference.tracking.counting import LineCounter
from fpncli.inference.tracking.summary import TrackSummary

PATH_LENGTH = 30  # detected frames of path drawn behind each track
# A track unseen for this many detected frames is gone for every tracker (their lost-track
# buffers are 1 s, 30 frames at 30 fps): its path and counting state are dropped.
_FORGET_AFTER = 4 * PATH_LENGTH


@dataclass(frozen=True)
class TrackOptions:
    """``--track``/``--tracker``, ``--score-thr`` and ``--count-line`` for every video of a run."""

    tracker: str
    score_thr: float
    detector_thr: (
        float  # the detector's threshold (adapter.detector_threshold): the tracker sees boxes from here up
    )
    count_line: tuple[float, float, float, float] | None = None


class VideoTracking:
    """Tracks one video; ``record`` (its ``predictions.json`` entry) gets ``"tracking"``
    (settings), ``"tracks"`` (:class:`TrackSummary` rows) and, with a line,
    ``"count_line"`` (:class:`LineCounter`'s record), all kept current frame by frame."""

    def __init__(self, options: TrackOptions, record: dict[str, Any], frame_rate: float, stride: int) -> None:
        self.options = options
        self.tracker = Tracker(options.tracker, options.score_thr, frame_rate)
        record["tracking"] = {
            "tracker": options.tracker,
            "score_thr": options.score_thr,
            # the detector's threshold: the tracker also sees the boxes from here up
            "low_score_thr": options.detector_thr,
            # the tracker runs on the detected frames only
            "every_nth_frame": stride,
        }
        record["tracks"] = []
        self.summary = TrackSummary(record["tracks"])
        self.counter: LineCounter | None = None
        if options.count_line is not None:
            record["count_line"] = {}
            self.counter = LineCounter(options.count_line, record["count_line"])
        self._paths: dict[int, deque[tuple[float, float]]] = {}
        self._seen: dict[int, int] = {}  # track -> last detected-frame number
        self._step = 0

    def update(
        self, time: float, boxes: Any, scores: Any, labels: Any, rgb: Any
    ) -> tuple[list[int], list[int]]:
        """Track one detected frame; returns (the indices into ``boxes`` to report, their track
        ids). ``boxes``: ``float [N, 4]`` xyxy frame pixels, ``scores`` ``[N]``, ``labels``
        ``[N]`` (torch or numpy, CPU), every box the detector kept (see
        :func:`~fpncli.inference.tracking.adapter.detector_threshold`); ``rgb``: the frame."""
        pairs = self.tracker.update(boxes, scores, labels, time, rgb)
        return [i for i, _ in pairs], [t for _, t in pairs]

    def observe(
        self, index: int, time: float, detections: list[dict[str, Any]], track_ids: list[int]
    ) -> None:
        """Record the reported detections (``predictions.json`` dicts with ``box``, ``score``,
        ``label``, ``category_id``) of frame ``index``: ``track_id`` added to each, the
        summary, paths and counts updated."""
        self._step += 1
        for det, track_id in zip(detections, track_ids):
            det["track_id"] = track_id
            label = self.summary.add(track_id, index, time, det["label"], det["category_id"], det["score"])
            x1, y1, x2, y2 = det["box"]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            self._paths.setdefault(track_id, deque(maxlen=PATH_LENGTH)).append((cx, cy))
            self._seen[track_id] = self._step
            if self.counter is not None:
                self.counter.update(track_id, cx, cy, label)
        if self._step % PATH_LENGTH == 0:
            for track_id in [t for t, s in self._seen.items() if self._step - s > _FORGET_AFTER]:
                del self._seen[track_id], self._paths[track_id]
                if self.counter is not None:
                    self.counter.forget(track_id)

    def paths(self, track_ids: list[int]) -> list[list[tuple[float, float]]]:
        """The recent path (box centres, oldest first) of each of ``track_ids``."""
        return [list(self._paths.get(t, ())) for t in track_ids]

    def count_text(self) -> str | None:
        """``"down 3 · up 1"`` for the drawn line, or None without a line."""
        if self.counter is None:
            return None
        total = self.counter.record["total"]
        return " · ".join(f"{d} {total[d]}" for d in self.counter.directions)


def check_track_options(tracker: str | None, count_line: str | None) -> None:
    """One line for a bad ``--tracker`` or ``--count-line``, or a line without ``--track``."""
    from fpncli.inference.tracking.adapter import check_tracker
    from fpncli.inference.tracking.counting import parse_count_line

    if count_line is not None and tracker is None:
        raise FpnError("--count-line counts tracks: add --track")
    if tracker is not None:
        check_tracker(tracker)
    if count_line is not None:
        parse_count_line(count_line)


def plan_tracking(
    tracker: str, score_thr: float, count_line: str | None, exported: str | None = None
) -> TrackOptions:
    """The run's :class:`TrackOptions`, checked before any model is loaded: the tracker's name,
    the ``trackers`` package (one line naming the extra when missing), the counting line, and
    the detector's threshold (an exported model's graph cannot go below its own, ``exported``
    names its file)."""
    from fpncli.inference.tracking.adapter import check_tracker, detector_threshold, require_trackers
    from fpncli.inference.tracking.counting import parse_count_line

    name = check_tracker(tracker)
    line = parse_count_line(count_line) if count_line is not None else None
    require_trackers()
    fixed = 0.0
    if exported is not None:
        from fpncli.modeling.exported import exported_config

        fixed = exported_config(exported).box_score_thresh
    return TrackOptions(name, score_thr, detector_threshold(name, score_thr, fixed), line)
