"""DetectoRS: Switchable Atrous Convolution (init equivalence, the switch, deformable
variant, weight standardisation on load) and the Recursive Feature Pyramid (zero-init:
an untrained RFP computes the FPN's pyramid; feedback wiring, gate, shared weights from
files), and what every command needs from them: shapes, training, checkpoints, weights
transfer, info, inspect-levels, the ablation rows, bad options."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fpncli.config import ModelConfig
from fpncli.errors import FpnError


def _perturb(module: torch.nn.Module, names: tuple[str, ...], seed: int = 5) -> None:
    """Give the zero-initialised parameters whose name contains one of ``names`` random
    values, so a test sees them act (and a round trip sees them saved)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(n in name for n in names):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


# ----------------------------------------------------------------------------- SAC layer


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("deform", [False, True])
def test_sac_layer_starts_as_the_conv_it_replaces(stride, deform):
    from fpncli.modeling.sac import SAConv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, stride=stride, padding=1, bias=False)
    sac = SAConv2d(6, 5, stride=stride, deform=deform, weight=conv.weight)
    for size in [(11, 7), (2, 2), (1, 3)]:  # 2x2 and 1x3: too small to reflect-pad, replicated
        x = torch.randn(2, 6, *size)
        torch.testing.assert_close(sac(x), conv(x), rtol=1e-5, atol=1e-5)
    # The standardised weight reproduces the conv's (gamma, beta = its std, mean).
    torch.testing.assert_close(sac.standardised_weight(), conv.weight, rtol=1e-5, atol=1e-6)
    assert not torch.equal(sac.weight_gamma, torch.ones_like(sac.weight_gamma))


