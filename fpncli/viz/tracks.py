"""Drawing tracked objects on a video frame: each track's box, id and recent path in the
track's own colour, and the counting line with its counts.

A track's colour depends only on its id (:func:`track_color`), so it keeps it from frame to
frame; box and label style follow :func:`fpncli.viz.draw.draw_detections`.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from fpncli.viz.draw import _font, _text_color, class_color, draw_detections, style_for

LINE_COLOR = (255, 214, 0)  # the counting line: a yellow no track colour is close to for long


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable RGB colour for a track id (neighbouring ids far apart in hue)."""
    return class_color(track_id)


def draw_tracks(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    names: Sequence[str],
    scores: Sequence[float],
    track_ids: Sequence[int],
    paths: Sequence[Sequence[tuple[float, float]]],
    count_line: Sequence[float] | None = None,
    count_text: str | None = None,
) -> Image.Image:
    """Return an RGB copy of ``image`` with the tracked boxes, labelled ``"#7 car 0.91"``.

    Args:
        image: any PIL image (converted to RGB).
        boxes: per box ``[x1, y1, x2, y2]`` in ``image`` pixels.
        names, scores, track_ids: per box its class name, score and track id.
        paths: per box its track's recent positions (box centres, oldest first), drawn as
            a line ending at the box.
        count_line: ``[x1, y1, x2, y2]`` of the counting line, drawn under the boxes.
        count_text: the counts, written at the line's middle.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    draw = ImageDraw.Draw(out)
    width, font_size = style_for(*out.size)
    if count_line is not None:
        x1, y1, x2, y2 = (float(v) for v in count_line)
        draw.line([(x1, y1), (x2, y2)], fill=LINE_COLOR, width=2 * width)
        if count_text:
            # At the line's middle, under the boxes: a box's label stays readable over it.
            font = _font(font_size)
            pad = max(1, font_size // 6)
            left, top, right, bottom = draw.textbbox((0, 0), count_text, font=font)
            tw, th = right - left + 2 * pad, bottom - top + 2 * pad
            tx = min(max(0.0, (x1 + x2) / 2 - tw / 2), max(0.0, out.width - tw))
            ty = min(max(0.0, (y1 + y2) / 2 - th / 2), max(0.0, out.height - th))
            draw.rectangle([tx, ty, tx + tw, ty + th], fill=LINE_COLOR)
            draw.text((tx + pad - left, ty + pad - top), count_text, fill=_text_color(LINE_COLOR), font=font)
    for path, track_id in zip(paths, track_ids):
        points = [(float(x), float(y)) for x, y in path]
        color = track_color(track_id)
        if len(points) > 1:
            draw.line(points, fill=color, width=2 * width, joint="curve")
        if points:
            x, y = points[-1]
            r = 2 * width
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    labels = [f"#{t} {n}" for t, n in zip(track_ids, names)]
    return draw_detections(out, boxes, labels, scores, list(track_ids))
