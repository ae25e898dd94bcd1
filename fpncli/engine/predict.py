"""Batched inference over image files: the one pipeline behind `fpn detect` and `fpn eval`.

Images are decoded in DataLoader workers, forwarded in batches, and yielded in input order.
An unreadable image yields a result with ``error`` set; it never stops the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor

from fpncli.data.images import ImageReadError, read_image


@dataclass
class ImageResult:
    """Detections for one input image.

    Attributes:
        path: the input file.
        width, height: size of the upright image (EXIF orientation applied), pixels.
        boxes: ``Tensor[N, 4]`` float32, xyxy in that image's pixels (CPU).
        scores: ``Tensor[N]`` float32 in 0..1.
        labels: ``Tensor[N]`` int64, the model's contiguous labels 1..K.
        error: why the image could not be used (then N = 0), else None.
    """

    path: Path
    width: int
    height: int
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    error: str | None = None


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            img = read_image(self.paths[index])
        except ImageReadError as exc:
            return index, None, str(exc)
        return index, pil_to_tensor(img), None  # uint8 [3, H, W]; scaled on the device


def _collate(batch):
    return batch


def predict_images(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    device: torch.device | str = "cpu",
    batch_size: int = 2,
    workers: int = 0,
    on_result: Callable[[ImageResult], None] | None = None,
) -> Iterator[ImageResult]:
    """Run ``model`` over ``paths`` in batches, yielding one :class:`ImageResult` per path, in order.

    Args:
        model: an :class:`~fpncli.modeling.detector.FPNFasterRCNN` (put in eval mode here).
        paths: image files.
        device: where the forward pass runs.
        batch_size: images per forward pass.
        workers: DataLoader worker processes decoding images (0 = in this process).
        on_result: called with each result as it is produced (progress reporting).
    """
    device = torch.device(device)
    model.eval().to(device)
    paths = [Path(p) for p in paths]
    loader = DataLoader(_ImageFiles(paths), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, shuffle=False)
    empty = torch.zeros((0,))
    with torch.inference_mode():
        for batch in loader:
            good = [(i, t) for i, t, _ in batch if t is not None]
            outputs = {}
            if good:
                images = [t.to(device).float().div_(255) for _, t in good]
                for (i, _), out in zip(good, model(images)):
                    outputs[i] = out
            for i, tensor, error in batch:
                if tensor is None:
                    result = ImageResult(paths[i], 0, 0, empty.reshape(0, 4), empty,
                                         empty.long(), error=error)
                else:
                    out = outputs[i]
                    result = ImageResult(paths[i], tensor.shape[2], tensor.shape[1],
                                         out["boxes"].float().cpu(), out["scores"].float().cpu(),
                                         out["labels"].cpu())
                if on_result is not None:
                    on_result(result)
                yield result
