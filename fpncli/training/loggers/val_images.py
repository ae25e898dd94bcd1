"""A few validation images with the detections of the model being trained, for a logger."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

from fpncli.checkpoint import unwrap
from fpncli.config import ModelConfig
from fpncli.data.dataset import DetectionDataset
from fpncli.data.images import read_image
from fpncli.viz.draw import draw_detections

SCORE_THRESHOLD = 0.5  # as `fpn detect`'s default: what a user would see
MAX_SIDE = 512  # pixels: the event file stays small


class ValidationImages:
    """The first ``n`` usable validation images of the annotation file: the same ones at
    every evaluation, so that their pictures show the training's progress."""

    def __init__(self, annotation_file: str | os.PathLike, images_dir: str | os.PathLike, n: int) -> None:
        dataset = DetectionDataset(annotation_file, images_dir)
        self.paths: list[Path] = [Path(r.path) for r in dataset.records[:n]]

    @torch.no_grad()
    def render(self, model: nn.Module, device: torch.device) -> list[tuple[str, np.ndarray]]:
        """``[(file stem, uint8 array[H, W, 3])]``: each image (longer side at most
        :data:`MAX_SIDE`) with the detections scoring at least :data:`SCORE_THRESHOLD` drawn
        (class name and score). An unreadable image is left out. ``model`` is put back in the
        mode it was in, and the RNG states are untouched (a resumed run stays exact)."""
        model = unwrap(model)
        config: ModelConfig = model.config  # type: ignore[assignment]  # an FPNFasterRCNN's
        names, ids = list(config.class_names), list(config.category_ids)
        was_training = model.training
        out: list[tuple[str, np.ndarray]] = []
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model.eval()
            try:
                for path in self.paths:
                    try:
                        image = read_image(path)
                    except Exception:  # unreadable now: the others still show
                        continue
                    tensor = pil_to_tensor(image).to(device).float().div_(255)
                    det = model([tensor])[0]
                    keep = det["scores"] >= SCORE_THRESHOLD
                    boxes = det["boxes"][keep].cpu().tolist()
                    labels = det["labels"][keep].cpu().tolist()
                    drawn = draw_detections(
                        image,
                        boxes,
                        [names[label - 1] for label in labels],
                        det["scores"][keep].cpu().tolist(),
                        color_keys=[ids[label - 1] for label in labels],
                    )
                    drawn.thumbnail((MAX_SIDE, MAX_SIDE))
                    out.append((path.stem, np.asarray(drawn, dtype=np.uint8)))
            finally:
                model.train(was_training)
        return out
