"""Which pyramid level each detection came from: the RPN level of its proposal and the level
its RoI was pooled from (``fpn eval --analyze``).

The default inference path never runs this: :meth:`FPNFasterRCNN.detect_prepared` calls
:func:`detect_with_levels` only while the model's ``record_levels`` attribute is true. It
runs the same modules in the same order as torchvision's ``GeneralizedRCNN`` (eval mode), so
the detections are the same (tested), and adds to each image's output:

- ``rpn_level``: ``Int64Tensor[M]``, the level k (P_k) of the anchor the proposal came from
  (torchvision's ``filter_proposals`` keeps each level's top-n and runs NMS per level; this
  is the same code with the level index kept);
- ``roi_level``: ``Int64Tensor[M]``, the level the proposal's RoI was pooled from: Eq. (1)
  for ``--roi-pooling level``; for ``afp`` the level that won most fused units, for ``soft``
  the level with the highest mean weight (both pool from every level; this is the one that
  counted most). The proposal whose box-head output became the detection is found by
  replaying the box head's post-processing with the proposal index kept; -1 if it fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from fpncli.modeling.levels import assign_level
from fpncli.modeling.pooler import AllLevelRoIPooler, LevelRoIPooler
from fpncli.modeling.soft_roi import SoftRoISelection

if TYPE_CHECKING:  # pragma: no cover
    from torchvision.models.detection.image_list import ImageList

    from fpncli.modeling.detector import FPNFasterRCNN


def _rpn_with_levels(
    rpn: Any, images: ImageList, features: dict[str, Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """torchvision's ``RegionProposalNetwork.forward`` (eval) and ``filter_proposals``, the
    level index of each kept proposal returned too: ``(boxes per image, level index per image)``."""
    maps = list(features.values())
    objectness, deltas = rpn.head(maps)
    anchors = rpn.anchor_generator(images, maps)
    num_images = len(anchors)
    per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
    objectness = objectness.detach().reshape(num_images, -1)
    device = proposals.device
    levels = torch.cat(
        [torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(per_level)]
    )
    levels = levels.reshape(1, -1).expand_as(objectness)
    top = rpn._get_top_n_idx(objectness, per_level)
    batch = torch.arange(num_images, device=device)[:, None]
    objectness, levels, proposals = objectness[batch, top], levels[batch, top], proposals[batch, top]
    boxes_out, levels_out = [], []
    for boxes, scores, lvl, shape in zip(proposals, torch.sigmoid(objectness), levels, images.image_sizes):
        boxes = box_ops.clip_boxes_to_image(boxes, shape)
        keep = box_ops.remove_small_boxes(boxes, rpn.min_size)
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = torch.where(scores >= rpn.score_thresh)[0]
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = box_ops.batched_nms(boxes, scores, lvl, rpn.nms_thresh)[: rpn.post_nms_top_n()]
        boxes_out.append(boxes[keep])
        levels_out.append(lvl[keep])
    return boxes_out, levels_out


def _proposal_index(
    heads: Any, logits: Tensor, regression: Tensor, proposals: list[Tensor], shapes: list
) -> list[Tensor]:
    """torchvision's ``RoIHeads.postprocess_detections`` with the proposal index of each
    kept detection: ``[Int64Tensor[M_i]]`` (same order as the detections)."""
    sizes = [p.shape[0] for p in proposals]
    boxes_all = heads.box_coder.decode(regression, proposals).split(sizes, 0)
    scores_all = F.softmax(logits, -1).split(sizes, 0)
    out = []
    for boxes, scores, shape in zip(boxes_all, scores_all, shapes):
        boxes = box_ops.clip_boxes_to_image(boxes, shape)
        labels = torch.arange(scores.shape[-1], device=scores.device).view(1, -1).expand_as(scores)
        index = torch.arange(scores.shape[0], device=scores.device).view(-1, 1).expand_as(scores)
        boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
        labels, index = labels[:, 1:].reshape(-1), index[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels, index = boxes[keep], scores[keep], labels[keep], index[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels, index = boxes[keep], scores[keep], labels[keep], index[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, heads.nms_thresh)[: heads.detections_per_img]
        out.append(index[keep])
    return out


def roi_levels(model: FPNFasterRCNN, features: dict[str, Tensor], boxes: Tensor) -> Tensor:
    """The level k each RoI (``Tensor[N, 4]`` xyxy, model-input pixels of one image) is
    pooled from (Eq. 1), or counts most in (``afp``: most fused units won; ``soft``: highest
    mean weight)."""
    pool = model.roi_heads.box_roi_pool
    first = pool.levels[0].level
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64)
    if isinstance(pool, SoftRoISelection):
        return pool.mean_level_weights(features, [boxes]).argmax(dim=1).cpu() + first
    if isinstance(pool, AllLevelRoIPooler):  # afp: the box head fuses the levels
        wins = model.roi_heads.box_head.level_wins(pool(features, [boxes]))
        return wins.argmax(dim=1).cpu() + first
    assert isinstance(pool, LevelRoIPooler)
    return assign_level(boxes.float().cpu(), pool.min_level, pool.max_level)


def detect_with_levels(
    model: FPNFasterRCNN, images: ImageList, original_sizes: list[tuple[int, int]]
) -> list[dict[str, Tensor]]:
    """``GeneralizedRCNN.forward`` (eval mode) on a batched ``ImageList``, each output dict with
    ``rpn_level`` and ``roi_level`` added (see the module docstring)."""
    features = model.backbone(images.tensors)
    proposals, level_index = _rpn_with_levels(model.rpn, images, features)
    level_k = torch.tensor([model.levels[name].level for name in features], dtype=torch.int64)
    captured: dict[str, Any] = {}
    hook = model.roi_heads.box_predictor.register_forward_hook(
        lambda _m, _i, out: captured.setdefault("out", out)
    )
    try:
        detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    finally:
        hook.remove()
    logits, regression = captured["out"]
    index = _proposal_index(model.roi_heads, logits, regression, proposals, images.image_sizes)
    for i, (det, idx) in enumerate(zip(detections, index)):
        n = len(det["boxes"])
        if len(idx) != n:  # a head whose post-processing differs from torchvision's
            det["rpn_level"] = det["roi_level"] = torch.full((n,), -1, dtype=torch.int64)
            continue
        chosen = proposals[i][idx]
        det["rpn_level"] = level_k[level_index[i][idx].cpu()]
        det["roi_level"] = roi_levels(model, {k: v[i : i + 1] for k, v in features.items()}, chosen)
    return model.transform.postprocess(detections, images.image_sizes, list(original_sizes))
