"""Winograd F(4x4, 3x3) written as ONNX operators (fpn export's default for ONNX): equal to
the direct convolution at every map size, swapped in only where it pays, and the choice
stored and reversible from fpn export."""

from __future__ import annotations

import io
import json
import re
import warnings

import pytest
import torch
from torch import nn

from fpncli.errors import FpnError
from fpncli.modeling.optimize import winograd_available
from fpncli.modeling.winograd_graph import (
    POINTS,
    WinogradGraphConv,
    eligible,
    toom_cook_matrices,
    use_winograd_graph,
)

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _onnx_session(module: nn.Module, channels: int):
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(1, channels, 11, 14),),
            buffer,
            input_names=["x"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
    ops = {n.op_type for n in onnx.load_from_string(buffer.getvalue()).graph.node}
    return ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"]), ops


@pytest.mark.parametrize("points", [POINTS, (0.0, 1.0, -1.0, 2.0, -2.0)], ids=["chosen", "lavin"])
def test_toom_cook_matrices_compute_the_correlation_exactly(points):
    """In float64, A^T ((G g) * (B^T d)) is the 4-output correlation of d with g; Lavin &
    Gray's points give their published B^T."""
    at, g, bt = toom_cook_matrices(points)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        d = torch.randn(6, dtype=torch.float64, generator=gen)
        k = torch.randn(3, dtype=torch.float64, generator=gen)
        want = torch.stack([(d[i : i + 3] * k).sum() for i in range(4)])
        torch.testing.assert_close(at @ ((g @ k) * (bt @ d)), want, atol=1e-12, rtol=0)
    if points[3] == 2.0:
        assert bt[0].tolist() == [4, 0, -5, 0, 1, 0] and bt[5].tolist() == [0, 4, 0, -5, 0, 1]


def test_toom_cook_needs_five_distinct_points():
    for bad in ((0.0, 1.0, -1.0, 2.0), (0.0, 1.0, 1.0, 2.0, -2.0)):
        with pytest.raises(ValueError, match="5 distinct finite points"):
            toom_cook_matrices(bad)


def test_winograd_graph_equals_the_direct_convolution_at_every_size():
    """Traced at one size, the graph crops and tiles from the input's shape: maps from 1x1 to
    odd and non-multiple-of-4 sizes match F.conv2d to float rounding."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 5, 3, padding=1).eval()
    wino = WinogradGraphConv(conv).eval()
    session, ops = _onnx_session(wino, 8)
    assert "DepthToSpace" in ops and "MatMul" in ops
    # Batch 1 (an image) and several (a box head's convs run on every RoI's pooled map).
    for n, h, w in (
        (1, 1, 1),
        (1, 1, 7),
        (1, 4, 4),
        (1, 5, 9),
        (1, 13, 3),
        (1, 33, 20),
        (3, 7, 7),
        (2, 6, 10),
    ):
        x = torch.randn(n, 8, h, w)
        with torch.no_grad():
            ref = conv(x)
            eager = wino(x)
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        assert got.shape == ref.shape == eager.shape
        scale = float(ref.abs().max())
        assert float((got - ref).abs().max()) <= 1e-5 * max(scale, 1.0), (n, h, w)
        assert float((eager - ref).abs().max()) <= 1e-5 * max(scale, 1.0), (n, h, w)


def test_only_wide_3x3_stride1_convolutions_are_swapped():
    """256-channel 3x3 stride-1 convs are rewritten; strided, 1x1, dilated, grouped, narrow
    (transforms cost what they save) and 512-channel ones (4x the weights for little) are not."""
    model = nn.Sequential(
        nn.Conv2d(256, 256, 3, padding=1),  # swapped
        nn.Conv2d(256, 256, 3, stride=2, padding=1),
        nn.Conv2d(256, 256, 1),
        nn.Conv2d(256, 256, 3, padding=2, dilation=2),
        nn.Conv2d(256, 256, 3, padding=1, groups=2),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.Conv2d(512, 512, 3, padding=1),
        nn.Sequential(nn.Conv2d(256, 256, 3, padding=1)),  # nested: swapped
    )
    weight = model[0].weight
    assert use_winograd_graph(model) == 2
    assert isinstance(model[0], WinogradGraphConv) and model[0].weight is weight  # shared
    assert isinstance(model[7][0], WinogradGraphConv)
    assert all(type(m) is nn.Conv2d for m in list(model)[1:7])
    assert use_winograd_graph(nn.Sequential(nn.ReLU())) == 0  # nothing to swap
    with pytest.raises(ValueError, match="3x3, stride-1, padding-1"):
        WinogradGraphConv(nn.Conv2d(4, 4, 3, stride=2, padding=1))
    assert not eligible(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))


@pytest.fixture
def wide_enough(monkeypatch):
    """Let the tiny test models' 16-channel convs count as wide."""
    import fpncli.modeling.winograd_graph as W

    monkeypatch.setattr(W, "MIN_CHANNELS", 1)
    monkeypatch.setattr(W, "MAX_CHANNELS", 10_000)


def _graph_ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture
def small_checkpoint(tmp_path, export_config):
    from fpncli.checkpoint import save_checkpoint
    from fpncli.modeling.detector import build_model

    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "small.pt", build_model(export_config()).eval())


