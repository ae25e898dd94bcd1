"""Necks beyond FPN (PANet, BiFPN, NAS-FPN) and the single-scale baselines (c4, c5): contract, shapes,
training, checkpoint round trip and the inference pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from fpncli.config import NECKS, ModelConfig
from fpncli.errors import FpnError

ALL_NECKS = ["fpn", "panet", "bifpn", "nasfpn", "augfpn", "rfp", "c4", "c5"]


# Two of NAS-FPN's seven stages: the same cells, a third of the test time.
FAST = {"nasfpn": {"nasfpn_stacks": 2}}


def test_every_neck_is_registered():
    assert set(ALL_NECKS) == set(NECKS)


def test_registry_feeds_config_cli_info_and_ablation(tiny_config, cli, build_model):

    from fpncli.analysis.ablation import DEFAULT_NECKS, SINGLE_SCALE
    from fpncli.analysis.describe import describe_model
    from fpncli.modeling.necks.registry import NECK_REGISTRY, get_neck

    assert list(NECKS) == list(NECK_REGISTRY) and set(DEFAULT_NECKS) <= set(NECK_REGISTRY)
    assert SINGLE_SCALE == ("c4", "c5")
    help_text = " ".join(cli(["train", "--help"], terminal_width=400).output.split())
    assert all(name in help_text for name in NECK_REGISTRY)
    with pytest.raises(FpnError, match="unknown neck 'fpx'; choose one of c4, c5, fpn"):
        get_neck("fpx")
    with pytest.raises(FpnError, match="unknown neck"):
        tiny_config.replace(neck="fpx").validate()
    info = describe_model(build_model(neck="bifpn", bifpn_repeats=3), "random")
    assert info["neck_options"] == {"bifpn_repeats": 3} and info["input_levels"] == ["c2", "c3", "c4", "c5"]


@pytest.mark.parametrize("neck", ALL_NECKS)
def test_neck_declares_the_bottom_up_levels_it_reads(build_model, neck):
    """The detector stops the ResNet after the neck's last declared input (c4 never runs conv5)."""
    model = build_model(neck=neck, **FAST.get(neck, {}))
    neck_module = model.backbone.neck
    assert model.input_levels == neck_module.in_names and set(neck_module.in_names) <= set(
        model.bottom_up_levels
    )
    ran = []
    hook = model.backbone.bottom_up.register_forward_hook(lambda m, args, out: ran.extend(out))
    with torch.no_grad():
        model.backbone(torch.rand(1, 3, 64, 64))
    hook.remove()
    assert ran[-1] == neck_module.in_names[-1]
    del neck_module.in_names
    with pytest.raises(ValueError, match="declares no input levels"):
        neck_module.check_contract()


@pytest.mark.parametrize("neck", ALL_NECKS)
def test_declared_strides_match_real_shapes(tiny_config, neck, build_model):
    model = build_model(neck=neck, **FAST.get(neck, {}))
    model.backbone.neck.check_contract()
    with torch.no_grad():
        for height, width in ((64, 64), (333, 517), (97, 45)):
            out = model.backbone(torch.rand(1, 3, height, width))
            assert list(out) == list(model.levels)
            for name, fmap in out.items():
                spec = model.levels[name]
                # ResNet rounds up at each stride-2 step: size ceil(n / stride).
                assert fmap.shape[1] == spec.channels == tiny_config.fpn_channels
                assert tuple(fmap.shape[-2:]) == (-(-height // spec.stride), -(-width // spec.stride)), name


def test_levels_and_anchors_per_neck(tiny_config, build_model):
    from fpncli.analysis.describe import describe_model

    for neck in ("fpn", "panet", "bifpn", "nasfpn", "augfpn"):
        model = build_model(neck=neck, **FAST.get(neck, {}))
        assert model.rpn_levels == ["p2", "p3", "p4", "p5", "p6"]
        assert model.roi_levels == ["p2", "p3", "p4", "p5"]
        assert [s.stride for s in model.levels.values()] == [4, 8, 16, 32, 64]
        assert model.anchor_sizes() == [(s,) for s in tiny_config.anchor_sizes]
    for neck, stride in (("c4", 16), ("c5", 32)):
        model = build_model(neck=neck, **FAST.get(neck, {}))
        assert model.rpn_levels == model.roi_levels == [neck]
        assert model.levels[neck].stride == stride
        # All anchor scales on the one map, as in the paper's single-scale baselines.
        assert model.anchor_sizes() == [tuple(tiny_config.anchor_sizes)]
        summary = describe_model(model, "random")
        assert [lv["name"] for lv in summary["levels"]] == [neck]
        assert summary["levels"][0]["anchors_per_cell"] == 15


def test_c4_does_not_run_conv5(build_model):
    model = build_model(neck="c4")
    called = []
    model.backbone.bottom_up.layer4.register_forward_hook(lambda *a: called.append(1))
    with torch.no_grad():
        model.backbone(torch.rand(1, 3, 64, 64))
    assert called == []


def test_panet_finest_level_is_fpn_p2(build_model):
    model = build_model(neck="panet")
    neck = model.backbone.neck
    with torch.no_grad():
        features = model.backbone.bottom_up(torch.rand(1, 3, 96, 128))
        fpn_out, pan_out = neck.fpn(features), neck(features)
    torch.testing.assert_close(pan_out["p2"], fpn_out["p2"])  # N2 = P2
    assert not torch.allclose(pan_out["p5"], fpn_out["p5"])  # the bottom-up path changed N5


def test_bifpn_fusion_weights_are_nonnegative_and_normalised():
    from fpncli.modeling.necks.bifpn import WeightedFusion

    fusion = WeightedFusion(3)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([-2.0, 1.0, 3.0]))
    w = fusion.normalized_weights()
    assert w[0] == 0 and torch.all(w >= 0)
    assert abs(float(w.detach().sum()) - 1.0) < 1e-3
    a, b, c = torch.full((1, 1, 2, 2), 5.0), torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)
    # The negative weight is cut to zero: a is ignored; (1*1 + 3*2) / (4 + eps).
    torch.testing.assert_close(fusion([a, b, c]), torch.full((1, 1, 2, 2), 7.0 / (4.0 + 1e-4)))


