"""The export self-check's comparison: the exported model's detections against PyTorch's, held
to a tolerance that the model's own float sensitivity sets.

Two float32 computations of one model that are equally valid (eager PyTorch, and the model as
``fpn detect`` runs it: BatchNorm folded, Winograd convolutions on the CPU) do not give equal
bits: a box can move by a small fraction of a pixel, and a detection whose score ties with a
neighbour's at the NMS or top-k boundary can appear in one and not the other. An exported
graph is a third such computation. So per image the check measures the spread between the two
PyTorch computations (``alt`` against ``ref``), and accepts the exported detections (``got``)
when they stay within :data:`SPREAD_FACTOR` times that spread of ``ref``, with floors of
:data:`BOX_FLOOR` model-input pixels and :data:`SCORE_FLOOR` in score. Boxes are compared in
the model's input pixels (the image as resized), where float error arises: a 1 px error there
is a fraction of a pixel in a large photo's own pixels and many pixels in a thumbnail's.

A detection without a partner is excused when PyTorch's two computations disagree about it
too (it sits at a tie), or when its score is within the score tolerance of the threshold or of
the last kept score when the top-k was full; the check counts those. Anything else (a missing
detection, another class, a box off by a pixel) is a defect: one line naming the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fpncli.errors import FpnError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

BOX_FLOOR = 0.05  # model-input px: below any defect (those move boxes by pixels)
SCORE_FLOOR = 1e-4
SPREAD_FACTOR = 4.0  # how far past PyTorch's own spread an export may go
# Kept for importers: the floors, in the units of their day.
BOX_TOL, SCORE_TOL = BOX_FLOOR, SCORE_FLOOR

Detections = tuple["Tensor", "Tensor", "Tensor"]  # boxes xyxy [N, 4], scores [N], labels [N]


@dataclass
class CheckedImage:
    """One image of the self-check: PyTorch's detection count, the largest differences of the
    exported model's matched detections (box coordinates in the image's own px, scores), the
    tolerances they were held to (same units) and the detections excused as ties."""

    name: str
    width: int
    height: int
    detections: int
    box_diff: float = 0.0
    score_diff: float = 0.0
    box_tol: float = 0.0
    score_tol: float = 0.0
    near_limit: int = 0  # unmatched, but at a tie: within tolerance of the threshold or the cut
    unstable: int = 0  # unmatched, but PyTorch's two computations disagree about it too

    @property
    def excused(self) -> int:
        return self.near_limit + self.unstable

    def to_json(self) -> dict[str, object]:
        return {
            "image": self.name,
            "size": [self.width, self.height],
            "detections": self.detections,
            "max_box_diff_px": round(self.box_diff, 6),
            "box_tolerance_px": round(self.box_tol, 6),
            "max_score_diff": round(self.score_diff, 8),
            "score_tolerance": round(self.score_tol, 8),
            "excused_ties": self.excused,
        }


def _as_tuple(d: dict[str, Tensor] | Detections) -> Detections:
    if isinstance(d, dict):
        return d["boxes"].float(), d["scores"].float(), d["labels"]
    return d[0].float(), d[1].float(), d[2]


def _match(a: Detections, b: Detections, box_tol: float, score_tol: float) -> list[int]:
    """For each detection of ``a``, the index of its partner in ``b`` (-1: none): same label,
    score and every box coordinate within tolerance, the nearest box first, each used once."""
    import torch

    ab, as_, al = a
    bb, bs, bl = b
    taken = torch.zeros(len(bs), dtype=torch.bool)
    out = []
    for i in range(len(as_)):
        if not len(bs):
            out.append(-1)
            continue
        box_diff = (bb - ab[i]).abs().amax(dim=1)
        ok = (~taken) & (bl == al[i]) & ((bs - as_[i]).abs() <= score_tol) & (box_diff <= box_tol)
        if not ok.any():
            out.append(-1)
            continue
        j = int(torch.where(ok, box_diff, torch.full_like(box_diff, float("inf"))).argmin())
        taken[j] = True
        out.append(j)
    return out


def spread(ref: Detections, alt: Detections, scale: float) -> tuple[float, float]:
    """How far two equally valid PyTorch computations of one image's detections are apart:
    the largest box coordinate difference (model-input px) and score difference of the
    detections they agree on (matched loosely: 1 px, 0.01 score)."""
    matched = _match(ref, alt, box_tol=1.0 / scale, score_tol=0.01)
    box, score = 0.0, 0.0
    for i, j in enumerate(matched):
        if j >= 0:
            box = max(box, float((ref[0][i] - alt[0][j]).abs().max()) * scale)
            score = max(score, float((ref[1][i] - alt[1][j]).abs()))
    return box, score


def compare_detections(
    name: str,
    ref: dict[str, Tensor] | Detections,
    got: Detections,
    score_thresh: float,
    max_dets: int,
    class_names: Sequence[str],
    alt: dict[str, Tensor] | Detections | None = None,
    scale: float = 1.0,
) -> CheckedImage:
    """Match the exported model's detections ``got`` to PyTorch's ``ref`` (see the module
    docstring); ``alt``: PyTorch's equally valid second computation (None: no spread, the
    floors only); ``scale``: model-input px per image px.

    Raises:
        FpnError: one line naming the image and the first detection without a partner.
    """
    r, g = _as_tuple(ref), _as_tuple(got)
    a = _as_tuple(alt) if alt is not None else r
    box_spread, score_spread = spread(r, a, scale)
    box_tol = max(BOX_FLOOR, SPREAD_FACTOR * box_spread) / scale  # in image px
    score_tol = max(SCORE_FLOOR, SPREAD_FACTOR * score_spread)
    result = CheckedImage(name, 0, 0, len(r[1]), box_tol=box_tol, score_tol=score_tol)
    rb, rs = r[0], r[1]
    gb, gs = g[0], g[1]
    cut = min(float(rs.min()) if len(rs) else 1.0, float(gs.min()) if len(gs) else 1.0)
    full = len(rs) >= max_dets or len(gs) >= max_dets

    def near_limit(score: float) -> bool:
        return score - score_thresh <= score_tol or (full and score - cut <= score_tol)

    to_got = _match(r, g, box_tol, score_tol)
    in_alt = _match(r, a, box_tol, score_tol) if alt is not None else list(range(len(rs)))
    for i, j in enumerate(to_got):
        if j >= 0:
            result.box_diff = max(result.box_diff, float((gb[j] - rb[i]).abs().max()))
            result.score_diff = max(result.score_diff, float((gs[j] - rs[i]).abs()))
        elif near_limit(float(rs[i])):
            result.near_limit += 1
        elif in_alt[i] < 0:
            result.unstable += 1
        else:
            raise FpnError(_missing(name, i, r, g, class_names, box_tol, score_tol))
    matched = {j for j in to_got if j >= 0}
    alt_only = _match(g, a, box_tol, score_tol) if alt is not None else [-1] * len(gs)
    for j in range(len(gs)):
        if j in matched:
            continue
        if near_limit(float(gs[j])):
            result.near_limit += 1
        elif alt_only[j] >= 0:  # PyTorch's other computation has it: a tie
            result.unstable += 1
        else:
            box = ", ".join(f"{v:.1f}" for v in gb[j].tolist())
            raise FpnError(
                f"self-check failed on {name}: the exported model has a detection PyTorch does not "
                f"(score {float(gs[j]):.4f} at [{box}]; {len(gs)} vs {len(rs)} detections); nothing written"
            )
    return result


def _missing(
    name: str,
    i: int,
    r: Detections,
    g: Detections,
    class_names: Sequence[str],
    box_tol: float,
    score_tol: float,
) -> str:
    """The line for PyTorch's detection ``i`` that has no equal in the export."""
    import torch

    rb, rs, rl = r
    gb, gs, gl = g
    label = class_names[int(rl[i]) - 1] if 0 < int(rl[i]) <= len(class_names) else str(int(rl[i]))
    nearest = ""
    same = gl == rl[i]
    if len(gs) and same.any():
        box_diff = (gb - rb[i]).abs().amax(dim=1)
        k = int(torch.where(same, box_diff, torch.full_like(box_diff, float("inf"))).argmin())
        nearest = (
            f"; nearest exported {label}: box off by {float(box_diff[k]):.4g} px, "
            f"score by {float((gs[k] - rs[i]).abs()):.3g}"
        )
    box = ", ".join(f"{v:.1f}" for v in rb[i].tolist())
    return (
        f"self-check failed on {name}: PyTorch's detection {i + 1} ({label} {float(rs[i]):.4f} "
        f"at [{box}]) has no equal in the exported model (tolerance {box_tol:.3g} px, "
        f"{score_tol:.3g} score){nearest}; nothing written"
    )
