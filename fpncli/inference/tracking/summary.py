"""Per-track statistics of one video, kept as the rows ``predictions.json`` shows.

The rows are updated in place as frames are tracked, so every rewrite of ``predictions.json``
(every few seconds, at Ctrl-C, after a decoding fault) holds the tracks made so far.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Track:
    row: dict[str, Any]
    votes: Counter = field(default_factory=Counter)  # (category_id, label) -> boxes
    score_sum: float = 0.0


class TrackSummary:
    """The tracks of one video: ``rows`` (a list, owned by the caller's JSON record) gets one
    dict per track, in the order the tracks were confirmed (so by track id)::

        {"track_id": 3, "label": "car", "category_id": 3, "first_frame": 12, "last_frame": 80,
         "first_time": 0.48, "last_time": 3.2, "frames": 61, "mean_score": 0.83}

    ``label``/``category_id``: the class most of the track's boxes had (ties: the class seen
    first); ``frames``: the frames in which the track was reported (a box at or above
    ``--score-thr``); ``mean_score``: over those boxes.
    """

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self._tracks: dict[int, _Track] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def add(self, track_id: int, frame: int, time: float, label: str, category_id: int, score: float) -> str:
        """Count one reported box of ``track_id``; returns the track's class (majority so far)."""
        track = self._tracks.get(track_id)
        if track is None:
            row: dict[str, Any] = {
                "track_id": track_id,
                "label": label,
                "category_id": category_id,
                "first_frame": frame,
                "last_frame": frame,
                "first_time": round(time, 4),
                "last_time": round(time, 4),
                "frames": 0,
                "mean_score": 0.0,
            }
            track = self._tracks[track_id] = _Track(row)
            self.rows.append(row)
        row = track.row
        track.votes[(category_id, label)] += 1
        track.score_sum += score
        row["frames"] += 1
        row["last_frame"], row["last_time"] = frame, round(time, 4)
        row["mean_score"] = round(track.score_sum / row["frames"], 4)
        (row["category_id"], row["label"]), _ = track.votes.most_common(1)[0]
        return row["label"]

    def label(self, track_id: int) -> str:
        """The track's class by majority vote so far."""
        return self._tracks[track_id].row["label"]
