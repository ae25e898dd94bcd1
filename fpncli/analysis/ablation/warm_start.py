"""The ablation's shared warm start: the bottom-up ResNet pretrained once, by classifying crops
of the training split's objects (and of background), then given to every row.

Why a classification pretext rather than the FPN row's backbone after a longer run: the
published gains were all measured on an ImageNet-*classification* backbone, which owes
nothing to any neck. A backbone taken from a trained FPN detector has co-adapted with the
FPN neck and its heads, and would favour the FPN row over the necks it is compared with.
Crops of the shapes, centred and rescaled to one size like ImageNet's, give every row the
same neck-neutral start on the data at hand (ImageNet itself cannot be downloaded here).

The file (``OUT/warm_start.pt``, a plain ResNet state dict without ``fc``, written
atomically) is what ``--backbone-weights`` takes; ``OUT/warm_start.json`` records how it
was made and its sha256. A file that exists is reused only when that record matches; any
mismatch is an error, never a silent retrain (``--redo-warm-start`` makes it again).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

from fpncli.errors import FpnError
from fpncli.runtime.events import ProgressFn

WARM_START_FILE = "warm_start.pt"
WARM_START_RECORD = "warm_start.json"
METHOD = "crop classification v1"
BASE_PRETEXT_ITERS = 300  # at budget 1; scales with --budget like the rows' iterations
PRETEXT_BATCH = 32
CROP = 64  # px: C5 is 2x2, enough for a shape's class; 4x cheaper than 128 px
MAX_CROPS = 20_000  # bounds memory at large budgets (64*64*3 bytes each)
VAL_CROPS = 400


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pretext_iters(budget: float) -> int:
    return max(2, round(BASE_PRETEXT_ITERS * budget))


def _crop_boxes(width: int, height: int, boxes: list[list[float]], gen: Any) -> tuple[list, list[int]]:
    """Square crops (xyxy) around each object with some context, labelled by the object's
    position in ``boxes``' labels (filled by the caller), and background squares that overlap
    no object (label 0): ``(crops, indices)`` where index -1 means background."""
    import torch
    from torchvision.ops import box_iou

    crops, which = [], []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        side = max(x1 - x0, y1 - y0, 4.0) * (1.2 + 0.8 * float(torch.rand(1, generator=gen)))
        cx = (x0 + x1) / 2 + side * 0.15 * (2 * float(torch.rand(1, generator=gen)) - 1)
        cy = (y0 + y1) / 2 + side * 0.15 * (2 * float(torch.rand(1, generator=gen)) - 1)
        crops.append([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
        which.append(i)
    gt = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    for _ in range(max(1, len(boxes) // 2)):
        for _try in range(10):
            side = 16 + float(torch.rand(1, generator=gen)) * max(1.0, min(width, height) / 2 - 16)
            x = float(torch.rand(1, generator=gen)) * max(1.0, width - side)
            y = float(torch.rand(1, generator=gen)) * max(1.0, height - side)
            square = [x, y, x + side, y + side]
            if len(boxes) == 0 or float(box_iou(torch.tensor([square]), gt).max()) < 0.1:
                crops.append(square)
                which.append(-1)
                break
    return crops, which


def crop_set(ann: str, images: str, limit: int, seed: int) -> tuple[Any, Any, list[str]]:
    """``(uint8 Tensor[N, 3, CROP, CROP], int64 labels[N], class names)`` from a COCO split;
    label 0 is background, 1..K the categories in id order."""
    import torch
    from torchvision.transforms.functional import pil_to_tensor

    from fpncli.data.coco import load_coco, safe_image_path, xywh_to_xyxy
    from fpncli.data.images import read_image

    coco = load_coco(ann)
    gen = torch.Generator().manual_seed(seed)
    tensors, labels = [], []
    ids = list(coco.images)
    # A seeded order, so that a capped set (MAX_CROPS) samples the whole split, not its start.
    for i in torch.randperm(len(ids), generator=gen).tolist():
        image_id, rec = ids[i], coco.images[ids[i]]
        path = safe_image_path(images, rec["file_name"], source=str(coco.path))
        if not path.is_file():
            continue
        objects = coco.annotations[image_id]
        boxes = [xywh_to_xyxy(a["bbox"]) for a in objects]
        image = read_image(path)
        for box, index in zip(*_crop_boxes(image.width, image.height, boxes, gen)):
            # PIL pads a crop reaching outside the image with black, as zero-padding would.
            crop = image.crop(tuple(round(v) for v in box)).resize((CROP, CROP))
            tensors.append(pil_to_tensor(crop))
            labels.append(0 if index < 0 else coco.categories.id_to_label[objects[index]["category_id"]])
            if len(tensors) >= limit:
                break
        if len(tensors) >= limit:
            break
    if not any(labels):
        raise FpnError(f"{ann}: no object to crop for the warm start")
    return torch.stack(tensors), torch.tensor(labels), ["background", *coco.categories.names]


def pretrain(
    backbone: str,
    train: tuple[Any, Any, list[str]],
    val: tuple[Any, Any, list[str]],
    iters: int,
    seed: int,
    device: Any,
    emit: ProgressFn,
) -> tuple[dict[str, Any], float]:
    """Train ``torchvision.models.<backbone>`` to classify the crops (AdamW, cosine lr, random
    flips, ImageNet normalisation as the detector applies); returns its state dict without
    ``fc`` and its accuracy on ``val``."""
    import torch
    import torchvision

    from fpncli.config import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(seed)
    images, labels, names = train
    model = getattr(torchvision.models, backbone)(num_classes=len(names)).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]

    def prepare(batch: Any) -> Any:
        return (batch.to(device).float() / 255 - mean) / std

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / iters))
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    log_every = max(1, iters // 10)
    for it in range(1, iters + 1):
        pick = torch.randint(len(labels), (PRETEXT_BATCH,), generator=gen)
        batch = prepare(images[pick])
        flip = torch.rand(len(pick), generator=gen) < 0.5
        batch[flip.to(device)] = batch[flip.to(device)].flip(-1)
        loss = torch.nn.functional.cross_entropy(model(batch), labels[pick].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if it % log_every == 0 or it == iters:
            emit({"event": "warm_start_iter", "iter": it, "total_iterations": iters, "loss": loss.item()})
    model.eval()
    val_images, val_labels, _ = val
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(val_labels), 64):
            logits = model(prepare(val_images[start : start + 64]))
            correct += int((logits.argmax(1).cpu() == val_labels[start : start + 64]).sum())
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    return state, correct / max(1, len(val_labels))


def warm_start_key(backbone: str, data_root: Path, plan: dict[str, int], budget: float, seed: int) -> dict:
    """What decides the warm start's weights (its record must match it to be reused)."""
    return {
        "method": METHOD,
        "backbone": backbone,
        "data": str(data_root),
        "train_images": plan["train_images"],
        "iters": pretext_iters(budget),
        "batch_size": PRETEXT_BATCH,
        "crop": CROP,
        "seed": seed,
    }