def test_sac_switch_selects_the_dilation_3_branch_with_the_weight_difference():
    """S = 0 gives the large branch alone: the standardised weight + weight_diff at dilation 3;
    the pre- and post-context convs add a 1x1 conv of the global mean."""
    from fpncli.modeling.sac import SAConv2d

    torch.manual_seed(0)
    sac = SAConv2d(4, 3)
    with torch.no_grad():
        sac.switch.bias.zero_()
        sac.weight_diff.normal_()
    x = torch.randn(1, 4, 9, 10)
    large = F.conv2d(x, sac.standardised_weight() + sac.weight_diff, padding=3, dilation=3)
    torch.testing.assert_close(sac(x), large, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        sac.switch.bias.fill_(0.25)
        sac.pre_context.bias.normal_()
        sac.post_context.bias.normal_()
    y = x + sac.pre_context.bias.view(1, -1, 1, 1)
    w = sac.standardised_weight()
    mixed = 0.25 * F.conv2d(y, w, padding=1) + 0.75 * F.conv2d(y, w + sac.weight_diff, padding=3, dilation=3)
    expected = mixed + sac.post_context(mixed.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(sac(x), expected, rtol=1e-5, atol=1e-5)


def test_sac_deformable_offsets_move_the_sampling_and_learn():
    from fpncli.modeling.sac import SAConv2d

    torch.manual_seed(0)
    plain = SAConv2d(4, 3, deform=False)
    deform = SAConv2d(4, 3, deform=True, weight=plain.weight)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    torch.testing.assert_close(deform(x), plain(x), rtol=1e-5, atol=1e-5)
    deform(x).pow(2).sum().backward()
    assert deform.offset_s.weight.grad is not None and deform.offset_s.weight.grad.abs().sum() > 0
    with torch.no_grad():
        deform.offset_s.bias.fill_(0.5)  # every sample half a pixel away
    assert not torch.allclose(deform(x), plain(x), atol=1e-3)


def test_sac_loads_a_plain_conv_state_and_keeps_its_own():
    from fpncli.modeling.sac import SAConv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 3, 3, padding=1, bias=False)
    sac = SAConv2d(4, 3, deform=True)
    result = sac.load_state_dict(conv.state_dict())  # strict: the extras complete the plain state
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 4, 6, 7)
    torch.testing.assert_close(sac(x), conv(x), rtol=1e-5, atol=1e-5)
    # A SAC state keeps its own standardisation (not recomputed from its weight).
    with torch.no_grad():
        sac.weight_gamma.mul_(2.0)
    again = SAConv2d(4, 3, deform=True)
    again.load_state_dict(sac.state_dict())
    assert torch.equal(again.weight_gamma, sac.weight_gamma)
    torch.testing.assert_close(again(x), sac(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- SAC in the model


def test_sac_model_from_the_same_backbone_weights_gives_the_same_features(
    tiny_config, tmp_path, one_thread, build_model
):
    """The issue's test: a --sac model built from (seeded random, standing in for ImageNet)
    ResNet weights computes what the model without SAC computes from them."""
    from fpncli.modeling.sac import SAConv2d
    from fpncli.modeling.weights import load_detector

    torch.manual_seed(3)
    resnet = build_model().backbone.bottom_up.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet, path)
    cfg = tiny_config.replace(norm="frozen_bn")  # as with ImageNet weights
    plain = load_detector("none", config=cfg, backbone_weights=str(path)).model
    x = torch.rand(1, 3, 75, 98)
    with torch.no_grad():
        expected = plain.backbone.bottom_up(x)
        for sac_options in ({}, {"sac_deform": True}, {"sac_stages": (2, 3, 4, 5)}):
            loaded = load_detector(
                "none", config=cfg.replace(sac=True, **sac_options), backbone_weights=str(path)
            )
            assert "backbone from" in loaded.source
            sacs = [m for m in loaded.model.backbone.bottom_up.modules() if isinstance(m, SAConv2d)]
            stages = sac_options.get("sac_stages", (3, 4, 5))
            assert len(sacs) == 2 * 2 * len(stages)  # resnet18: 2 BasicBlocks x 2 convs per stage
            got = loaded.model.backbone.bottom_up(x)
            for name, fmap in expected.items():
                torch.testing.assert_close(got[name], fmap, rtol=1e-4, atol=1e-4)
            assert not torch.equal(got["c5"], expected["c5"])  # SAC ran (rounding differs), not the conv


def test_sac_replaces_the_bottleneck_3x3_only(tiny_config):
    from torchvision.models.resnet import Bottleneck

    from fpncli.modeling.backbone import ResNetBottomUp
    from fpncli.modeling.sac import SAConv2d

    net = ResNetBottomUp("resnet50", sac_stages=(5,), trainable_layers=1)
    blocks = list(net.layer4)
    assert all(isinstance(b, Bottleneck) and isinstance(b.conv2, SAConv2d) for b in blocks)
    assert not any(isinstance(m, SAConv2d) for m in net.layer3.modules())
    assert all(isinstance(b.conv1, torch.nn.Conv2d) and b.conv1.kernel_size == (1, 1) for b in blocks)
    assert blocks[0].conv2.stride == 2  # torchvision's ResNet v1.5 strides the 3x3
    # A frozen stage keeps its SAC parameters frozen.
    frozen = ResNetBottomUp("resnet18", sac_stages=(3, 5), trainable_layers=1)
    assert all(not p.requires_grad for p in frozen.layer2.parameters())
    assert all(p.requires_grad for p in frozen.layer4.parameters())


# ----------------------------------------------------------------------------- RFP


def test_untrained_rfp_computes_the_fpn_pyramid_exactly(build_model, one_thread):
    """Zero-initialised feedback and gate, and a recursive ResNet that starts as the first:
    the second pass repeats the first, the gate averages two equal pyramids, so the seeded
    RFP model's pyramid and detections are the seeded FPN model's, bit for bit."""
    fpn = build_model()
    rfp = build_model(neck="rfp")
    neck = rfp.backbone.neck
    for key, value in fpn.state_dict().items():  # the same FPN, RPN and heads
        assert torch.equal(rfp.state_dict()[key], value), key
    recursive = neck.rfp_backbones[0].state_dict()
    for key, value in rfp.backbone.bottom_up.state_dict().items():
        assert torch.equal(recursive[key], value), key
    assert all(float(p.detach().abs().sum()) == 0 for p in neck.rfp_backbones[0].rfp_convs.parameters())
    torch.manual_seed(1)
    x = torch.rand(1, 3, 97, 45)
    images = [torch.rand(3, 90, 120)]
    with torch.no_grad():
        expected, got = fpn.backbone(x), rfp.backbone(x)
        steps = rfp.rfp_steps(x)
        for name in expected:
            assert torch.equal(got[name], expected[name])
            assert torch.equal(steps.passes[0][name], expected[name])  # the first pass is the FPN
            assert torch.equal(steps.passes[1][name], expected[name])  # so is the untrained second
            assert torch.equal(steps.gates[0][name], torch.full_like(steps.gates[0][name], 0.5))
        for e, g in zip(fpn(images), rfp(images)):
            for key in ("boxes", "scores", "labels"):
                assert torch.equal(g[key], e[key])


def test_rfp_feeds_back_aspp_of_p3_p5_and_gates_the_second_pass(tiny_config, one_thread, build_model):
    from fpncli.modeling.necks.rfp import ASPP

    rfp = build_model(neck="rfp")
    neck = rfp.backbone.neck
    assert neck.feedback == {"c3": "p3", "c4": "p4", "c5": "p5"}
    assert isinstance(neck.aspp, ASPP) and neck.aspp.out_channels == tiny_config.fpn_channels
    assert list(neck.rfp_backbones[0].rfp_convs) == ["c3", "c4", "c5"]
    x = torch.rand(1, 3, 64, 96)
    _perturb(neck.rfp_backbones[0].rfp_convs, ("weight", "bias"))
    with torch.no_grad():
        steps = rfp.rfp_steps(x)
        first, second = steps.passes
        # The feedback changes the second pass, from its first fed stage (c3) on; P2 too,
        # through the top-down path.
        assert all(not torch.allclose(first[n], second[n]) for n in first)
        fused = steps.output
        for n in first:
            torch.testing.assert_close(fused[n], 0.5 * first[n] + 0.5 * second[n])
        with torch.no_grad():
            neck.gate.bias.fill_(30.0)  # sigmoid = 1: the fusion takes the second pass only
        taken = rfp.rfp_steps(x)
        for n in first:
            torch.testing.assert_close(taken.output[n], taken.passes[1][n])
            torch.testing.assert_close(rfp.backbone(x)[n], taken.output[n])


def test_rfp_steps_build_one_resnet_per_extra_step(build_model, one_thread):
    three = build_model(neck="rfp", rfp_steps=3)
    assert len(three.backbone.neck.rfp_backbones) == 2
    with torch.no_grad():
        steps = three.rfp_steps(torch.rand(1, 3, 64, 64))
    assert len(steps.passes) == 3 and len(steps.gates) == len(steps.fused) == 2


@pytest.mark.parametrize(
    "options", [{"neck": "rfp"}, {"sac": True}, {"neck": "rfp", "sac": True, "sac_deform": True}]
)
@pytest.mark.parametrize("size", [(64, 64), (97, 45), (33, 190)])
def test_odd_input_sizes_give_the_fpn_level_shapes(tiny_config, options, size, one_thread, build_model):
    model = build_model(**options)
    _perturb(model, ("rfp_convs", "weight_diff", "pre_context", "offset_"))
    with torch.no_grad():
        out = model.backbone(torch.rand(1, 3, *size))
    for name, fmap in out.items():
        stride = model.levels[name].stride
        assert tuple(fmap.shape[1:]) == (
            tiny_config.fpn_channels,
            -(-size[0] // stride),
            -(-size[1] // stride),
        )
        assert torch.isfinite(fmap).all()


@pytest.mark.parametrize(
    "options", [{"neck": "rfp"}, {"sac": True, "sac_deform": True}, {"neck": "rfp", "sac": True}]
)
def test_a_training_step_moves_the_detectors_parameters(make_targets, build_model, options, one_thread):
    model = build_model(min_size=64, max_size=96, **options).train()
    watched = {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if any(k in name for k in ("rfp_convs", "aspp", "switch", "offset_s", "pre_context"))
    }
    assert watched
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(1)
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 60, 80)], make_targets())
    loss = sum(losses.values())
    assert torch.isfinite(loss), losses
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    params = dict(model.named_parameters())
    moved = [n for n, before in watched.items() if not torch.equal(params[n], before)]
    # Every kind of new parameter learns from the first step (the gate's gradient is zero
    # while both passes are equal, so it starts moving at the second).
    for kind in ("rfp_convs", "aspp", "switch", "offset_s", "pre_context"):
        if any(kind in n for n in watched):
            assert any(kind in n for n in moved), kind


