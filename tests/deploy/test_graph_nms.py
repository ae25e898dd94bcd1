"""batched_nms_as_eager: an exported graph's class-wise NMS keeps what eager PyTorch keeps,
on both sides of torchvision's switch between its two ways."""

from __future__ import annotations

import io

import pytest
import torch
from torchvision.ops import boxes as box_ops

from fpncli.modeling.graph_nms import EAGER_PER_GROUP_ABOVE, batched_nms_as_eager, rpn_nms_as_eager

GROUPS = 80


def _near_threshold(pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pairs`` pairs of boxes whose IoU is 0.5 give or take 1e-5, over 80 classes, with
    distinct scores: where the shifted NMS (class 79 moves boxes by ~40,000) and the per-class
    NMS disagree."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(pairs, generator=g) * 400 + 100
    tall = 5 + (torch.rand(pairs, generator=g) - 0.5) * 1e-4
    first = torch.stack([x, x, x + 10, x + 10], 1)
    second = torch.stack([x, x, x + 10, x + tall], 1)
    scores = torch.randperm(2 * pairs, generator=g).float() / (2 * pairs)  # no ties: one order
    labels = (torch.arange(pairs) % GROUPS).repeat(2)
    return torch.cat([first, second]), scores, labels


class _Graph(torch.nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return batched_nms_as_eager(boxes, scores, labels, 0.5, GROUPS)


def _cases():
    few, many = _near_threshold(400, 1), _near_threshold(1200, 2)  # 800 and 2,400 boxes
    at = _near_threshold(500, 3)  # 1,000 boxes: the last count eager shifts
    empty = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    return {"few": few, "at the switch": at, "many": many, "empty": empty}


def test_torchvision_still_switches_where_the_graph_does():
    """The graph copies torchvision's switch: per class above 1,000 boxes on the CPU, the
    shift below. On boxes where the two ways differ, eager must match each on its side."""
    for name, (boxes, scores, labels) in _cases().items():
        if name == "empty":
            continue
        shifted = box_ops._batched_nms_coordinate_trick(boxes, scores, labels, 0.5)
        per_class = box_ops._batched_nms_vanilla(boxes, scores, labels, 0.5)
        assert len(shifted) != len(per_class), f"{name}: the test data no longer separates the two ways"
        eager = box_ops.batched_nms(boxes, scores, labels, 0.5)
        expected = per_class if boxes.numel() > EAGER_PER_GROUP_ABOVE else shifted
        assert torch.equal(eager, expected), name


def test_traced_and_exported_nms_keep_what_eager_keeps():
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    example = _near_threshold(10, 0)
    with torch.no_grad():
        traced = torch.jit.trace(_Graph(), example, check_trace=False)
    buffer = io.BytesIO()
    torch.onnx.export(
        _Graph(),
        example,
        buffer,
        opset_version=17,
        dynamo=False,
        input_names=["boxes", "scores", "labels"],
        dynamic_axes={"boxes": {0: "n"}, "scores": {0: "n"}, "labels": {0: "n"}},
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for name, (boxes, scores, labels) in _cases().items():
        eager = box_ops.batched_nms(boxes, scores, labels, 0.5)
        assert torch.equal(traced(boxes, scores, labels), eager), name
        feed = {"boxes": boxes.numpy(), "scores": scores.numpy(), "labels": labels.numpy()}
        assert torch.equal(torch.from_numpy(session.run(None, feed)[0]), eager), name
    # What the trace did before: torchvision's own batched_nms, traced, always shifts.
    boxes, scores, labels = _cases()["many"]
    with torch.no_grad():
        plain = torch.jit.trace(lambda b, s, i: box_ops.batched_nms(b, s, i, 0.5), example, check_trace=False)
    assert not torch.equal(plain(boxes, scores, labels), box_ops.batched_nms(boxes, scores, labels, 0.5))


def test_the_rpn_name_is_put_back_even_when_the_block_fails():
    original = box_ops.batched_nms
    with pytest.raises(RuntimeError), rpn_nms_as_eager(5):
        assert box_ops.batched_nms is not original
        raise RuntimeError("the trace failed")
    assert box_ops.batched_nms is original
