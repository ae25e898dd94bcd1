"""int8 quantization (fpncli/deploy/quantize.py): which layers are rounded to int8 and which
stay float32, and a calibration set without readable images is one line."""

from __future__ import annotations

import pytest


def _int8_graph(tiny_model, images, method="minmax"):
    import onnx

    from fpncli.deploy.metadata import export_metadata
    from fpncli.deploy.quantize import quantize_graph
    from fpncli.modeling.export import onnx_bytes

    graph = onnx_bytes(tiny_model, export_metadata(tiny_model, "onnx", "tiny"), winograd=False)
    return onnx.load_from_string(quantize_graph(graph, images, where="test images", method=method))


def _activation_scales(graph) -> dict[str, float]:
    """Each quantized activation's scale: the (max - min) / 255 of its calibrated range."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    return {
        n.input[0]: float(values[n.input[1]])
        for n in graph.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in values and values[n.input[1]].size == 1
    }


def test_mean_calibration_narrows_the_ranges_minmax_takes(tmp_path, tiny_model, make_image):
    images = [make_image(tmp_path / f"{i}.png", size=(96, 72), seed=i) for i in range(3)]
    minmax = _activation_scales(_int8_graph(tiny_model, images))
    mean = _activation_scales(_int8_graph(tiny_model, images, method="mean"))
    assert minmax and set(mean) == set(minmax)
    # The mean of the images' extremes lies inside their extremes: never wider, some narrower.
    assert all(mean[name] <= minmax[name] * (1 + 1e-6) for name in minmax)
    assert sum(mean[name] < minmax[name] * 0.999 for name in minmax) > len(minmax) // 4


def test_an_unknown_calibration_is_one_line(tmp_path, tiny_model, make_image):
    from fpncli.errors import FpnError

    image = make_image(tmp_path / "a.png", size=(96, 72))
    with pytest.raises(FpnError, match=r"^--calibration: unknown 'median'; choose one of minmax, mean$"):
        _int8_graph(tiny_model, [image], method="median")


def test_convolutions_are_int8_but_scores_and_offsets_stay_float(tmp_path, tiny_model, make_image):
    images = [make_image(tmp_path / f"{i}.png", size=(96, 72), seed=i) for i in range(2)]
    graph = _int8_graph(tiny_model, images)
    # A quantized Conv/Gemm reads its weight through a DequantizeLinear; a float one does not.
    dequantized = {n.output[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    rounded = {n.name: n.input[1] in dequantized for n in graph.graph.node if n.op_type in ("Conv", "Gemm")}
    float_names = [n for n, q in rounded.items() if not q]
    assert float_names and all(
        ("box_predictor" in n or "cls_logits" in n or "bbox_pred" in n) for n in float_names
    )
    # Every objectness and anchor-delta conv of the RPN (one per level) and both box predictor layers.
    levels = len(tiny_model.config.anchor_sizes)
    assert sum("cls_logits" in n for n in float_names) == levels
    assert sum("box_predictor" in n for n in float_names) == 2
    assert sum(rounded.values()) > len(float_names)  # the backbone, neck and RPN conv are int8
    assert any(q and "box_head" in n for n, q in rounded.items())  # fc6/fc7: int8


def test_no_readable_calibration_image_is_one_line(tmp_path, tiny_model):
    from fpncli.errors import FpnError

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(FpnError, match=r"^test images: no readable image to calibrate int8 with$"):
        _int8_graph(tiny_model, [broken])


def test_no_calibration_image_at_all_is_one_line(tiny_model):
    from fpncli.errors import FpnError

    with pytest.raises(FpnError, match="no readable image to calibrate int8 with"):
        _int8_graph(tiny_model, [])


def test_calibration_sample_takes_readable_images_in_the_place_of_broken_ones(tmp_path, make_image):
    from fpncli.deploy.quantize import calibration_sample

    paths = []
    for i in range(16):  # every other file is text named .jpg
        path = tmp_path / f"img{i:02d}.jpg"
        if i % 2:
            make_image(path, size=(32, 24), seed=i)
        else:
            path.write_text("not an image")
        paths.append(path)
    picked = calibration_sample(paths, 8)
    assert picked == [p for i, p in enumerate(paths) if i % 2]  # all 8 good ones, in order
    assert calibration_sample(paths, 3) == [
        paths[1],
        paths[5],
        paths[11],
    ]  # 0, 5, 10: each broken one -> the next
    assert calibration_sample([], 8) == []
    assert calibration_sample(paths[::2], 8) == []  # nothing readable


def test_calibration_leaves_out_images_the_model_cannot_resize(tmp_path, tiny_model, make_image):
    from fpncli.deploy.quantize import calibration_sample
    from fpncli.errors import FpnError

    good = make_image(tmp_path / "good.png", size=(96, 72), seed=1)
    thread = make_image(tmp_path / "thread.png", size=(3000, 1), seed=2)  # would resize to 0 px
    cfg = tiny_model.config
    assert calibration_sample([good, thread], min_size=cfg.min_size, max_size=cfg.max_size) == [good]
    # Given straight to the quantizer, it is skipped there too (the graph's resize fails on it).
    from fpncli.deploy.metadata import export_metadata
    from fpncli.deploy.quantize import quantize_graph
    from fpncli.modeling.export import onnx_bytes

    graph = onnx_bytes(tiny_model, export_metadata(tiny_model, "onnx", "tiny"), winograd=False)
    sizes = (cfg.min_size, cfg.max_size)
    assert quantize_graph(graph, [thread, good], where="mixed", sizes=sizes)
    with pytest.raises(FpnError, match=r"^only thread: no readable image to calibrate int8 with$"):
        quantize_graph(graph, [thread], where="only thread", sizes=sizes)


def test_calibration_skips_pipes_and_files_that_only_fail_when_decoded(tmp_path, make_image):
    import os

    from fpncli.deploy.quantize import calibration_sample

    pipe = tmp_path / "a.jpg"
    os.mkfifo(pipe)  # opening it would block until a writer came
    full = make_image(tmp_path / "b.jpg", size=(64, 48), seed=1).read_bytes()
    truncated = tmp_path / "c.jpg"
    truncated.write_bytes(full[: len(full) // 3])  # its header opens; its data does not decode
    good = make_image(tmp_path / "d.jpg", size=(64, 48), seed=2)
    (tmp_path / "e.jpg").mkdir()
    assert calibration_sample([pipe, truncated, tmp_path / "e.jpg", good], 2) == [good]