# ----------------------------------------------------------------------------- everywhere


def test_checkpoint_round_trip_identical_outputs(build_model, tmp_path, one_thread):
    from fpncli.checkpoint import save_checkpoint
    from fpncli.modeling.weights import load_detector

    model = build_model(neck="rfp", sac=True, sac_deform=True, sac_stages=(4, 5), rfp_steps=2)
    _perturb(model, ("rfp_convs", "gate", "weight_diff", "switch", "context", "offset_"))
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "weight_gamma"):
                m.weight_gamma.mul_(1.5)  # a trained standardisation must be loaded, not recomputed
    path = save_checkpoint(tmp_path / "drs.pt", model)
    loaded = load_detector(str(path)).model
    cfg = loaded.config
    assert (cfg.neck, cfg.sac, cfg.sac_deform, cfg.sac_stages, cfg.rfp_steps) == (
        "rfp",
        True,
        True,
        (4, 5),
        2,
    )
    torch.manual_seed(3)
    images = [torch.rand(3, 100, 130)]
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(got[0][key], expected[0][key])


def test_old_configs_without_the_fields_have_neither(tiny_config):
    data = tiny_config.to_dict()
    for key in ("rfp_steps", "sac", "sac_stages", "sac_deform"):
        data.pop(key)
    cfg = ModelConfig.from_dict(data)
    assert (cfg.sac, cfg.sac_deform, cfg.neck) == (False, False, "fpn")
    assert ModelConfig.from_dict(tiny_config.replace(sac=True, sac_stages=(3, 5)).to_dict()).sac_stages == (
        3,
        5,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"neck": "rfp", "rfp_steps": 0}, "rfp_steps must be at least 2"),
        ({"neck": "rfp", "rfp_steps": 1}, "rfp_steps must be at least 2"),
        (
            {"sac": True, "sac_stages": (1, 3)},
            r"sac_stages must be ResNet stages among 2, 3, 4, 5 \(c2..c5\), got \[1, 3\]",
        ),
        ({"sac": True, "sac_stages": (6,)}, "sac_stages must be ResNet stages"),
        ({"sac": True, "sac_stages": ()}, "sac_stages must be ResNet stages"),
        ({"sac": True, "sac_stages": (3, 3)}, "lists a stage twice"),
        ({"sac_deform": True}, "sac_deform is SAC's deformable variant: it needs sac"),
        ({"neck": "rfp", "fpn_channels": 2}, "needs at least 4"),
    ],
)
def test_bad_options_are_one_line_errors(build_model, overrides, message):
    with pytest.raises(FpnError, match=message):
        build_model(**overrides)


