"""fpn detect --track's parts without a detector: the tracker adapter on a fake detection
stream of objects moving by known steps, the track summary, line counting and drawing."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from fpncli.errors import FpnError
from fpncli.inference.tracking.adapter import (
    LOW_SCORE_FLOOR,
    TRACKERS,
    Tracker,
    check_tracker,
    detector_threshold,
    require_trackers,
)
from fpncli.inference.tracking.counting import LineCounter, direction_names, parse_count_line
from fpncli.inference.tracking.summary import TrackSummary
from fpncli.viz.tracks import LINE_COLOR, draw_tracks, track_color

pytest.importorskip("trackers", reason='tracking tests need trackers (pip install "fpncli[track]")')

RATE = 10.0
# Three objects: (x1, y1) at frame 0, (dx, dy) per frame, 20x20 boxes, label.
OBJECTS = [((10, 10), (6, 0), 1), ((200, 30), (-5, 2), 2), ((80, 150), (0, -4), 1)]


def _frame(i: int, order, low: dict[int, float] | None = None):
    """Frame ``i``'s detections of :data:`OBJECTS` in ``order`` (boxes, scores, labels, the
    object of each row); ``low``: object -> its score in this frame (default 0.9)."""
    boxes, scores, labels = [], [], []
    for k in order:
        (x, y), (dx, dy), label = OBJECTS[k]
        boxes.append([x + dx * i, y + dy * i, x + dx * i + 20, y + dy * i + 20])
        scores.append((low or {}).get(k, 0.9))
        labels.append(label)
    return np.array(boxes, float).reshape(-1, 4), np.array(scores), np.array(labels), list(order)


def _ids_per_object(tracker: Tracker, frames: int, low_frames=(), stride: int = 1) -> dict[int, list[int]]:
    """Run the stream (every ``stride``-th frame, rows shuffled); object -> its reported ids."""
    rng = np.random.default_rng(0)
    seen: dict[int, list[int]] = {k: [] for k in range(len(OBJECTS))}
    for i in range(0, frames, stride):
        order = rng.permutation(len(OBJECTS))
        low = {0: 0.3} if i in low_frames else None
        boxes, scores, labels, objects = _frame(i, order, low)
        for index, track_id in tracker.update(boxes, scores, labels, i / RATE):
            assert scores[index] >= 0.5  # only boxes at or above --score-thr are reported
            seen[objects[index]].append(track_id)
    return seen


@pytest.mark.parametrize("name", TRACKERS)
def test_each_object_keeps_one_id_in_every_tracker(name):
    seen = _ids_per_object(Tracker(name, 0.5, RATE), frames=20)
    ids = {k: set(v) for k, v in seen.items()}
    assert all(len(v) == 1 for v in ids.values()), ids  # no id switch
    assert len(set().union(*ids.values())) == len(OBJECTS)  # one id per object
    assert sorted(set().union(*ids.values())) == [1, 2, 3]  # from 1, none skipped
    # Confirmed after a few frames (the trackers' minimum_consecutive_frames), then every frame.
    assert all(len(v) >= 17 for v in seen.values()), {k: len(v) for k, v in seen.items()}


def test_bytetrack_keeps_a_track_through_low_scores_without_reporting_them():
    tracker = Tracker("bytetrack", 0.5, RATE)
    seen = _ids_per_object(tracker, frames=16, low_frames=(6, 7, 8))
    assert len(seen[0]) == 16 - 1 - 3  # frame 0 (unconfirmed) and the 3 low frames not reported
    assert set(seen[0]) == {seen[0][0]}  # ...and the same id after them
    assert len(set().union(*map(set, seen.values()))) == 3


def test_a_box_under_the_threshold_never_starts_a_track():
    tracker = Tracker("bytetrack", 0.5, RATE)
    for i in range(6):
        box = np.array([[10 + 2 * i, 10, 30 + 2 * i, 30]], float)
        assert tracker.update(box, np.array([0.4]), np.array([1]), i / RATE) == []


def test_stride_and_a_stalled_clock_keep_ids():
    # Every 2nd frame (object 0 moves 12 px of its 20 between two), timestamps say so. (At
    # every 3rd, 18 px, its boxes overlap by IoU 0.05: no tracker matches them; see the docs.)
    seen = _ids_per_object(Tracker("bytetrack", 0.5, RATE), frames=30, stride=2)
    assert all(len(set(v)) == 1 for v in seen.values()) and len(set().union(*map(set, seen.values()))) == 3
    # A stream whose clock repeats or goes back: no warning, no lost update.
    tracker = Tracker("sort", 0.5, RATE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(6):
            boxes, scores, labels, _ = _frame(i, [0])
            out = tracker.update(boxes, scores, labels, [1.0, 1.0, float("nan"), 0.5, 0.6, 0.6][i])
    assert [t for _, t in out] == [1]


def test_empty_stream_gives_no_tracks():
    tracker = Tracker("botsort", 0.5, RATE)
    frame = np.zeros((48, 64, 3), np.uint8)
    for i in range(4):
        assert tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0), i / RATE, frame) == []


def test_names_thresholds_and_the_missing_extra(monkeypatch):
    assert check_tracker("ByteTrack") == "bytetrack"
    with pytest.raises(
        FpnError, match="unknown tracker 'deepsort'; use one of bytetrack, botsort, ocsort, sort"
    ):
        check_tracker("deepsort")
    # Two-stage trackers see the boxes down to the floor; never above --score-thr.
    assert detector_threshold("bytetrack", 0.5) == LOW_SCORE_FLOOR
    assert detector_threshold("botsort", 0.05) == 0.05
    assert detector_threshold("sort", 0.5) == 0.5 and detector_threshold("ocsort", 0.5) == 0.5
    # An exported graph cannot go below its own threshold.
    assert detector_threshold("bytetrack", 0.5, fixed=0.3) == 0.3
    assert detector_threshold("bytetrack", 0.5, fixed=0.05) == LOW_SCORE_FLOOR
    monkeypatch.setitem(sys.modules, "trackers", None)
    with pytest.raises(
        FpnError, match=r'^tracking needs the trackers package: pip install "fpncli\[track\]"$'
    ):
        require_trackers()


def test_summary_majority_class_frames_and_mean_score():
    rows: list[dict] = []
    summary = TrackSummary(rows)
    summary.add(4, 2, 0.2, "car", 3, 0.9)
    summary.add(4, 3, 0.3, "truck", 8, 0.7)  # a tie: the class seen first
    assert rows[0]["label"] == "car"
    summary.add(4, 5, 0.5, "truck", 8, 0.5)
    summary.add(7, 5, 0.5, "person", 1, 0.8)
    assert len(summary) == 2 and [r["track_id"] for r in rows] == [4, 7]
    assert rows[0] == {
        "track_id": 4,
        "label": "truck",
        "category_id": 8,
        "first_frame": 2,
        "last_frame": 5,
        "first_time": 0.2,
        "last_time": 0.5,
        "frames": 3,
        "mean_score": 0.7,
    }


def test_count_line_parsing_is_one_line_each():
    assert parse_count_line(" 0, 240.5,640,240 ") == (0.0, 240.5, 640.0, 240.0)
    for bad in ("0,240,640", "a,b,c,d", "0,1,2,nan", "", "1,2,3,4,5"):
        with pytest.raises(FpnError, match="--count-line: expected four numbers x1,y1,x2,y2"):
            parse_count_line(bad)
    with pytest.raises(FpnError, match="the two end points are the same"):
        parse_count_line("5,5,5,5")


def test_line_counts_each_track_once_by_direction_and_class():
    assert direction_names((0, 100, 640, 100)) == ("down", "up")
    assert direction_names((640, 100, 0, 100)) == ("up", "down")  # the end points' order does not matter
    assert direction_names((100, 0, 100, 480)) == ("left", "right")
    record: dict = {}
    counter = LineCounter((0, 100, 200, 100), record)
    # Track 1 moves down across, jitters back up and down: counted once.
    assert [counter.update(1, 50, y, "car") for y in (80, 95, 100, 105, 98, 110)] == [
        None,
        None,
        None,
        "down",
        None,
        None,
    ]
    # Track 2 moves up across; track 3 passes beyond the segment's end (x = 300): not counted.
    assert [counter.update(2, 150, y, "person") for y in (130, 90)] == [None, "up"]
    assert [counter.update(3, 300, y, "car") for y in (90, 120)] == [None, None]
    assert record["counts"] == {"down": {"car": 1}, "up": {"person": 1}}
    assert record["total"] == {"down": 1, "up": 1} and record["line"] == [0, 100, 200, 100]
    # The majority vote of track 1 changes later: its count moves with it.
    counter.update(1, 50, 120, "truck")
    assert record["counts"]["down"] == {"truck": 1} and record["total"]["down"] == 1


def test_drawn_tracks_carry_their_colour_path_and_the_line():
    image = Image.new("RGB", (200, 150), (40, 40, 40))
    path = [(20.0, 100.0), (60.0, 100.0), (100.0, 100.0)]
    out = draw_tracks(image, [[90, 90, 110, 110]], ["car"], [0.9], [5], [path], [150, 0, 150, 150], "right 1")
    color = track_color(5)
    assert image.getpixel((40, 100)) == (40, 40, 40)  # the input is not drawn on
    assert out.getpixel((40, 100)) == color  # the path, in the track's colour
    assert out.getpixel((90, 105)) == color  # the box's left edge
    assert out.getpixel((150, 20)) == LINE_COLOR  # the counting line
    assert track_color(5) != track_color(6)
