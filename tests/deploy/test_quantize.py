"""int8 quantization (fpncli/deploy/quantize.py): which layers are rounded to int8 and which
stay float32, and a calibration set without readable images is one line."""

from __future__ import annotations

import pytest


def _int8_graph(tiny_model, images):
    import onnx

    from fpncli.deploy.metadata import export_metadata
    from fpncli.deploy.quantize import quantize_graph
    from fpncli.modeling.export import onnx_bytes

    graph = onnx_bytes(tiny_model, export_metadata(tiny_model, "onnx", "tiny"), winograd=False)
    return onnx.load_from_string(quantize_graph(graph, images, where="test images"))


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