def test_bifpn_repeats_are_configurable(build_model):
    one = build_model(neck="bifpn", bifpn_repeats=1)
    three = build_model(neck="bifpn", bifpn_repeats=3)
    assert len(one.backbone.neck.layers) == 1 and len(three.backbone.neck.layers) == 3
    with pytest.raises(FpnError, match="bifpn_repeats"):
        build_model(neck="bifpn", bifpn_repeats=0)


def test_unknown_neck_is_a_user_error(build_model):
    with pytest.raises(FpnError, match="unknown neck 'fpn2'"):
        build_model(neck="fpn2")


@pytest.mark.parametrize("neck", [*ALL_NECKS, "panet+afp"])
def test_neck_trains_reloads_and_predicts(make_targets, build_model, neck, tmp_path):
    """Two training steps (finite losses, weights move), then a checkpoint that reloads with
    identical outputs, then the batched inference pipeline with a broken file among images,
    then what inspect-levels and eval run. ``panet+afp``: the full PANet (adaptive feature
    pooling), through the same commands."""
    from PIL import Image

    from fpncli.analysis.inspect_image import inspect_image
    from fpncli.checkpoint import save_checkpoint
    from fpncli.evaluation.evaluate import evaluate_model
    from fpncli.inference.predict import predict_images
    from fpncli.modeling.necks.registry import get_neck
    from fpncli.modeling.weights import load_detector

    # Inputs resized to 64..96 px: the smallest size at which every level still has cells.
    neck, _, pooling = neck.partition("+")
    # No pooling given: the neck's own (augfpn: soft RoI selection, with its auxiliary head).
    model = build_model(
        neck=neck, **FAST.get(neck, {}), min_size=64, max_size=96, roi_pooling=pooling or None
    ).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 60, 80)]
    neck_before = [p.detach().clone() for p in model.backbone.neck.parameters()]
    for _ in range(2):
        losses = model(images, make_targets())
        loss = sum(losses.values())
        assert torch.isfinite(loss), losses
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(neck_before, model.backbone.neck.parameters()))

    model.eval()
    path = save_checkpoint(tmp_path / f"{neck}.pt", model)
    loaded = load_detector(str(path)).model
    assert loaded.config.neck == neck and type(loaded.backbone.neck) is type(model.backbone.neck)
    assert loaded.config.roi_pooling == (pooling or get_neck(neck).roi_pooling)
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 96)
        for name, fmap in model.backbone(x).items():
            torch.testing.assert_close(loaded.backbone(x)[name], fmap, rtol=0, atol=0)
        expected, got = model(images), loaded(images)
    for e, g in zip(expected, got):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(g[key], e[key], rtol=0, atol=0)

    good = []
    for i, size in enumerate(((70, 50), (45, 65))):
        good.append(tmp_path / f"img{i}.png")
        Image.fromarray((torch.rand(size[1], size[0], 3) * 255).byte().numpy()).save(good[-1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    results = list(predict_images(loaded, [good[0], broken, good[1]], batch_size=2))
    assert [r.path for r in results] == [good[0], broken, good[1]]
    assert results[1].error and results[1].boxes.shape == (0, 4)
    for r, (w, h) in zip((results[0], results[2]), ((70, 50), (45, 65))):
        assert r.error is None and (r.width, r.height) == (w, h)
        assert r.boxes.shape[1] == 4 and len(r.boxes) == len(r.scores) == len(r.labels)
        if len(r.boxes):
            assert float(r.boxes[:, 2].max()) <= w + 1e-3 and float(r.boxes[:, 3].max()) <= h + 1e-3

    # What `fpn inspect-levels` and `fpn eval` run, on the reloaded model.
    report = inspect_image(loaded, good[0], score_thr=0.0)
    assert [row.name for row in report.levels] == list(model.levels)
    assert (report.afp is not None) == (pooling == "afp")
    annotations = tmp_path / "val.json"
    annotations.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 5, "file_name": "img0.png", "width": 70, "height": 50},
                    {"id": 9, "file_name": "img1.png", "width": 45, "height": 65},
                ],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 5,
                        "category_id": 3,
                        "bbox": [4, 4, 30, 20],
                        "area": 600,
                        "iscrowd": 0,
                    }
                ],
                "categories": [
                    {"id": i, "name": n} for i, n in zip([1, 3, 7], ["circle", "square", "triangle"])
                ],
            }
        )
    )
    metrics = evaluate_model(loaded, annotations, tmp_path)
    assert metrics["num_images"] == 2 and (metrics["AP"] == -1 or 0 <= metrics["AP"] <= 1)


def test_checkpoint_config_keeps_neck(tiny_config):
    cfg = tiny_config.replace(neck="bifpn", bifpn_repeats=3)
    back = ModelConfig.from_dict(cfg.to_dict())
    assert (back.neck, back.bifpn_repeats) == ("bifpn", 3)
