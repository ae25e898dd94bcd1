"""Measuring a trained neck the way Tables 1 and 3 of the FPN paper do: RPN proposal recall
(AR100, AR1k, AR1k for small / medium / large objects; the RPN in eval mode keeping its 1000
best proposals), detector AP (AP50, AP, APs, APm, APl at the model's own inference settings),
parameters and inference time per image.

Proposal recall is COCOeval's average recall with the proposals as class-agnostic
detections (``useCats = 0``, ``maxDets = [100, 1000]``, IoU 0.50:0.95), the usual way to
score proposals on COCO.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpncli.analysis.ablation.rows import row_pooling
from fpncli.errors import FpnError
from fpncli.evaluation.coco_eval import RECALL_KEYS, proposal_recall
from fpncli.runtime.events import ProgressFn

TIMED_IMAGES = 20
PROPOSALS = 1000
PYRAMID_LEVELS = 5  # P2..P6: the RPN candidates every neck is given (see equal_pre_nms)
AP_KEYS = ("AP50", "AP", "APs", "APm", "APl")


# --------------------------------------------------------------------------- proposals


def equal_pre_nms(model: Any, per_level: int) -> int:
    """Pre-NMS top-n per level that gives every neck the candidates of a five-level pyramid.

    torchvision (like Detectron) keeps the top-n anchors *per level* before NMS, so a
    single-level baseline would see a fifth of FPN's candidates; Detectron2's C4 RPN keeps
    6000 for the same reason. Here a neck with L RPN levels keeps ``per_level * 5 / L``.
    """
    return max(1, round(per_level * PYRAMID_LEVELS / len(model.rpn_levels)))


def rpn_proposals(model: Any, images: Sequence[Any], top_n: int = PROPOSALS) -> list[Any]:
    """The RPN's proposals for ``images`` in eval mode, keeping the ``top_n`` best per image.

    Args:
        model: an :class:`~fpncli.modeling.detector.FPNFasterRCNN`.
        images: ``[Tensor[3, H, W]]`` floats in 0..1 on the model's device.
        top_n: post-NMS proposals per image (Table 1 uses 1000); the pre-NMS top-n per
            level is ``top_n`` spread as :func:`equal_pre_nms` says.

    Returns:
        Per image ``Tensor[N, 4]`` (N <= top_n), xyxy in that image's pixels, best first.
    """
    import torch

    was_training = model.training
    model.eval()
    limits = model.inference_limits(rpn_pre_nms_top_n=equal_pre_nms(model, top_n), rpn_post_nms_top_n=top_n)
    try:
        with torch.inference_mode(), limits:
            return model.propose(list(images))
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- measurements


def _val_images(val_ann: str, val_images: str) -> tuple[dict[str, Any], list[tuple[int, Path]]]:
    from fpncli.data.coco import load_coco, safe_image_path

    coco = load_coco(val_ann)
    paths = []
    for image_id, rec in coco.images.items():
        path = safe_image_path(val_images, rec["file_name"], source=str(coco.path))
        if path.is_file():
            paths.append((image_id, path))
    if not paths:
        raise FpnError(f"{val_ann}: none of its images were found in {val_images}")
    return coco.raw, paths


def _load_tensor(path: Path):
    from torchvision.transforms.functional import pil_to_tensor

    from fpncli.data.images import read_image

    return pil_to_tensor(read_image(path)).float().div_(255)


def measure_recall(
    model: Any,
    dataset: dict[str, Any],
    paths: list[tuple[int, Path]],
    device: Any,
    batch_size: int = 2,
    top_n: int = PROPOSALS,
    backend: str = "auto",
) -> dict[str, float]:
    """Proposal recall of ``model``'s RPN on the images ``paths`` (``(image_id, file)``)."""
    proposals: dict[int, list[list[float]]] = {}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [_load_tensor(p).to(device) for _, p in chunk]
        for (image_id, _), boxes in zip(chunk, rpn_proposals(model, images, top_n)):
            proposals[image_id] = boxes.float().cpu().tolist()
    ids = {image_id for image_id, _ in paths}
    subset = dict(
        dataset,
        images=[im for im in dataset["images"] if im["id"] in ids],
        annotations=[a for a in dataset["annotations"] if a["image_id"] in ids],
    )
    return proposal_recall(subset, proposals, (100, top_n), backend=backend)


def used_parameters(model: Any, image: Any) -> int:
    """Parameters of the modules that one inference pass actually runs (the c4 baseline
    carries an unused conv5 stage, which must not count)."""
    import torch

    called: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, *_: called.add(id(mod))) for m in model.modules()]
    try:
        model.eval()
        with torch.inference_mode():
            model([image])
    finally:
        for h in hooks:
            h.remove()
    return sum(p.numel() for m in model.modules() if id(m) in called for p in m.parameters(recurse=False))


def time_inference(model: Any, images: list[Any], warmup: int = 2) -> float:
    """Median seconds per image, one image per forward pass (as the paper reports)."""
    import torch

    model.eval()
    times = []
    warmup = min(warmup, len(images) - 1)  # at least one timed pass, even for one image
    with torch.inference_mode():
        for i, image in enumerate([*images[:warmup], *images]):
            if image.is_cuda:
                torch.cuda.synchronize(image.device)
            t0 = time.perf_counter()
            model([image])
            if image.is_cuda:
                torch.cuda.synchronize(image.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- one row


def measure_row(
    model: Any,
    row: str,
    val_ann: str,
    val_images: str,
    settings: dict[str, Any],
    train_seconds: float | None,
    checkpoint: str,
    emit: ProgressFn,
    backend: str = "auto",
) -> dict[str, Any]:
    """The table row of a trained ``model``: recall, AP, parameters and time on the
    validation images, with what it was trained with (``result.json`` of its run)."""
    from fpncli.evaluation.evaluate import evaluate_model
    from fpncli.modeling.detector import count_parameters

    model.eval()
    dev = next(model.parameters()).device
    emit({"event": "measure", "neck": row, "what": "proposal recall"})
    dataset, paths = _val_images(val_ann, val_images)
    recall = measure_recall(model, dataset, paths, dev, backend=backend)
    emit({"event": "measure", "neck": row, "what": "detector AP"})
    # The preset's inference settings, with the RPN candidates equalised across necks.
    with model.inference_limits(rpn_pre_nms_top_n=equal_pre_nms(model, model.config.rpn_pre_nms_top_n_test)):
        metrics = evaluate_model(model, val_ann, val_images, device=dev, batch_size=2, backend=backend)
        assert metrics is not None  # not sharded: every process gets the metrics
    emit({"event": "measure", "neck": row, "what": "inference time"})
    timed = [_load_tensor(p).to(dev) for _, p in paths[: settings["timed_images"]]]
    seconds = time_inference(model, timed)
    return {
        "neck": row,
        **{k: recall[k] for k, _, _ in RECALL_KEYS},
        **{k: float(metrics[k]) for k in AP_KEYS},
        "roi_pooling": row_pooling(row),
        "parameters": count_parameters(model),
        "parameters_used": used_parameters(model, timed[0]),
        "seconds_per_image": seconds,
        "train_seconds": train_seconds,
        "levels": [{"name": s.name, "stride": s.stride} for s in model.levels.values()],
        "rpn_levels": model.rpn_levels,
        "roi_levels": model.roi_levels,
        "checkpoint": checkpoint,
        "device": str(dev),
        "settings": settings,
    }
