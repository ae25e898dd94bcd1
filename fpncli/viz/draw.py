"""Drawing boxes with class names and scores, readable on a thumbnail or a 50-megapixel photo.

Line width and font size follow the image size (about 1/45 of the shorter side for text),
and each class keeps one colour everywhere: :func:`class_color` depends only on its key.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import cache, lru_cache

from PIL import Image, ImageDraw, ImageFont

_GOLDEN = 0.618033988749895


@cache
def class_color(key: int) -> tuple[int, int, int]:
    """A stable, saturated RGB colour for class ``key`` (e.g. its category id).

    Hues step by the golden ratio, so neighbouring ids get far-apart colours; brightness
    alternates over two values to separate ids whose hues come close again.
    """
    hue = (key * _GOLDEN) % 1.0
    value = 0.95 if key % 2 == 0 else 0.8
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    # Relative luminance (ITU-R BT.601 weights): dark text on light labels, white on dark.
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def style_for(width: int, height: int) -> tuple[int, int]:
    """(line width, font size) in pixels for an image of ``width`` x ``height``."""
    short = max(1, min(width, height))
    return max(1, round(short / 300)), max(10, round(short / 45))


def draw_detections(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    names: Sequence[str],
    scores: Sequence[float] | None = None,
    color_keys: Sequence[int] | None = None,
) -> Image.Image:
    """Return an RGB copy of ``image`` with each box outlined and labelled ``"name 0.93"``.

    Args:
        image: any PIL image (converted to RGB).
        boxes: per detection ``[x1, y1, x2, y2]`` in ``image`` pixels.
        names: per detection the class name.
        scores: per detection the score in 0..1 (omitted from the label when None).
        color_keys: per detection the key of its colour (e.g. category id); defaults to
            a key derived from the name, so a class keeps its colour either way.

    The highest-scoring detections are drawn last, so their labels stay on top.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    if len(boxes) == 0:
        return out
    draw = ImageDraw.Draw(out)
    line, font_size = style_for(*out.size)
    font = _font(font_size)
    pad = max(1, font_size // 6)
    order: list[int] = list(range(len(boxes)))
    if scores is not None:
        order = sorted(order, key=lambda i: scores[i])
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        key = color_keys[i] if color_keys is not None else sum(map(ord, names[i]))
        color = class_color(int(key))
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line)
        text = names[i] if scores is None else f"{names[i]} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        # Above the box when there is room, else just inside its top edge.
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1
        tx = min(max(0.0, x1), max(0.0, out.width - tw - 2 * pad))
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=color)
        draw.text((tx + pad - left, ty + pad - top), text, fill=_text_color(color), font=font)
    return out
