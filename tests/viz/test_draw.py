"""viz.draw: stable class colours, boxes and labels readable at any image size."""

from __future__ import annotations

import itertools

from PIL import Image

from fpncli.viz.draw import class_color, draw_detections, style_for


def test_class_colors_are_stable_and_distinct():
    colors = [class_color(k) for k in range(1, 91)]
    assert colors == [class_color(k) for k in range(1, 91)]  # same key, same colour
    assert len(set(colors)) == 90
    # Neighbouring ids are easy to tell apart (not just different by one unit).
    for a, b in itertools.pairwise(colors):
        assert sum(abs(x - y) for x, y in zip(a, b)) > 60


def test_draw_marks_box_and_label_and_keeps_input():
    image = Image.new("RGB", (200, 150), (128, 128, 128))
    out = draw_detections(image, [[50, 60, 150, 140]], ["person"], [0.93], [1])
    assert image.getpixel((50, 100)) == (128, 128, 128)  # the input is not drawn on
    assert out.size == image.size
    color = class_color(1)
    assert out.getpixel((50, 100)) == color  # left edge of the box
    assert out.getpixel((100, 140)) == color  # bottom edge
    assert out.getpixel((100, 100)) == (128, 128, 128)  # inside stays clear
    # The label sits above the box, on a filled rectangle of the class colour.
    label_area = [out.getpixel((x, y)) for x in range(50, 90) for y in range(40, 59)]
    assert label_area.count(color) > 100
    assert any(p != color for p in label_area)  # ...with text on it


def test_label_inside_when_box_touches_the_top_and_class_colour_by_name():
    image = Image.new("L", (100, 80), 0)  # any mode: drawn in RGB
    out = draw_detections(image, [[0, 0, 60, 40]], ["car"])
    assert out.mode == "RGB"
    assert any(out.getpixel((x, 5)) != (0, 0, 0) for x in range(5, 30))
    same = draw_detections(image, [[0, 0, 60, 40]], ["car"])
    assert out.tobytes() == same.tobytes()


def test_style_scales_with_image_size():
    small_line, small_font = style_for(64, 48)
    big_line, big_font = style_for(6000, 4000)
    assert small_line >= 1 and small_font >= 10  # never invisible on a thumbnail
    assert big_line >= 10 and big_font >= 80  # never lost on a large photo
    out = draw_detections(Image.new("RGB", (16, 12)), [[2, 2, 10, 10]], ["x"], [0.5])
    assert out.size == (16, 12)


def test_no_detections_gives_an_equal_copy():
    image = Image.new("RGB", (30, 20), (1, 2, 3))
    out = draw_detections(image, [], [], [])
    assert out is not image and out.tobytes() == image.tobytes()
