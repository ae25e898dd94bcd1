"""AugFPN (issue 15): residual feature augmentation, soft RoI selection, consistent
supervision, each part on and off, and what every command needs from them (checkpoints,
inference-only models, info, inspect-levels, ablation rows, training logs)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from fpncli.errors import FpnError
from fpncli.modeling.levels import LevelSpec

AUX_KEYS = {
    f"loss_aux_{kind}_{level}" for kind in ("classifier", "box_reg") for level in ("p2", "p3", "p4", "p5")
}
MAIN_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


# The model these tests build: tiny_config's AugFPN at 64-96 px.
AUGFPN = {"neck": "augfpn", "min_size": 64, "max_size": 96}


def _images():
    torch.manual_seed(1)
    return [torch.rand(3, 67, 93), torch.rand(3, 71, 64)]


# ----------------------------------------------------------------------------- RFA


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 4), (13, 21)])
def test_rfa_matches_a_direct_computation_on_any_size(size):
    from fpncli.modeling.necks.augfpn import ResidualFeatureAugmentation

    torch.manual_seed(0)
    rfa = ResidualFeatureAugmentation(8, 4)
    for module in rfa.modules():  # non-zero biases, so a dropped bias would show
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.uniform_(module.bias, -0.5, 0.5)
    c5 = torch.randn(2, 8, *size)
    h, w = size
    maps = []
    for ratio, conv in zip((0.1, 0.2, 0.3), rfa.reduce):
        pooled = F.adaptive_avg_pool2d(c5, (max(1, int(h * ratio)), max(1, int(w * ratio))))
        reduced = F.conv2d(pooled, conv.weight, conv.bias)
        maps.append(F.interpolate(reduced, size=size, mode="bilinear", align_corners=True))
    first, _, last = rfa.fusion
    hidden = F.relu(F.conv2d(torch.cat(maps, 1), first.weight, first.bias))
    weights = torch.sigmoid(F.conv2d(hidden, last.weight, last.bias, padding=1))
    expected = sum(weights[:, i : i + 1] * maps[i] for i in range(3))
    out = rfa(c5)
    assert out.shape == (2, 4, *size)
    torch.testing.assert_close(out, expected)


def test_augfpn_neck_shapes_raw_laterals_and_rfa_residual(build_model):
    model = build_model(**AUGFPN)
    neck = model.backbone.neck
    for height, width in ((64, 64), (97, 45), (67, 131)):
        x = torch.rand(1, 3, height, width)
        bottom_up = model.backbone.bottom_up(x)
        neck.eval()
        with torch.no_grad():
            out = neck(bottom_up)
        assert list(out) == list(model.levels) and out.raw_laterals is None  # eval: not kept
        for name, fmap in out.items():
            stride = model.levels[name].stride
            assert tuple(fmap.shape[-2:]) == (-(-height // stride), -(-width // stride)), name
        neck.train()
        with torch.no_grad():
            trained = neck(bottom_up)
        # Raw laterals: the 1x1 projections before RFA and the top-down sum, on the RoI levels.
        assert list(trained.raw_laterals) == model.roi_levels
        for conv, c_name, raw in zip(neck.laterals, neck.in_names, trained.raw_laterals.values()):
            torch.testing.assert_close(raw, conv(bottom_up[c_name]))
        # P5 = output conv of (M5 + RFA(C5)): RFA is a residual on the top lateral.
        with torch.no_grad():
            top = neck.laterals[-1](bottom_up["c5"]) + neck.rfa(bottom_up["c5"])
            torch.testing.assert_close(out["p5"], neck.outputs[-1](top))


def test_augfpn_with_every_part_off_is_fpn(build_model, one_thread):
    """Same weights, same detections: the augfpn neck without its parts is the paper's FPN."""
    fpn = build_model(min_size=64, max_size=96)
    plain = build_model(**AUGFPN, augfpn_rfa=False, augfpn_consistent_supervision=False, roi_pooling="level")
    plain.load_state_dict(fpn.state_dict())  # strict: the same names and shapes
    with torch.no_grad():
        expected, got = fpn(_images()), plain(_images())
    for e, g in zip(expected, got):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(g[key], e[key], rtol=0, atol=0)


# ----------------------------------------------------------------------------- soft RoI selection


