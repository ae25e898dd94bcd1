"""``--count-line x1,y1,x2,y2``: tracks crossing a line segment, by direction and class.

A track's position is its box centre in each frame it is reported. It crosses when the
segment between two of its successive positions cuts the counting segment (a position exactly
on the line waits for the next one). Each track is counted once, at its first crossing, so an
object that jitters on the line is not counted again; its class is the track's class by
majority vote, updated if later boxes change the vote.

Directions are named for the way the object moves across the line on screen: a mostly
horizontal line counts ``down`` and ``up``, a mostly vertical one ``right`` and ``left``
(whatever order its end points are given in).
"""

from __future__ import annotations

import math
from typing import Any

from fpncli.errors import FpnError


def parse_count_line(text: str) -> tuple[float, float, float, float]:
    """``"x1,y1,x2,y2"`` (frame pixels) as four floats, or one line saying what is wrong."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise FpnError(f"--count-line: expected four numbers x1,y1,x2,y2 (pixels), got {text!r}")
    x1, y1, x2, y2 = values
    if (x1, y1) == (x2, y2):
        raise FpnError(f"--count-line: the two end points are the same ({x1:g},{y1:g}); give a line")
    return x1, y1, x2, y2


def direction_names(line: tuple[float, float, float, float]) -> tuple[str, str]:
    """(name of a crossing towards the line's normal ``(-dy, dx)``, name of the opposite one)."""
    x1, y1, x2, y2 = line
    nx, ny = -(y2 - y1), x2 - x1  # the direction rotated 90° clockwise on screen (y grows down)
    if abs(ny) >= abs(nx):
        return ("down", "up") if ny > 0 else ("up", "down")
    return ("right", "left") if nx > 0 else ("left", "right")


def _side(line: tuple[float, float, float, float], x: float, y: float) -> float:
    x1, y1, x2, y2 = line
    return (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)


class LineCounter:
    """Counts tracks crossing ``line``; ``record`` (the caller's JSON dict) holds::

    {"line": [x1, y1, x2, y2], "directions": ["down", "up"],
     "counts": {"down": {"car": 3}, "up": {"person": 1}}, "total": {"down": 3, "up": 1}}
    """

    def __init__(self, line: tuple[float, float, float, float], record: dict[str, Any]) -> None:
        self.line = line
        self.directions = direction_names(line)
        self.record = record
        record.update(
            line=[round(v, 2) for v in line],
            directions=list(self.directions),
            counts={d: {} for d in self.directions},
            total=dict.fromkeys(self.directions, 0),
        )
        self._last: dict[int, tuple[float, float, float]] = {}  # track -> (x, y, side), side != 0
        self._counted: dict[int, tuple[str, str]] = {}  # track -> (direction, label)

    def update(self, track_id: int, x: float, y: float, label: str) -> str | None:
        """Take the track's position (box centre) in this frame and its class so far;
        returns the direction when this is the track's first crossing."""
        counted = self._counted.get(track_id)
        if counted is not None:
            if counted[1] != label:  # the majority vote changed: move the count
                self._move(counted[0], counted[1], -1)
                self._move(counted[0], label, 1)
                self._counted[track_id] = (counted[0], label)
            return None
        side = _side(self.line, x, y)
        if side == 0:
            return None
        last = self._last.get(track_id)
        self._last[track_id] = (x, y, side)
        if last is None or (last[2] > 0) == (side > 0) or not self._cuts(last[0], last[1], x, y):
            return None
        direction = self.directions[0] if side > 0 else self.directions[1]
        self._counted[track_id] = (direction, label)
        self._last.pop(track_id, None)
        self._move(direction, label, 1)
        return direction

    def _cuts(self, px: float, py: float, qx: float, qy: float) -> bool:
        """Whether the segment p-q meets the counting segment (p and q on its two sides)."""
        x1, y1, x2, y2 = self.line
        move = (px, py, qx, qy)
        a, b = _side(move, x1, y1), _side(move, x2, y2)
        return (a >= 0 >= b) or (a <= 0 <= b)

    def _move(self, direction: str, label: str, n: int) -> None:
        counts = self.record["counts"][direction]
        counts[label] = counts.get(label, 0) + n
        if counts[label] == 0:
            del counts[label]
        self.record["total"][direction] += n

    def forget(self, track_id: int) -> None:
        """Drop a track that is gone for good (bounds memory on a long stream)."""
        self._last.pop(track_id, None)
        self._counted.pop(track_id, None)