def test_cli_bad_options(tmp_path, cli):

    for args, message in (
        (["--neck", "rfp", "--rfp-steps", "0"], "rfp_steps must be at least 2"),
        (["--sac", "--sac-stages", "3,7"], "sac_stages must be ResNet stages"),
        (["--sac-stages", "3,4"], "--sac-stages chooses where SAC goes: add --sac"),
        (["--sac", "--sac-stages", "res3"], "expected comma-separated stages like 3,4,5"),
    ):
        result = cli(["info", "--preset", "tiny", *args])
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    bad = cli(["ablation", "--out", str(tmp_path / "a"), "--necks", "fpn+sad"])
    assert bad.exit_code == 1 and "unknown modifier 'sad'" in bad.output and "sac" in bad.output


def test_info_shows_sac_stages_rfp_steps_and_the_cost_by_part(cli):

    args = [
        "info",
        "--preset",
        "tiny",
        "--neck",
        "rfp",
        "--rfp-steps",
        "3",
        "--sac-deform",
        "--sac-stages",
        "4,5",
    ]
    result = cli([*args, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["sac"] == {"stages": ["c4", "c5"], "deform": True, "layers": 8}
    assert info["rfp"]["steps"] == 3 and info["rfp"]["recursive_backbones"] == 2
    assert info["neck_options"] == {"rfp_steps": 3}
    parts = info["parameters_by_part"]
    assert sum(parts.values()) == info["parameters"]
    assert parts["bottom-up, RFP passes"] > 2 * parts["bottom-up"] * 0.99  # two ResNets (+ feedback convs)
    table = " ".join(cli(args, terminal_width=200).output.split())
    assert "RFP: 3 steps" in table and "SAC: 8 3x3 convs of c4, c5" in table and "(deformable)" in table
    plain = " ".join(cli(["info", "--preset", "tiny"], terminal_width=200).output.split())
    assert "SAC: none" in plain and "RFP:" not in plain


def test_backbone_weights_fill_every_recursive_resnet(tiny_config, tmp_path, one_thread, build_model):
    from fpncli.checkpoint import save_checkpoint
    from fpncli.modeling.weights import load_detector
    from fpncli.training.config import TrainConfig
    from fpncli.training.model_setup import build_training_model as _build_model

    torch.manual_seed(7)
    resnet = build_model().backbone.bottom_up.state_dict()
    resnet = {k: v + 0.01 for k, v in resnet.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet.pth"
    torch.save(resnet, path)
    loaded = load_detector(
        "none", config=tiny_config.replace(neck="rfp", rfp_steps=3), backbone_weights=str(path)
    )
    assert "also into the 2 RFP pass(es)" in loaded.source
    for recursive in loaded.model.backbone.neck.rfp_backbones:
        assert torch.equal(recursive.conv1.weight, resnet["conv1.weight"])
        # The feedback convs are not in the file: they keep their zero initialisation.
        assert float(recursive.rfp_convs["c4"].weight.detach().abs().sum()) == 0

    # An FPN run (or COCO) into --neck rfp --sac: its ResNet starts every pass.
    fpn = build_model()
    ckpt = save_checkpoint(tmp_path / "fpn.pt", fpn)
    from types import SimpleNamespace

    categories = SimpleNamespace(names=tiny_config.class_names, category_ids=tiny_config.category_ids)
    model, source = _build_model(TrainConfig(weights=str(ckpt), neck="rfp", model={"sac": True}), categories)
    assert "its bottom-up ResNet copied into the 1 RFP pass(es)" in source and "\n" not in source
    recursive = model.backbone.neck.rfp_backbones[0]
    assert torch.equal(recursive.layer3[0].conv2.weight, fpn.backbone.bottom_up.layer3[0].conv2.weight)
    assert torch.equal(model.backbone.neck.laterals[0].weight, fpn.backbone.neck.laterals[0].weight)
    x = torch.rand(1, 3, 64, 80)
    model.eval()  # BatchNorm on its running statistics, as the FPN model
    with torch.no_grad():
        for name, fmap in fpn.backbone(x).items():  # SAC and RFP at init: still the FPN run's pyramid
            torch.testing.assert_close(model.backbone(x)[name], fmap, rtol=1e-4, atol=1e-4)


def test_inspect_levels_rfp_view(build_model, tmp_path, one_thread):
    from PIL import Image

    from fpncli.analysis.inspect_image import inspect_image
    from fpncli.viz.levels import save_rfp_steps

    image = tmp_path / "img.png"
    torch.manual_seed(0)
    Image.fromarray((torch.rand(100, 140, 3) * 255).byte().numpy()).save(image)
    model = build_model(neck="rfp")
    report = inspect_image(model, image, score_thr=0.5)
    rfp = report.rfp
    assert rfp is not None and rfp.levels == list(model.levels) and len(rfp.passes) == 2
    data = report.to_json()["rfp"]
    assert all(data["gate"][0][n] == {"mean": 0.5, "min": 0.5, "max": 0.5} for n in rfp.levels)
    assert all(v == 0 for v in data["change_from_first_pass"].values())  # untrained: the FPN's pyramid
    for n in rfp.levels:  # the maps cover the image's cells only
        assert rfp.passes[0][n].shape == report.strength[n].shape == rfp.gates[0][n].shape
    with torch.no_grad():
        model.backbone.neck.gate.bias.fill_(-1.0)
    _perturb(model.backbone.neck.rfp_backbones[0].rfp_convs, ("weight",))
    moved = inspect_image(model, image, score_thr=0.5).to_json()["rfp"]
    assert all(v > 0 for v in moved["change_from_first_pass"].values())
    assert all(abs(moved["gate"][0][n]["mean"] - 0.2689) < 0.02 for n in rfp.levels)  # sigmoid(-1) at start
    assert save_rfp_steps(report, tmp_path / "rfp.png").stat().st_size > 0
    plain = inspect_image(build_model(), image, score_thr=0.5)
    assert plain.rfp is None and "rfp" not in plain.to_json()
    assert save_rfp_steps(plain, tmp_path / "none.png") is None


def test_ablation_rows_for_detectors():
    from fpncli.analysis.ablation import SURVEY_ROWS, parse_row
    from fpncli.analysis.ablation.run import _train_key

    assert parse_row("rfp") == ("rfp", {})
    assert parse_row("sac") == ("fpn", {"sac": True})
    assert parse_row("rfp+sac") == ("rfp", {"sac": True})
    assert {"rfp", "sac", "rfp+sac"} <= set(SURVEY_ROWS)
    settings = {
        "seed": 0,
        "preset": "tiny",
        "data": "d",
        "iters": 2,
        "batch_size": 4,
        "train_images": 8,
        "val_images": 4,
        "rfp_steps": 3,
    }
    assert _train_key(settings, "rfp+sac") == {**settings, "neck": "rfp", "sac": True}
    assert "rfp_steps" not in _train_key(settings, "sac")  # an fpn row's key does not change with it


@pytest.mark.slow
def test_cli_trains_detectors_and_every_command_reloads_it(train_then_reload):
    """`fpn train --neck rfp --sac` (DetectoRS), then detect, eval, inspect-levels and info
    on its checkpoint, on the CPU."""
    done = train_then_reload("--neck", "rfp", "--sac", "--sac-stages", "5", "--fpn-channels", "16")
    saved = json.loads((done.run / "config.json").read_text())
    assert saved["model"]["sac"] is True and saved["model"]["neck"] == "rfp"
    assert (done.det_out / "predictions.json").is_file()
    assert (
        "Recursive Feature Pyramid: 2 steps" in done.inspect.output
        and (done.levels_out / "rfp_steps.png").is_file()
    )
    assert done.info["sac"]["stages"] == ["c5"]
