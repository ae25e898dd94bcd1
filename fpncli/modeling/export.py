"""The detector as one self-contained graph for ONNX and TorchScript: image in, boxes out.

:class:`ExportableDetector` wraps an :class:`~fpncli.modeling.detector.FPNFasterRCNN` so
that everything ``model([image])`` does happens inside the exported graph:

* input ``Tensor[H, W, 3]`` uint8 RGB, any size and orientation (what PIL and NumPy give);
* to 0..1, normalise, resize (shorter side to ``min_size``, longer capped at ``max_size``),
  pad to the stride multiple;
* anchors laid on the grid of *this* image's feature maps;
* RPN, RoI heads, box decoding, NMS, score threshold, detections per image;
* boxes scaled back to the input image's pixels.

Why not trace ``model([image])`` itself: tracing turns every Python number into a constant,
and torchvision's transform computes the resize in float32 when traced (eager uses double, so
some sizes come out a pixel apart), while torchvision's anchor grid uses Python integer
division of sizes. A graph traced at one size then lays the traced size's anchor grid on
every image (vision#2380 and the issue's 14-31 % matching detections). Here every size is
computed from the input's shape with tensor ops, in double where eager Python uses double.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from fpncli.errors import FpnError
from fpncli.modeling.graph_nms import batched_nms_as_eager, rpn_nms_as_eager
from fpncli.weight_files import ONNX_METADATA_KEY, TORCHSCRIPT_METADATA  # where the metadata goes

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.modeling.detector import FPNFasterRCNN


class ExportableDetector(nn.Module):
    """``forward(image: Tensor[H, W, 3] uint8 RGB) -> (boxes Tensor[N, 4] float32 xyxy in the
    image's pixels, scores Tensor[N] float32 decreasing, labels Tensor[N] int64 in 1..K)``.

    Detections equal ``model([image.permute(2, 0, 1) / 255])[0]`` of the wrapped model in
    eval mode (its thresholds and limits at the time of wrapping).
    """

    mean: Tensor
    std: Tensor
    size_limits: Tensor
    reported: Tensor

    def __init__(self, model: FPNFasterRCNN) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        t = model.transform
        self.register_buffer("mean", torch.tensor(t.image_mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(t.image_std, dtype=torch.float32)[:, None, None])
        # Double, as eager Python's arithmetic: a float32 scale puts some sizes a pixel apart.
        self.register_buffer(
            "size_limits", torch.tensor([model.min_size, model.max_size], dtype=torch.float64)
        )
        self.size_divisible = model.size_divisible
        anchors = model.rpn.anchor_generator
        self.grid = anchors.grid
        self.strides = list(anchors.strides)
        # Anchors centred on 0, one Tensor[A, 4] per RPN level (torchvision's rounded ones).
        anchors.set_cell_anchors(torch.float32, torch.device("cpu"))
        for i, cell in enumerate(anchors.cell_anchors):
            self.register_buffer(f"cell_anchors_{i}", cell.clone())
        self.num_levels = len(anchors.cell_anchors)
        from fpncli.modeling.coco_classes import UNUSED_CLASS

        # Classes fpn detect never reports (COCO_V1's "N/A" placeholders): dropped in the graph
        # after the NMS and before the top-k, as the PyTorch path drops them (issue #26).
        names = list(model.config.class_names)
        self.num_classes = len(names) + 1  # with the background
        self.filters_classes = UNUSED_CLASS in names
        self.register_buffer("reported", torch.tensor([name != UNUSED_CLASS for name in names]))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = torch._shape_as_tensor(image)  # traced as a Shape op: stays dynamic
        original = shape[:2]  # (H, W) int64
        x = image.permute(2, 0, 1).to(torch.float32).div(255.0)
        x = (x - self.mean) / self.std
        # torchvision's resize with eager Python's double arithmetic:
        # scale = min(min_size / short side, max_size / long side); size = floor(side * scale).
        hw = original.to(torch.float64)
        limits = self.size_limits
        # Short and long side as an elementwise min/max of H and W, not ReduceMin/ReduceMax:
        # OpenVINO 2026.4 computes those reductions of the size wrong once it fuses them.
        short, long = torch.minimum(hw[:1], hw[1:]), torch.maximum(hw[:1], hw[1:])
        scale = torch.minimum(limits[:1] / short, limits[1:] / long)
        resized = torch.floor(hw * scale).to(torch.int64)
        # Sizes are 0-dim tensors here (int() would freeze them in the trace).
        x = F.interpolate(
            x[None],
            size=(resized[0], resized[1]),  # type: ignore[arg-type]
            mode="bilinear",
            align_corners=False,
        )
        # Pad bottom/right to a multiple of size_divisible, as torchvision's batch_images does.
        d = self.size_divisible
        padded = torch.div(resized + (d - 1), d, rounding_mode="floor") * d
        pad = padded - resized
        x = F.pad(x, [0, pad[1], 0, pad[0]])  # type: ignore[list-item]
        features = self.backbone(x)
        image_size = (resized[0], resized[1])
        images = ImageList(x, [image_size])
        rpn = self.rpn
        rpn_maps = list(features.values())  # as torchvision's RPN: every map
        objectness, deltas = rpn.head(rpn_maps)
        anchors = self._anchors(rpn_maps, padded)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), [anchors]).view(1, -1, 4)
        with rpn_nms_as_eager(len(rpn_maps)):
            boxes, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        b, scores, labels = self._detections(features, boxes[0], image_size)
        ratio = original.to(torch.float32) / resized.to(torch.float32)
        boxes_out = torch.stack(
            [b[:, 0] * ratio[1], b[:, 1] * ratio[0], b[:, 2] * ratio[1], b[:, 3] * ratio[0]], dim=1
        )
        return boxes_out, scores, labels

    def _detections(
        self, features: dict[str, Tensor], proposals: Tensor, image_size: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """torchvision's ``RoIHeads`` in eval mode (pool, box head, predictor,
        ``postprocess_detections``) for one image, with every size data-dependent in the
        graph, and unreported classes dropped after the NMS, before the top-k.

        Written out rather than called: ``BoxCoder.decode`` reshapes to ``(number of RoIs,
        -1)``, which fails on an image without RoIs (and eager skips it with a Python ``if``
        the trace freezes)."""
        heads = self.roi_heads
        pooled = heads.box_roi_pool(features, [proposals], [image_size])
        class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
        k = self.num_classes
        boxes = heads.box_coder.decode_single(box_regression, proposals).reshape(-1, k, 4)
        boxes = box_ops.clip_boxes_to_image(boxes, image_size)
        scores = F.softmax(class_logits, -1)
        labels = torch.arange(k).view(1, -1).expand_as(scores)
        # Without the background; every (RoI, class) pair a candidate.
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:], labels[:, 1:].reshape(-1)
        scores = scores.reshape(-1)
        inds = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms_as_eager(boxes, scores, labels, heads.nms_thresh, k)
        if self.filters_classes:
            # After the NMS, as fpn detect does: the placeholders' boxes count in the NMS's
            # choice of way (and its shift's largest coordinate), and they suppress only
            # their own class.
            keep = keep[self.reported[labels[keep] - 1]]
        keep = keep[: heads.detections_per_img]
        return boxes[keep], scores[keep], labels[keep]

    def _anchors(self, maps: list[Tensor], padded: Tensor) -> Tensor:
        """Anchors of every level for this image's maps: ``Tensor[sum_l H_l W_l A_l, 4]``."""
        out = []
        for i, fmap in enumerate(maps):
            size = torch._shape_as_tensor(fmap)[-2:]  # (h_l, w_l)
            if self.grid == "stride":
                stride = torch.tensor([self.strides[i], self.strides[i]], dtype=torch.int64)
            else:  # torchvision's: padded input size // map size, per axis
                stride = torch.div(padded, size, rounding_mode="floor")
            shifts_x = torch.arange(0, size[1], dtype=torch.int32) * stride[1]  # type: ignore[call-overload]
            shifts_y = torch.arange(0, size[0], dtype=torch.int32) * stride[0]  # type: ignore[call-overload]
            sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            sx, sy = sx.reshape(-1), sy.reshape(-1)
            shifts = torch.stack((sx, sy, sx, sy), dim=1)
            cell = getattr(self, f"cell_anchors_{i}")
            out.append((shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4))
        return torch.cat(out)


INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")
ONNX_OPSET = 17


def _example_image() -> Tensor:
    """An input to trace with: odd, non-square, of no particular size (every size is dynamic)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (97, 131, 3), dtype=torch.uint8, generator=g)


def onnx_bytes(model: FPNFasterRCNN, metadata: dict[str, Any], winograd: bool = False) -> bytes:
    """The ONNX file of ``ExportableDetector(model)``: the TorchScript-based exporter
    (``dynamo=False``; the dynamo exporter cannot trace torchvision's detection heads), opset
    :data:`ONNX_OPSET`, input ``image`` ``uint8[H, W, 3]`` with dynamic H and W, outputs
    ``boxes float32[N, 4]``, ``scores float32[N]``, ``labels int64[N]``; ``metadata`` stored
    as JSON in ``metadata_props`` (needs the ``onnx`` package).

    ``winograd``: BatchNorm folded into the convolutions and the wide 3x3 ones written as
    Winograd F(4x4, 3x3) (:mod:`fpncli.modeling.winograd_graph`), on a copy of ``model``; the
    metadata records how many (``winograd_convs``, 0 without)."""
    import onnx

    swapped = 0
    if winograd:
        model, swapped = winograd_copy(model)
    metadata = {**metadata, "winograd_convs": swapped}
    wrapper = ExportableDetector(model).eval()
    buffer = io.BytesIO()
    # Tracing warns about every Python number it freezes and that torch.jit is deprecated;
    # the graph is checked against eager PyTorch instead (fpncli.deploy.export).
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (_example_image(),),
            buffer,  # type: ignore[arg-type]
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                INPUT_NAME: {0: "height", 1: "width"},
                **{n: {0: "detections"} for n in OUTPUT_NAMES},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    props = {ONNX_METADATA_KEY: json.dumps(metadata)}
    props["class_names"] = json.dumps(list(model.config.class_names))
    props["category_ids"] = json.dumps(list(model.config.category_ids))
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "fpncli"
    return proto.SerializeToString()


def winograd_copy(model: FPNFasterRCNN) -> tuple[FPNFasterRCNN, int]:
    """``(copy, swapped)``: a copy of ``model`` in eval mode with BatchNorm folded into its
    convolutions (ONNX Runtime would fuse a BatchNorm into a direct Conv, not into the
    Winograd graph) and its wide 3x3 convolutions, ``swapped`` of them, as
    :class:`~fpncli.modeling.winograd_graph.WinogradGraphConv`."""
    from fpncli.modeling.optimize import optimize_for_inference
    from fpncli.modeling.winograd_graph import use_winograd_graph

    model = optimize_for_inference(model, winograd=False)  # a copy, eval mode, BatchNorm folded
    return model, use_winograd_graph(model)


def torchscript_bytes(model: FPNFasterRCNN, metadata: dict[str, Any], winograd: bool = False) -> bytes:
    """The TorchScript archive of ``ExportableDetector(model)`` (traced: ``torch.jit.script``
    cannot compile torchvision's detection heads with fpncli's necks), loadable with plain
    ``torch.jit.load``; ``metadata`` as JSON in the extra file :data:`TORCHSCRIPT_METADATA`.

    ``winograd``: the model as ``fpn detect`` runs it on the CPU (BatchNorm folded, 3x3
    stride-1 convolutions through NNPACK's Winograd, :mod:`fpncli.modeling.optimize`), on a
    copy; the file then runs on CPUs only. The metadata records how many convolutions
    (``winograd_convs``, 0 without)."""
    swapped = 0
    if winograd:
        from fpncli.modeling.optimize import optimize_for_inference, use_winograd, winograd_available

        if not winograd_available():
            raise FpnError("--winograd for TorchScript needs NNPACK, which this PyTorch build lacks")
        model = optimize_for_inference(model, winograd=False)  # a copy, eval mode, BatchNorm folded
        swapped = use_winograd(model)
    metadata = {**metadata, "winograd_convs": swapped}
    wrapper = ExportableDetector(model).eval()
    buffer = io.BytesIO()
    # Tracing warns about every Python number it freezes and that torch.jit is deprecated;
    # the graph is checked against eager PyTorch instead (fpncli.deploy.export).
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (_example_image(),), check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    return buffer.getvalue()
