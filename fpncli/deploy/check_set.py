"""The images the export self-check runs: a built-in set and the user's ``--check-images``.

The built-in set exercises what an export can get wrong: both orientations and odd sizes (so
resizing and padding hit every rounding case), very wide and very tall images, a small and a
tiny one (upscaled a lot), and a blank image (usually no detections: the empty output).
Smooth random colour fields with solid rectangles give a detector something to fire on;
seeded, so every run checks the same set.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fpncli.errors import FpnError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

# (height, width) of each built-in image: odd sizes, both orientations, extreme aspect
# ratios, small ones. (A 1x1 image is accepted but degenerate: a uniform colour upscaled
# 800 times makes every anchor tie, so it tests float noise, not the export.)
SIZES = {
    "landscape": (333, 500),
    "portrait": (500, 333),
    "square": (257, 257),
    "wide": (97, 701),
    "tall": (701, 97),
    "small": (37, 53),
    "tiny": (13, 17),
}


def synthetic_images() -> list[tuple[str, Tensor]]:
    """The built-in check set, ``(name, Tensor[H, W, 3] uint8)``, names like ``"wide 701x97"``."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(16)
    out = []
    for name, (h, w) in SIZES.items():
        coarse = torch.rand((1, 3, h // 32 + 2, w // 32 + 2), generator=g)
        img = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        for _ in range(6):
            y0, x0 = (int(torch.randint(0, max(1, s - 1), (1,), generator=g)) for s in (h, w))
            y1, x1 = y0 + max(1, h // 4), x0 + max(1, w // 4)
            img[:, y0:y1, x0:x1] = torch.rand((3, 1, 1), generator=g)
        out.append((f"{name} {w}x{h}", img.mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()))
    out.append(("blank 320x240", torch.full((240, 320, 3), 128, dtype=torch.uint8)))
    return out


def user_images(folder: Path, min_size: int, max_size: int) -> tuple[list[tuple[str, Tensor]], list[str]]:
    """The readable images of ``folder`` the model accepts, and ``"path: reason"`` for the rest.

    Raises:
        FpnError: the folder holds no image at all.
    """
    from torchvision.transforms.functional import pil_to_tensor

    from fpncli.data.images import (
        IMAGE_EXTENSIONS,
        ImageReadError,
        is_image_file,
        model_size_problem,
        read_image,
    )

    paths = sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))
    if not paths:
        raise FpnError(f"{folder}: --check-images holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    images, skipped = [], []
    for path in paths:
        try:
            img = read_image(path)
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        problem = model_size_problem(img.size[0], img.size[1], min_size, max_size)
        if problem is not None:
            skipped.append(f"{path}: {problem}")
            continue
        images.append((str(path), pil_to_tensor(img).permute(1, 2, 0).contiguous()))
    return images, skipped
