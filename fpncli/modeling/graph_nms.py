"""Class-wise NMS in an exported graph that keeps the boxes eager PyTorch keeps.

torchvision's ``batched_nms`` has two ways. On the CPU, above :data:`EAGER_PER_GROUP_ABOVE`
coordinates (1,000 boxes) it runs NMS group by group (class, or RPN level); below, it shifts
each group's boxes by ``group * (largest coordinate + 1)`` and runs one NMS. The shift costs
float32 precision (class 80 on 800 px boxes lands near 64,000, where float32 steps are 1/256
px), so the two ways disagree on pairs whose IoU is near the threshold. Traced, torchvision
always shifts: an exported graph kept other boxes than ``fpn detect`` whenever more than
1,000 candidates reached the NMS (low score thresholds, crowded images), and the export's
self-check at threshold 0 refused such models. Here the graph holds both ways and the box
count picks one, as eager does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torchvision.ops import boxes as box_ops

# torchvision's own switch (``boxes.numel()`` on the CPU); tests/deploy/test_graph_nms.py
# fails if a torchvision release moves it.
EAGER_PER_GROUP_ABOVE = 4000
_batched_nms = box_ops.batched_nms  # torchvision's, kept before rpn_nms_as_eager swaps the name


def batched_nms_as_eager(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, groups: int
) -> Tensor:
    """``torchvision.ops.batched_nms`` as eager PyTorch computes it on the CPU, also when traced.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy. scores: ``Tensor[N]``. idxs: ``Tensor[N]`` int64, the
            group of each box, in ``0 .. groups - 1`` (a static bound: a trace unrolls the loop).
        iou_threshold: boxes of one group overlapping a better one by more are dropped.

    Returns:
        ``Tensor[M]`` int64, the kept indices by decreasing score.
    """
    if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return _batched_nms(boxes, scores, idxs, iou_threshold)
    # The shifted way counts only at 1,000 boxes or fewer: above, its answer is discarded, so
    # it runs on the first 1,000 (all of them whenever it counts) instead of paying NMS on all.
    head = EAGER_PER_GROUP_ABOVE // 4
    shifted = _marked(scores, _batched_nms(boxes[:head], scores[:head], idxs[:head], iou_threshold))
    per_group = torch.zeros_like(shifted)
    for group in range(groups):
        members = torch.where(idxs == group)[0]
        kept = box_ops.nms(boxes[members], scores[members], iou_threshold)
        per_group = per_group + _marked(scores, members[kept])
    many = torch._shape_as_tensor(boxes)[0] * 4 > EAGER_PER_GROUP_ABOVE
    keep = torch.where(torch.where(many, per_group, shifted) > 0)[0]
    # The per-group way's order; the shifted way's too, but at exact score ties (ONNX's TopK,
    # which a sort becomes, has no stable form).
    return keep[scores[keep].sort(descending=True)[1]]


def _marked(like: Tensor, indices: Tensor) -> Tensor:
    """``Tensor[N]`` int64: 1 at ``indices`` (distinct), 0 elsewhere; ``N`` = ``len(like)``.
    (A scatter of ones: the trace has no boolean ``index_fill``.)"""
    zeros = torch.zeros_like(like, dtype=torch.int64)
    return zeros.scatter(0, indices, torch.ones_like(indices))


@contextmanager
def rpn_nms_as_eager(levels: int) -> Iterator[None]:
    """While torchvision's RPN filters proposals (it calls ``torchvision.ops.boxes.batched_nms``
    by that name), the name is :func:`batched_nms_as_eager` over ``levels`` groups. It computes
    what torchvision's does, so a caller elsewhere meanwhile gets the same boxes."""
    box_ops.batched_nms = functools.partial(batched_nms_as_eager, groups=levels)
    try:
        yield
    finally:
        box_ops.batched_nms = _batched_nms
