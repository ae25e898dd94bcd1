"""The trackers of `fpn detect --track`, from roboflow's ``trackers`` package (Apache-2.0).

``trackers`` (``pip install "fpncli[track]"``) gives clean re-implementations of SORT,
ByteTrack, OC-SORT and BoT-SORT behind one ``update(detections, frame, timestamp)`` call, kept
up to date against the MOT benchmarks; ``supervision``'s own ByteTrack was removed in its
0.31 release in favour of it (see docs/commands/video.md, "Tracking", for the comparison).

Thresholds. Every tracker gets the boxes scoring at least ``--score-thr`` as its confident
detections (they alone start new tracks). ByteTrack and BoT-SORT also match the boxes
between :data:`LOW_SCORE_FLOOR` and ``--score-thr`` to tracks that lost their confident box
(an object partly hidden, blurred), which keeps the track alive; so the detector runs at the
lower threshold of :func:`detector_threshold`. Only a box that belongs to a confirmed track
and scores at least ``--score-thr`` is reported.
"""

from __future__ import annotations

import math
from typing import Any

from fpncli.errors import FpnError, first_line

TRACKERS = ("bytetrack", "botsort", "ocsort", "sort")
DEFAULT_TRACKER = "bytetrack"
INSTALL_HINT = 'tracking needs the trackers package: pip install "fpncli[track]"'
# ByteTrack's second association sees boxes down to this score (its paper's 0.1, and
# Ultralytics' track_low_thresh).
LOW_SCORE_FLOOR = 0.1
# Trackers with a second, low-score association stage.
_TWO_STAGE = ("bytetrack", "botsort")
_CLASSES = {
    "bytetrack": "ByteTrackTracker",
    "botsort": "BoTSORTTracker",
    "ocsort": "OCSORTTracker",
    "sort": "SORTTracker",
}


def check_tracker(name: str) -> str:
    """``name`` in lower case when it is one of :data:`TRACKERS`, else one line listing them."""
    key = name.strip().lower()
    if key not in TRACKERS:
        raise FpnError(f"--tracker: unknown tracker {name!r}; use one of {', '.join(TRACKERS)}")
    return key


def require_trackers() -> Any:
    """The ``trackers`` module, or one line saying how to install it."""
    try:
        import trackers
    except ModuleNotFoundError as exc:
        if exc.name in (None, "trackers"):
            raise FpnError(INSTALL_HINT) from None
        raise FpnError(  # a dependency of it is missing
            f"trackers is installed but failed to import ({first_line(exc)}); {INSTALL_HINT.split(': ', 1)[1]}"
        ) from None
    except ImportError as exc:  # e.g. OpenCV without libGL on a headless machine
        hint = (
            "; on a machine without a display: pip install opencv-python-headless"
            if "libGL" in str(exc)
            else ""
        )
        raise FpnError(f"trackers is installed but failed to import ({first_line(exc)}){hint}") from None
    return trackers


def detector_threshold(tracker: str, score_thr: float, fixed: float = 0.0) -> float:
    """The score threshold the detector runs at for ``tracker``: ``--score-thr`` lowered to
    :data:`LOW_SCORE_FLOOR` for the two-stage trackers (never raised). ``fixed``: an exported
    model's threshold, below which its graph cannot go (a higher ``--score-thr`` than it is
    kept, so the graph refuses it as it does without tracking)."""
    if tracker not in _TWO_STAGE:
        return score_thr
    return min(score_thr, max(LOW_SCORE_FLOOR, fixed))


class Tracker:
    """One video's tracker: detections in, ``(detection index, track id)`` pairs out.

    Args:
        name: one of :data:`TRACKERS`.
        score_thr: ``--score-thr``: boxes at or above it are the confident ones, start
            tracks and are reported.
        frame_rate: the video's frames per second (the lost-track buffer, 1 s, and the
            motion model's step follow the frames' timestamps at this rate).
    """

    def __init__(self, name: str, score_thr: float, frame_rate: float) -> None:
        module = require_trackers()
        self.name = check_tracker(name)
        self.score_thr = score_thr
        self.frame_rate = frame_rate if math.isfinite(frame_rate) and frame_rate > 0 else 30.0
        kwargs: dict[str, Any] = {"frame_rate": self.frame_rate}
        if self.name in ("bytetrack", "botsort"):
            kwargs.update(track_activation_threshold=score_thr, high_conf_det_threshold=score_thr)
        elif self.name == "ocsort":
            kwargs.update(high_conf_det_threshold=score_thr)
        else:
            kwargs.update(track_activation_threshold=score_thr)
        self._tracker = getattr(module, _CLASSES[self.name])(**kwargs)
        import supervision  # a dependency of trackers

        self._sv = supervision
        self._last_time: float | None = None

    def update(
        self, boxes: Any, scores: Any, labels: Any, time: float, rgb: Any = None
    ) -> list[tuple[int, int]]:
        """Track one frame's detections.

        Args:
            boxes: ``float [N, 4]`` ``x1, y1, x2, y2`` in frame pixels (numpy or torch, CPU).
            scores: ``float [N]`` in 0..1.
            labels: ``int [N]`` class labels (kept with the box; association is class-agnostic,
                a track's class is the majority vote of its boxes, see :mod:`.summary`).
            time: the frame's timestamp in seconds (made strictly increasing here).
            rgb: the frame, ``uint8 [H, W, 3]`` RGB: BoT-SORT's camera-motion compensation
                uses it; the others ignore it.

        Returns:
            ``(index into boxes, track id)`` for each box that belongs to a confirmed track
            and scores at least ``score_thr``, in ``boxes``' order. Track ids start at 1,
            stay with their object and are never reused within the video.
        """
        import numpy as np

        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if self.name not in _TWO_STAGE:
            fed = scores >= self.score_thr  # no low-score stage: low boxes would only add noise
            index = np.nonzero(fed)[0]
        else:
            index = np.arange(len(boxes))
        detections = self._sv.Detections(
            xyxy=boxes[index].reshape(-1, 4),
            confidence=scores[index],
            class_id=labels[index],
            data={"index": index},
        )
        last = self._last_time
        if not math.isfinite(time) or (last is not None and not time > last):
            # A stream's clock that stalls, jumps back or is missing: one nominal frame on.
            time = 0.0 if last is None else last + 1.0 / self.frame_rate
        self._last_time = time
        extra = {}
        if self.name == "botsort" and rgb is not None:
            extra["frame"] = np.ascontiguousarray(rgb[..., ::-1])  # BGR, as OpenCV's optical flow reads it
        out = self._tracker.update(detections, timestamp=time, **extra)
        if len(out) == 0:
            return []
        pairs = [
            (int(i), int(t) + 1)
            for i, t in zip(out.data["index"], out.tracker_id)
            if t >= 0 and scores[int(i)] >= self.score_thr
        ]
        return sorted(pairs)
