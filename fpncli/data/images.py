"""Reading images the way a viewer shows them, with one plain reason when that fails.

Every command reads images through :func:`read_image`: EXIF orientation applied, any
colour mode (grayscale, palette, RGBA, CMYK, 16-bit) converted to 8-bit RGB.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fpncli.errors import FpnError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Larger images are refused instead of exhausting memory: 100 MP (10000 x 10000) peaks at
# ~2.2 GB of RAM through decode + resize + forward (~14 bytes per pixel over the model,
# measured, see README "Limits"), so even 4 parallel workers stay well within 24 GB.
# FPN_MAX_PIXELS (environment) or `fpn detect --max-pixels` changes it.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "FPN_MAX_PIXELS"
# We enforce our own limit above; Pillow's decompression-bomb check would fire earlier.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(FpnError):
    """An image that cannot be used; the message is ``"<path>: <plain reason>"``."""


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def default_max_pixels() -> int:
    """``$FPN_MAX_PIXELS`` when set (a positive integer), else :data:`DEFAULT_MAX_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").replace("_", "").replace(",", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise FpnError(
            f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}: expected a positive number of pixels"
        )
    return int(text)


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB PIL image (fully decoded).

    ``max_pixels``: larger images are refused (default :func:`default_max_pixels`).

    Raises:
        ImageReadError: missing, empty, unreadable, not an image, truncated or corrupt,
            or larger than ``max_pixels``.
    """
    path = Path(path)
    if max_pixels is None:
        max_pixels = default_max_pixels()
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"{path}: image too large ({width}x{height} = {width * height:,} pixels; the limit is "
                    f"{max_pixels:,} pixels to bound memory, ~14 bytes per pixel; raise it with "
                    f"--max-pixels N (fpn detect) or {MAX_PIXELS_ENV}=N)"
                )
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageReadError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image (unrecognised file format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated image data"
        raise ImageReadError(f"{path}: corrupt image ({reason})") from None


def resized_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(width, height) after torchvision's detection resize: the shorter side to ``min_size``,
    the longer side capped at ``max_size`` (``GeneralizedRCNNTransform``, floor rounding)."""
    scale = min(min_size / max(min(width, height), 1), max_size / max(width, height, 1))
    return math.floor(width * scale), math.floor(height * scale)


def model_size_problem(width: int, height: int, min_sizes: Sequence[int] | int, max_size: int) -> str | None:
    """Why an image of ``width`` x ``height`` pixels cannot pass through a model that resizes to
    shorter side ``min_sizes`` (each one, for training) and longer side at most ``max_size``;
    None when it can. A very elongated image (e.g. 3000x1) would shrink to 0 pixels."""
    for min_size in [min_sizes] if isinstance(min_sizes, int) else min_sizes:
        w, h = resized_size(width, height, int(min_size), int(max_size))
        if w < 1 or h < 1:
            return (
                f"image too elongated for the model ({width}x{height} pixels would be resized "
                f"to {w}x{h}: shorter side {min_size}, longer side at most {max_size})"
            )
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16- and 32-bit integer images are scaled from their full range (not clipped), float
    images from 0..1; alpha is dropped (palette transparency included).
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        # 16-bit data arrives as mode "I" too; scale by the range it can hold.
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")
