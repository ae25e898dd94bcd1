"""engine.predict (the batched pipeline) and modeling.optimize (BN folding, channels-last)."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.transforms.functional import to_tensor

from fpncli.errors import FpnError
from fpncli.inference.predict import predict_images
from fpncli.modeling.optimize import (
    ChannelsLastMaxPool2d,
    SubsampledPointwiseConv2d,
    WinogradConv2d,
    fold_batchnorm,
    optimize_for_inference,
    use_nchw_cpu_kernels,
    use_winograd,
    winograd_available,
)

# Tiny models: one thread is faster than two contending ones (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def images(tmp_path, make_image):
    """Two landscape images of one size (batchable together) and a portrait one between them."""
    return [
        make_image(tmp_path / "a.png", (120, 90), 1),
        make_image(tmp_path / "b.png", (90, 120), 2),
        make_image(tmp_path / "c.png", (120, 90), 3),
    ]


def _scored_model(tiny_config, norm=None):
    from fpncli.modeling.detector import build_model

    cfg = tiny_config.replace(box_score_thresh=0.0, norm=norm)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Non-trivial BatchNorm statistics, so folding them is really tested.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model


def _reference(model, paths):
    from fpncli.data.images import read_image

    with torch.no_grad():
        return [model([to_tensor(read_image(p))])[0] for p in paths]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_pipeline_equals_model_call(tiny_config, images, batch_size):
    model = _scored_model(tiny_config)
    results = list(predict_images(model, images, batch_size=batch_size))
    assert [r.path for r in results] == images  # input order, whatever the batching
    for r, ref in zip(results, _reference(model, images)):
        assert r.error is None and len(r.boxes) > 0
        assert torch.equal(r.labels, ref["labels"])
        if batch_size == 1:
            # Resizing in the dataset instead of in the model changes nothing, bit for bit.
            assert torch.equal(r.boxes, ref["boxes"]) and torch.equal(r.scores, ref["scores"])
        else:
            # Only same-size images share a batch, so no padding is added; what remains is
            # the float rounding of a batched convolution.
            assert torch.allclose(r.boxes, ref["boxes"], atol=1e-3)
            assert torch.allclose(r.scores, ref["scores"], atol=1e-5)
    assert (results[0].width, results[0].height) == (120, 90)
    assert (results[1].width, results[1].height) == (90, 120)


def test_pipeline_with_workers_and_kept_images(tiny_config, images):
    model = _scored_model(tiny_config)
    seen = []
    results = list(predict_images(model, images, workers=1, keep_images=True, on_result=seen.append))
    assert seen == results
    assert results[1].image.shape == (3, 120, 90) and results[1].image.dtype == torch.uint8


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_optimized_model_gives_the_same_detections(tiny_config, images, norm):
    model = _scored_model(tiny_config, norm=norm)
    before = copy.deepcopy(model.state_dict())
    results = list(predict_images(model, images, optimize=True))
    # The caller's model is untouched (training validation relies on that).
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for r, ref in zip(results, _reference(model, images)):
        assert len(r.boxes) == len(ref["boxes"])
        assert torch.allclose(r.boxes, ref["boxes"], atol=1e-2)
        assert torch.allclose(r.scores, ref["scores"], atol=1e-4)
        assert torch.equal(r.labels, ref["labels"])


def test_fold_batchnorm_counts_and_matches(tiny_config):
    model = _scored_model(tiny_config, norm="bn")
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = model.backbone(x)
        folded = fold_batchnorm(model)
        got = model.backbone(x)
    # resnet18: stem + 2 per BasicBlock x 8 blocks + 3 downsamples = 20
    assert folded == 20
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for name in ref:
        assert torch.allclose(got[name], ref[name], rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_leaves_groupnorm_and_training_bn(tiny_config):
    gn = _scored_model(tiny_config, norm="gn")
    assert fold_batchnorm(gn) == 0
    bn = _scored_model(tiny_config, norm="bn").train()
    assert fold_batchnorm(bn) == 0  # batch statistics are not an affine map


def test_channels_last_copy(tiny_config):
    model = _scored_model(tiny_config)
    opt = optimize_for_inference(model, fold_bn=False, winograd=False, channels_last=True)
    conv = opt.backbone.bottom_up.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert model.backbone.bottom_up.conv1.weight.is_contiguous()  # original untouched


def test_broken_and_huge_images_are_results_not_exceptions(tiny_config, images, tmp_path):
    model = _scored_model(tiny_config)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    paths = [images[0], broken, images[2]]
    results = list(predict_images(model, paths, batch_size=2))
    assert [r.path for r in results] == paths
    assert results[1].error and "not an image" in results[1].error and len(results[1].boxes) == 0
    assert results[0].error is None and results[2].error is None
    small = list(predict_images(model, [images[0]], max_pixels=100))
    assert "too large" in small[0].error


def test_empty_input_and_bad_options(tiny_config):
    model = _scored_model(tiny_config)
    assert list(predict_images(model, [])) == []
    with pytest.raises(FpnError, match="CUDA"):
        next(predict_images(model, [], half=True))
    with pytest.raises(FpnError, match="batch size"):
        next(predict_images(model, [], batch_size=0))


@pytest.mark.skipif(not winograd_available(), reason="this PyTorch build has no NNPACK")
def test_winograd_convolutions_match_direct_ones(tiny_config):
    model = _scored_model(tiny_config)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = model.backbone(x)
        swapped = use_winograd(model)
        got = model.backbone(x)
    # resnet18: 2 per BasicBlock x 8 minus 3 strided = 13, + 4 FPN outputs + the RPN head = 18
    assert swapped == 18 and isinstance(model.backbone.neck.outputs[0], WinogradConv2d)
    assert model.backbone.bottom_up.conv1.__class__ is torch.nn.Conv2d  # 7x7 stride 2: untouched
    for name in ref:
        assert torch.allclose(got[name], ref[name], rtol=1e-3, atol=1e-3)
        assert not torch.equal(got[name], ref[name])  # really a different algorithm
    # With gradients it is an ordinary convolution again (NNPACK has no backward here).
    conv = model.backbone.neck.outputs[0]
    y = conv(torch.rand(1, conv.in_channels, 8, 8, requires_grad=True))
    assert y.requires_grad


def test_nchw_cpu_kernels_keep_the_outputs(tiny_config):
    model = _scored_model(tiny_config)
    x = torch.rand(1, 3, 70, 90)  # odd sizes: the subsample must match the strided conv's grid
    with torch.no_grad():
        ref = model.backbone(x)
        swapped = use_nchw_cpu_kernels(model)
        got = model.backbone(x)
    body = model.backbone.bottom_up
    # resnet18: the stem's max pool and the 1x1 stride-2 shortcuts of layer2..layer4.
    assert swapped == 4 and isinstance(body.maxpool, ChannelsLastMaxPool2d)
    assert isinstance(body.layer2[0].downsample[0], SubsampledPointwiseConv2d)
    assert type(body.layer2[0].conv1) is torch.nn.Conv2d  # 3x3 stride 2: untouched
    for name in ref:
        assert got[name].shape == ref[name].shape
        assert torch.allclose(got[name], ref[name], rtol=1e-4, atol=1e-5)
    assert use_nchw_cpu_kernels(model) == 0  # nothing left to swap
    # With gradients the shortcut is the ordinary strided convolution.
    conv = body.layer2[0].downsample[0]
    y = conv(torch.rand(1, conv.in_channels, 9, 9, requires_grad=True))
    assert y.requires_grad and y.shape[-1] == 5


def test_replica_processes_give_the_same_detections(tiny_config, images, tmp_path):
    model = _scored_model(tiny_config)
    broken = tmp_path / "empty.png"
    broken.write_bytes(b"")
    paths = [images[0], broken, *images[1:]]
    one = list(predict_images(model, paths))
    two = list(predict_images(model, paths, cpu_processes=2, keep_images=True))
    assert [r.path for r in two] == paths
    assert two[1].error and "empty" in two[1].error
    for a, b in zip(one, two):
        assert torch.equal(a.labels, b.labels)
        assert torch.allclose(a.boxes, b.boxes, atol=1e-3) and torch.allclose(a.scores, b.scores, atol=1e-5)
    assert two[0].image is not None and two[0].image.shape == (3, 90, 120)


def test_a_process_holding_a_cuda_context_is_not_forked_into_replicas(tiny_config, images, monkeypatch):
    # Forking a process with a CUDA context hung on a GPU machine: it detects in-process.
    import fpncli.inference.predict as predict

    model = _scored_model(tiny_config)
    one = list(predict_images(model, images))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)

    def no_fork(*args, **kwargs):
        raise AssertionError("forked replicas in a process holding a CUDA context")

    monkeypatch.setattr(predict, "_predict_in_processes", no_fork)
    two = list(predict_images(model, images, cpu_processes=2))
    assert [r.path for r in two] == [r.path for r in one]
    for a, b in zip(one, two):
        assert torch.equal(a.labels, b.labels) and torch.allclose(a.boxes, b.boxes, atol=1e-3)