def ensure_warm_start(
    out: Path,
    key: dict[str, Any],
    splits: tuple[str, str, str, str],
    device: str,
    redo: bool,
    emit: ProgressFn,
) -> dict[str, Any]:
    """``OUT/warm_start.pt``, made (``redo`` or absent) or reused (present, its record matching
    ``key`` and its sha256); returns the record (``path``, ``sha256``, ``accuracy``, ...).

    ``splits``: train annotations, train images, val annotations, val images.

    Raises:
        FpnError: a file that exists but was made otherwise, or changed since.
    """
    import json

    from fpncli.atomic import write_json
    from fpncli.checkpoint import atomic_torch_save
    from fpncli.device import resolve_device

    path, record_path = out / WARM_START_FILE, out / WARM_START_RECORD
    if path.exists() and not redo:
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            record = None
        redo_hint = "; --redo-warm-start makes it again (rows trained from it are then retrained)"
        if not isinstance(record, dict) or record.get("key") != key:
            raise FpnError(
                f"{path}: exists but was not made by this warm start with these settings "
                f"({record_path} {'differs' if isinstance(record, dict) else 'is missing or unreadable'})"
                + redo_hint
            )
        if file_sha256(path) != record.get("sha256"):
            raise FpnError(
                f"{path}: changed since it was made (sha256 differs from {record_path})" + redo_hint
            )
        emit({"event": "warm_start_reused", "path": str(path), "sha256": record["sha256"]})
        return {**record, "path": str(path)}
    started = time.perf_counter()
    train_ann, train_images, val_ann, val_images = splits
    train = crop_set(train_ann, train_images, MAX_CROPS, key["seed"])
    val = crop_set(val_ann, val_images, VAL_CROPS, key["seed"] + 1)
    emit({"event": "warm_start", "path": str(path), "crops": len(train[1]), "iters": key["iters"]})
    state, accuracy = pretrain(
        key["backbone"], train, val, key["iters"], key["seed"], resolve_device(device), emit
    )
    atomic_torch_save(state, path)
    record = {
        "key": key,
        "sha256": file_sha256(path),
        "classes": train[2],
        "train_crops": len(train[1]),
        "val_crops": len(val[1]),
        "val_accuracy": accuracy,
        "seconds": time.perf_counter() - started,
    }
    # Written after the file: a file without its record is refused above, never reused blindly.
    write_json(record_path, record)
    emit({"event": "warm_start_done", "path": str(path), **record})
    return {**record, "path": str(path)}