def test_soft_selection_matches_a_direct_computation():
    from fpncli.modeling.soft_roi import SoftRoISelection

    torch.manual_seed(0)
    specs = [LevelSpec(f"p{k}", 6, 2**k) for k in (2, 3, 4, 5)]
    pooler = SoftRoISelection(specs, 6, output_size=5, sampling_ratio=2)
    features = {s.name: torch.randn(2, 6, -(-75 // s.stride), -(-53 // s.stride)) for s in specs}
    boxes = [
        torch.tensor([[3.0, 4.0, 40.0, 30.0], [10.0, 2.0, 52.0, 70.0]]),
        torch.tensor([[0.0, 0.0, 9.0, 7.0]]),
    ]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    per_level = [
        roi_align(features[s.name], rois, (5, 5), spatial_scale=1 / s.stride, sampling_ratio=2) for s in specs
    ]
    first, _, last = pooler.attention
    hidden = F.relu(F.conv2d(torch.cat(per_level, 1), first.weight, first.bias))
    weights = torch.sigmoid(F.conv2d(hidden, last.weight, last.bias, padding=1))  # [N, 4, 5, 5]
    expected = sum(weights[:, i : i + 1] * per_level[i] for i in range(4))
    torch.testing.assert_close(pooler(features, boxes), expected)
    torch.testing.assert_close(pooler.mean_level_weights(features, boxes), weights.mean(dim=(2, 3)))
    # Levels are weighted independently (sigmoid), not normalised against each other.
    assert ((weights > 0) & (weights < 1)).all()
    empty = pooler(features, [torch.zeros((0, 4)), torch.zeros((0, 4))])
    assert empty.shape == (0, 6, 5, 5)


def test_soft_selection_works_on_every_pyramid_neck(make_targets, tiny_config, one_thread):
    from fpncli.modeling.detector import build_model
    from fpncli.modeling.soft_roi import SoftRoISelection

    for neck in ("fpn", "panet"):
        torch.manual_seed(0)
        model = build_model(
            tiny_config.replace(neck=neck, roi_pooling="soft", min_size=64, max_size=96)
        ).train()
        assert isinstance(model.roi_heads.box_roi_pool, SoftRoISelection)
        losses = model(_images(), make_targets())
        assert set(losses) == MAIN_KEYS and torch.isfinite(sum(losses.values()))
        sum(losses.values()).backward()
        assert all(p.grad is not None for p in model.roi_heads.box_roi_pool.attention.parameters())


# ----------------------------------------------------------------------------- consistent supervision


def test_auxiliary_losses_in_training_absent_at_inference(make_targets, build_model, one_thread):
    from fpncli.modeling.consistent_supervision import ConsistentSupervisionRoIHeads

    model = build_model(**AUGFPN).train()
    assert isinstance(model.roi_heads, ConsistentSupervisionRoIHeads)
    torch.manual_seed(2)
    losses = model(_images(), make_targets())
    assert set(losses) == MAIN_KEYS | AUX_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    aux = sum(v for k, v in losses.items() if k in AUX_KEYS)
    aux.backward()
    # The auxiliary losses train the laterals (consistent supervision's point) and the aux head,
    # not the top-down path's output convs nor the main head.
    neck = model.backbone.neck
    assert all(conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0 for conv in neck.laterals)
    assert all(conv.weight.grad is None for conv in neck.outputs)
    assert model.roi_heads.box_head.fc6.weight.grad is None
    assert model.roi_heads.aux_head.box_head.fc6.weight.grad.abs().sum() > 0

    model.eval()
    calls = []
    model.roi_heads.aux_head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model(_images())
    assert calls == [] and set(out[0]) == {"boxes", "scores", "labels"}


def test_alpha_scales_every_auxiliary_loss(make_targets, build_model, one_thread):
    values = {}
    for alpha in (0.25, 0.5):
        model = build_model(**AUGFPN, augfpn_cs_alpha=alpha).train()
        torch.manual_seed(3)  # the same RPN and RoI sampling for both
        with torch.no_grad():
            values[alpha] = model(_images(), make_targets())
    for key in AUX_KEYS:
        torch.testing.assert_close(values[0.5][key], 2 * values[0.25][key])
    for key in MAIN_KEYS:
        torch.testing.assert_close(values[0.5][key], values[0.25][key])


@pytest.mark.parametrize(
    "parts",
    [
        {"augfpn_rfa": False},
        {"augfpn_consistent_supervision": False},
        {"roi_pooling": "level"},
        {"augfpn_rfa": False, "augfpn_consistent_supervision": False, "roi_pooling": "level"},
    ],
)
def test_each_part_switches_off_on_its_own(make_targets, build_model, parts, one_thread):
    from fpncli.analysis.describe import describe_model
    from fpncli.modeling.consistent_supervision import ConsistentSupervisionRoIHeads
    from fpncli.modeling.soft_roi import SoftRoISelection

    model = build_model(**AUGFPN, **parts).train()
    rfa = parts.get("augfpn_rfa", True)
    cs = parts.get("augfpn_consistent_supervision", True)
    soft = parts.get("roi_pooling", "soft") == "soft"
    assert (model.backbone.neck.rfa is not None) == rfa
    assert isinstance(model.roi_heads, ConsistentSupervisionRoIHeads) == cs
    assert isinstance(model.roi_heads.box_roi_pool, SoftRoISelection) == soft
    assert not any(k.startswith("backbone.neck.rfa.") for k in model.state_dict()) or rfa
    losses = model(_images(), make_targets())
    assert set(losses) == (MAIN_KEYS | AUX_KEYS if cs else MAIN_KEYS)
    assert torch.isfinite(sum(losses.values()))
    parts_on = describe_model(model, "random")["augfpn"]
    assert parts_on["residual_feature_augmentation"] == rfa and parts_on["consistent_supervision"] == cs
    assert parts_on["soft_roi_selection"] == soft


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_inference_drops_the_auxiliary_head(build_model, tmp_path, one_thread):
    from fpncli.checkpoint import read_checkpoint, save_checkpoint
    from fpncli.modeling.weights import load_detector

    model = build_model(**AUGFPN, augfpn_cs_alpha=0.5)
    path = save_checkpoint(tmp_path / "aug.pt", model)
    saved = read_checkpoint(path)
    assert any(k.startswith("roi_heads.aux_head.") for k in saved["state_dict"])  # kept for resuming
    assert saved["model_config"]["roi_pooling"] == "soft" and saved["model_config"]["augfpn_cs_alpha"] == 0.5

    inference = load_detector(str(path)).model
    assert inference.roi_heads.aux_head is None and inference.training_only_parts() == {}
    assert not any("aux_head" in k for k in inference.state_dict())
    torch.manual_seed(3)
    images = [torch.rand(3, 77, 101)]
    with torch.no_grad():
        expected, got = model(images), inference(images)
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[0][key], expected[0][key], rtol=0, atol=0)

    resumed = load_detector(str(path), training=True)
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    # An inference-only file (no auxiliary weights) can still start training: the head is fresh.
    light = save_checkpoint(tmp_path / "light.pt", inference)
    again = load_detector(str(light), training=True)
    assert (
        again.model.roi_heads.aux_head is not None and "auxiliary box head initialised fresh" in again.source
    )
    assert load_detector(str(light)).model.roi_heads.aux_head is None


def test_fine_tuning_an_augfpn_run_on_other_classes_and_from_an_fpn_run(
    tiny_config, tmp_path, one_thread, build_model
):
    from fpncli.checkpoint import save_checkpoint
    from fpncli.training.config import TrainConfig
    from fpncli.training.model_setup import build_training_model as _build_model

    aug = build_model(**AUGFPN)
    path = save_checkpoint(tmp_path / "aug.pt", aug)
    two = SimpleNamespace(names=["a", "b"], category_ids=[4, 5])
    tuned, source = _build_model(TrainConfig(weights=str(path)), two)
    assert "new box predictor" in source
    assert tuned.roi_heads.aux_head.box_predictor.cls_score.out_features == 3
    assert torch.equal(
        tuned.roi_heads.aux_head.box_head.fc6.weight, aug.roi_heads.aux_head.box_head.fc6.weight
    )

    fpn = build_model(min_size=64, max_size=96)
    fpn_path = save_checkpoint(tmp_path / "fpn.pt", fpn)
    categories = SimpleNamespace(names=tiny_config.class_names, category_ids=tiny_config.category_ids)
    into, source = _build_model(TrainConfig(weights=str(fpn_path), neck="augfpn"), categories)
    # An FPN run's default pooling gives way to AugFPN's own (soft); FPN's weights are reused.
    assert into.config.roi_pooling == "soft" and into.config.neck == "augfpn"
    assert torch.equal(into.backbone.neck.laterals[0].weight, fpn.backbone.neck.laterals[0].weight)
    assert "backbone.neck.rfa" in source and "roi_heads.aux_head" in source and "\n" not in source


# ----------------------------------------------------------------------------- options and commands


def test_bad_options_are_one_line_errors(tiny_config, cli):
    with pytest.raises(FpnError, match="soft pools from several levels; the c4 neck has one"):
        tiny_config.replace(neck="c4", roi_pooling="soft").validate()
    with pytest.raises(FpnError, match="--no-rfa: only for --neck augfpn"):
        tiny_config.replace(augfpn_rfa=False).validate()
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(FpnError, match="augfpn_cs_alpha must be a positive number"):
            tiny_config.replace(neck="augfpn", augfpn_cs_alpha=alpha).validate()
    for args, message in (
        (["--neck", "c5", "--roi-pooling", "soft"], "soft pools from several levels; the c5 neck has one"),
        (["--no-consistent-supervision"], "--no-consistent-supervision: only for --neck augfpn"),
    ):
        result = cli(["info", "--preset", "tiny", *args])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1 or "error:" in result.output.splitlines()[0]


def test_info_lists_the_parts_and_the_training_only_head(cli):
    args = ["info", "--preset", "tiny", "--neck", "augfpn", "--no-rfa"]
    info = json.loads(cli([*args, "--json"]).output)
    assert info["augfpn"] == {
        "residual_feature_augmentation": False,
        "soft_roi_selection": True,
        "consistent_supervision": True,
        "cs_alpha": 0.25,
    }
    assert info["roi_pooling"] == "soft" and info["training_only_parameters"]["auxiliary box head"] > 0
    assert sum(info["parameters_by_part"].values()) == info["parameters"]  # inference parts only
    table = " ".join(cli(args, terminal_width=200).output.split())
    assert "residual feature augmentation off, soft RoI selection on, consistent supervision on" in table
    assert "training only: alpha 0.25" in table and "soft RoI selection" in table
    plain = json.loads(cli(["info", "--preset", "tiny", "--json"]).output)
    assert (
        plain["augfpn"] is None
        and plain["training_only_parameters"] == {}
        and plain["roi_pooling"] == "level"
    )
    help_text = " ".join(cli(["train", "--help"], terminal_width=400).output.split())
    # (rich cuts the long option name in an 80-column table: "--no-consistent-sup…")
    assert (
        "--no-rfa" in help_text and "--no-consistent-sup" in help_text and "soft RoI selection" in help_text
    )


def test_inspect_levels_soft_view(build_model, tmp_path, one_thread):
    from PIL import Image

    from fpncli.analysis.inspect_image import SIZE_BUCKETS, inspect_image
    from fpncli.analysis.level_views import trace
    from fpncli.viz.levels import save_soft_levels

    model = build_model(**AUGFPN)
    image = tmp_path / "img.png"
    torch.manual_seed(0)
    Image.fromarray((torch.rand(90, 117, 3) * 255).byte().numpy()).save(image)
    report = inspect_image(model, image, score_thr=0.0)
    soft = report.soft
    assert soft is not None and report.afp is None and soft.total == len(report.detections) > 0
    boxes = torch.tensor([d.box for d in report.detections])
    ratio = torch.tensor([report.input_size[1] / 117, report.input_size[0] / 90] * 2)
    traced = trace(model, torch.from_numpy(report.image.copy()).permute(2, 0, 1).float() / 255)
    direct = model.roi_heads.box_roi_pool.mean_level_weights(traced.features, [boxes * ratio])
    for det, row in zip(report.detections, direct.tolist()):
        assert det.soft_weights == pytest.approx(row, abs=1e-5)
        assert det.soft_level == model.roi_levels[max(range(4), key=lambda i: row[i])]
    sizes = [name for name, _ in SIZE_BUCKETS]
    assert sum(soft.won[lv][s] for lv in soft.levels for s in sizes) == soft.total
    assert soft.agree == sum(d.soft_level == d.level for d in report.detections)
    data = report.to_json()
    assert data["soft"]["detections"] == soft.total and "soft_weights" in data["detections"][0]
    assert save_soft_levels(report, tmp_path / "soft.png").stat().st_size > 0
    empty = inspect_image(model, image, score_thr=1.1)
    assert empty.soft.total == 0 and empty.soft.mean_weight == dict.fromkeys(model.roi_levels)
    assert save_soft_levels(empty, tmp_path / "empty.png").stat().st_size > 0
    assert (
        save_soft_levels(inspect_image(build_model(**AUGFPN, roi_pooling="level"), image), tmp_path / "x.png")
        is None
    )


def test_ablation_rows_for_the_parts():
    from fpncli.analysis.ablation import SURVEY_ROWS, parse_row, row_pooling
    from fpncli.analysis.ablation.run import _train_key

    assert parse_row("augfpn") == ("augfpn", {}) and row_pooling("augfpn") == "soft"
    assert parse_row("fpn+cs") == ("augfpn", {"roi_pooling": "level", "augfpn_rfa": False})
    assert parse_row("fpn+rfa") == (
        "augfpn",
        {"roi_pooling": "level", "augfpn_consistent_supervision": False},
    )
    assert parse_row("fpn+soft") == ("fpn", {"roi_pooling": "soft"}) and row_pooling("fpn+soft") == "soft"
    assert parse_row("augfpn+nocs+norfa") == (
        "augfpn",
        {"augfpn_consistent_supervision": False, "augfpn_rfa": False},
    )
    assert {"augfpn", "fpn+cs", "fpn+rfa", "fpn+soft"} <= set(SURVEY_ROWS)
    for row, message in (
        ("fpn+norfa", "norfa switch off AugFPN parts"),
        ("c4+soft", "soft pools from several levels"),
        ("augfpn+cs", "unknown modifier 'cs'"),
    ):
        with pytest.raises(FpnError, match=message):
            parse_row(row)
    settings = {"seed": 0, "preset": "tiny", "data": "d", "iters": 2, "batch_size": 4}
    settings |= {
        "train_images": 8,
        "val_images": 4,
        "nasfpn_stacks": 7,
        "nasfpn_norm": "gn",
        "bifpn_repeats": 2,
    }
    key = _train_key(settings, "fpn+cs")
    assert key["neck"] == "augfpn" and key["augfpn_rfa"] is False and key["roi_pooling"] == "level"
    assert _train_key(settings, "augfpn") != _train_key(settings, "augfpn+nocs")


def test_training_logs_the_auxiliary_losses_and_draws_them(tmp_path):
    from fpncli.viz.curves import plot_training_curves

    metrics = tmp_path / "metrics.jsonl"
    records = [
        {
            "type": "train",
            "iter": i,
            "lr": 1e-3,
            "loss": 2.0 / i,
            "loss_classifier": 1.0 / i,
            **{k: 0.1 / i for k in AUX_KEYS},
        }
        for i in (1, 2, 3)
    ]
    metrics.write_text("\n".join(json.dumps(r) for r in records))
    out = plot_training_curves(metrics, tmp_path / "curves.png")
    from PIL import Image

    assert Image.open(out).size[0] > Image.open(_three_panel_curves(tmp_path)).size[0]  # the fourth panel


def _three_panel_curves(tmp_path):
    from fpncli.viz.curves import plot_training_curves

    metrics = tmp_path / "plain.jsonl"
    metrics.write_text(json.dumps({"type": "train", "iter": 1, "lr": 1e-3, "loss": 1.0}))
    return plot_training_curves(metrics, tmp_path / "plain.png")


@pytest.mark.slow
def test_cli_train_augfpn_logs_aux_losses_resumes_and_runs_every_command(train_then_reload, one_thread):
    """`fpn train --neck augfpn` on a tiny synthetic set: the auxiliary losses in
    metrics.jsonl, resume, then detect / eval / inspect-levels / info on the checkpoint."""
    done = train_then_reload("--neck", "augfpn", "--no-rfa", resume_iters=2)
    records = [json.loads(line) for line in (done.run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert [r["iter"] for r in train] == [1, 2] and all(set(r) >= AUX_KEYS for r in train)
    assert all(abs(r["loss"] - sum(r[k] for k in MAIN_KEYS | AUX_KEYS)) < 1e-4 for r in train)
    info = done.info
    assert info["augfpn"]["residual_feature_augmentation"] is False and info["roi_pooling"] == "soft"
    assert "Soft RoI selection" in done.inspect.output, done.inspect.output


@pytest.mark.parametrize("h,w", [(25, 34), (7, 3), (1, 1), (40, 9)])
def test_rfa_pooling_is_adaptive_avg_pool_for_any_size(h, w):
    """RFA's traceable pooling (integral image, sizes from the shape) equals PyTorch's
    adaptive average pooling at each ratio, including maps smaller than 1 / ratio."""
    import torch.nn.functional as F

    from fpncli.modeling.necks.augfpn import POOL_RATIOS, adaptive_avg_pool_by_ratio

    torch.manual_seed(0)
    x = torch.randn(2, 3, h, w)
    for ratio in POOL_RATIOS:
        expected = F.adaptive_avg_pool2d(x, (max(1, int(h * ratio)), max(1, int(w * ratio))))
        got = adaptive_avg_pool_by_ratio(x, ratio)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