@pytest.mark.slow
def test_export_writes_winograd_by_default_and_no_winograd_writes_direct_convs(
    small_checkpoint, tmp_path, wide_enough, one_thread
):
    """The default ONNX export passes its self-check with every 3x3 conv as Winograd, and
    says how many in its metadata; without it the graph has direct convolutions."""
    from fpncli.deploy.export import ExportOptions, run_export
    from fpncli.modeling.export import onnx_bytes
    from fpncli.modeling.exported import read_metadata
    from fpncli.modeling.weights import load_detector

    fast = run_export(ExportOptions(str(small_checkpoint), "onnx", tmp_path / "fast.onnx"))
    assert sum(c.detections for c in fast.images) > 0
    meta, _ = read_metadata(fast.out)
    assert meta["winograd_convs"] > 0
    assert "DepthToSpace" in _graph_ops(fast.out)
    direct = tmp_path / "direct.onnx"
    model = load_detector(str(small_checkpoint)).model.eval()
    direct.write_bytes(onnx_bytes(model, {"version": 1}, winograd=False))
    assert "DepthToSpace" not in _graph_ops(direct)
    props = {p.key: p.value for p in onnx.load(str(direct)).metadata_props}
    assert json.loads(props["fpncli_export"])["winograd_convs"] == 0


@pytest.mark.slow
def test_a_graph_failing_with_and_without_winograd_is_refused_naming_both(
    small_checkpoint, tmp_path, wide_enough, monkeypatch
):
    """A Winograd graph that fails alone falls back to direct convolutions (tests/deploy);
    one that fails both ways is refused with the direct graph's line and the Winograd one's."""
    import fpncli.deploy.export as E
    import fpncli.deploy.fresh_run as R

    real = R.run_fresh

    def shifted(path, images):  # every box a pixel off, whatever the graph
        return [(r[0] + 1.0, r[1], r[2]) for r in real(path, images)]

    monkeypatch.setattr(R, "run_fresh", shifted)
    out = tmp_path / "m.onnx"
    with pytest.raises(FpnError, match=re.escape("(the Winograd graph failed too: on ")) as info:
        E.run_export(E.ExportOptions(str(small_checkpoint), "onnx", out))
    assert str(info.value).startswith("self-check failed on") and "\n" not in str(info.value)
    assert not out.exists()

    def failing(path, images):  # a graph the runtime cannot run
        return ["DepthToSpace: bad block size" for _ in images]

    monkeypatch.setattr(R, "run_fresh", failing)
    with pytest.raises(FpnError, match=r"model raised \(DepthToSpace: bad block size\).*failed too") as info:
        E.run_export(E.ExportOptions(str(small_checkpoint), "onnx", out))
    assert "\n" not in str(info.value) and not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not winograd_available(), reason="this PyTorch build has no NNPACK")
def test_torchscript_winograd_is_fpn_detects_model_and_off_by_default(small_checkpoint, tmp_path, one_thread):
    """TorchScript --winograd traces the model as fpn detect runs it (BatchNorm folded, NNPACK
    Winograd), passes the self-check and says so in its metadata; by default the file keeps
    plain convolutions (it may run on a GPU)."""
    from fpncli.deploy.export import ExportOptions, run_export
    from fpncli.modeling.exported import read_metadata

    fast = run_export(ExportOptions(str(small_checkpoint), "torchscript", tmp_path / "f.pt", winograd=True))
    plain = run_export(ExportOptions(str(small_checkpoint), "torchscript", tmp_path / "p.pt"))
    assert sum(c.detections for c in fast.images) > 0
    meta, module = read_metadata(fast.out)
    assert meta["winograd_convs"] > 0 and "_nnpack_spatial_convolution" in str(module.inlined_graph)
    meta, module = read_metadata(plain.out)
    assert meta["winograd_convs"] == 0 and "_nnpack_spatial_convolution" not in str(module.inlined_graph)
