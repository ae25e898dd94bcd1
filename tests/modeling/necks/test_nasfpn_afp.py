"""NAS-FPN (the searched merging cells, norms, level mapping) and PANet's adaptive feature
pooling (all-level pooler, per-level fc6 + max fusion, the inspect-levels view), plus what
every command needs from them: checkpoints, --weights of an FPN run, info, the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from fpncli.config import ModelConfig
from fpncli.errors import FpnError
from fpncli.modeling.levels import LevelSpec

PYRAMID_NECKS = ["fpn", "panet", "bifpn", "nasfpn"]


# ----------------------------------------------------------------------------- NAS-FPN


def test_global_pooling_cell_is_the_papers_max_gate_from_the_coarser_input():
    """TF/paper: ``coarse + sigmoid(global max(coarse)) * fine``, then ReLU -> conv -> norm.
    With an identity conv and no norm, the cell output is exactly relu of that."""
    from fpncli.modeling.necks.nasfpn import MergingCell

    cell = MergingCell("gp", 2, "none")
    with torch.no_grad():
        cell.conv.weight.zero_()
        cell.conv.weight[0, 0, 1, 1] = cell.conv.weight[1, 1, 1, 1] = 1.0  # identity 3x3
        cell.conv.bias.zero_()
    torch.manual_seed(0)
    coarse, fine = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    gate = torch.sigmoid(coarse.flatten(2).max(dim=2).values)[..., None, None]
    expected = F.relu(coarse + gate * fine)
    torch.testing.assert_close(cell(coarse, fine, []), expected)
    # Not MMDetection's average-pooled gate of the other input.
    mmdet = F.relu(fine + torch.sigmoid(fine.mean(dim=(2, 3), keepdim=True)) * coarse)
    assert not torch.allclose(cell(coarse, fine, []), mmdet)
    extra = torch.randn(1, 2, 3, 4)
    torch.testing.assert_close(cell(coarse, fine, [extra]), F.relu(coarse + gate * fine + extra))


def test_stage_graph_follows_the_tf_block_specs():
    from fpncli.modeling.necks.nasfpn import NASFPNStage

    stage = NASFPNStage(8, "none")
    assert len(stage.cells) == 7 and all(hasattr(c, "conv") for c in stage.cells)  # 7 convs per stage
    # The unread inputs (searched P5 and P7 = our p4, p6) are added to the outputs of their level.
    assert stage.extras == [[], [], [], [], [2], [4], []]
    assert stage.output_nodes == {0: 7, 1: 8, 2: 9, 4: 10, 3: 11}


def test_resize_to_level_follows_the_resnet_size_chain():
    from fpncli.modeling.necks.nasfpn import resize_to_level

    x = torch.arange(2 * 25 * 13, dtype=torch.float).reshape(1, 2, 25, 13)
    down = resize_to_level(x, 2, (7, 4))  # ceil(ceil(25/2)/2) = 7, ceil(ceil(13/2)/2) = 4
    assert down.shape[-2:] == (7, 4)
    # Two 3x3 stride-2 poolings: the first cell sees input rows and columns 0..3.
    torch.testing.assert_close(down[..., 0, 0], x[..., :4, :4].amax(dim=(-2, -1)))
    up = resize_to_level(down, -2, (25, 13))
    assert up.shape[-2:] == (25, 13) and torch.equal(up[..., :4, :4], down[..., :1, :1].expand(1, 2, 4, 4))


@pytest.mark.parametrize("size", [(64, 64), (97, 45), (333, 517), (33, 190)])
def test_nasfpn_levels_for_odd_input_sizes(tiny_config, size, one_thread, build_model):
    model = build_model(neck="nasfpn", nasfpn_stacks=2)
    assert model.rpn_levels == ["p2", "p3", "p4", "p5", "p6"] and model.roi_levels == ["p2", "p3", "p4", "p5"]
    with torch.no_grad():
        out = model.backbone(torch.rand(1, 3, *size))
    for name, fmap in out.items():
        stride = model.levels[name].stride
        assert tuple(fmap.shape[1:]) == (
            tiny_config.fpn_channels,
            -(-size[0] // stride),
            -(-size[1] // stride),
        )


def test_nasfpn_options_stacks_and_norms(tiny_config, build_model):
    from fpncli.modeling.necks.nasfpn import FrozenStatsBatchNorm2d

    def count(model):
        return sum(p.numel() for p in model.backbone.neck.parameters())

    two, four = (
        build_model(neck="nasfpn", nasfpn_stacks=2),
        build_model(neck="nasfpn", nasfpn_stacks=4),
    )
    assert len(two.backbone.neck.stages) == 2 and len(four.backbone.neck.stages) == 4
    # Every stage has the same cells: 7 convs 3x3 d->d (no bias) + 7 GroupNorms.
    d = tiny_config.fpn_channels
    assert count(four) - count(two) == 2 * 7 * (9 * d * d + 2 * d)
    kinds = {}
    for norm in ("gn", "bn", "frozen_bn", "none"):
        neck = build_model(neck="nasfpn", nasfpn_stacks=1, nasfpn_norm=norm).backbone.neck
        kinds[norm] = type(neck.stages[0].cells[0].norm)
    assert kinds == {
        "gn": torch.nn.GroupNorm,
        "bn": torch.nn.BatchNorm2d,
        "frozen_bn": FrozenStatsBatchNorm2d,
        "none": torch.nn.Identity,
    }
    with pytest.raises(FpnError, match="nasfpn_stacks must be at least 1"):
        build_model(neck="nasfpn", nasfpn_stacks=0)
    with pytest.raises(FpnError, match="unknown nasfpn_norm 'ln'"):
        build_model(neck="nasfpn", nasfpn_norm="ln")


def test_frozen_bn_keeps_its_statistics_while_training(make_targets, build_model, one_thread):
    model = build_model(neck="nasfpn", nasfpn_stacks=1, nasfpn_norm="frozen_bn", min_size=64, max_size=96)
    model.train()
    norms = [m for m in model.backbone.neck.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.running_mean.fill_(0.5)
            m.running_var.fill_(2.0)
    losses = model([torch.rand(3, 64, 64)], make_targets()[:1])
    sum(losses.values()).backward()
    assert all(float(m.running_mean.max()) == 0.5 and float(m.running_var.min()) == 2.0 for m in norms)
    assert all(m.weight.grad is not None for m in norms)  # the affine part still learns


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_nasfpn_trains_with_one_image_per_batch(make_targets, build_model, norm, one_thread):
    """The batch size fpncli trains with: GroupNorm does not care; BatchNorm computes its
    statistics over one image's cells (noisy, but it runs)."""
    model = build_model(neck="nasfpn", nasfpn_stacks=2, nasfpn_norm=norm, min_size=96, max_size=128).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = [p.detach().clone() for p in model.backbone.neck.parameters()]
    losses = model([torch.rand(3, 96, 128)], make_targets()[:1])
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.neck.parameters()))


# ----------------------------------------------------------------------------- AFP


def _levels():
    return [LevelSpec("p2", 3, 4), LevelSpec("p3", 3, 8), LevelSpec("p4", 3, 16)]


def test_all_level_pooler_pools_every_roi_from_every_level():
    from fpncli.modeling.pooler import AllLevelRoIPooler

    torch.manual_seed(0)
    features = {"p2": torch.rand(2, 3, 16, 20), "p3": torch.rand(2, 3, 8, 10), "p4": torch.rand(2, 3, 4, 5)}
    boxes = [
        torch.tensor([[1.0, 2.0, 30.0, 40.0], [0.0, 0.0, 8.0, 8.0]]),
        torch.tensor([[10.0, 5.0, 60.0, 50.0]]),
    ]
    pooler = AllLevelRoIPooler(_levels(), output_size=5, sampling_ratio=2)
    out = pooler(features, boxes)
    assert out.shape == (3, 3, 3, 5, 5)
    rois = torch.tensor([[0, 1.0, 2.0, 30.0, 40.0], [0, 0.0, 0.0, 8.0, 8.0], [1, 10.0, 5.0, 60.0, 50.0]])
    for i, spec in enumerate(_levels()):
        direct = roi_align(features[spec.name], rois, (5, 5), spatial_scale=1 / spec.stride, sampling_ratio=2)
        torch.testing.assert_close(out[:, i], direct)
    empty = pooler(features, [torch.zeros((0, 4)), torch.zeros((0, 4))])
    assert empty.shape == (0, 3, 3, 5, 5)


def test_afp_head_is_per_level_fc6_max_then_fc7():
    from fpncli.modeling.box_head import AFPBoxHead

    torch.manual_seed(0)
    head = AFPBoxHead(3, 4 * 2 * 2, 6)
    x = torch.randn(5, 3, 4, 2, 2)
    # Direct computation, one RoI and one unit at a time.
    expected = torch.empty(5, 6)
    for n in range(5):
        fused = []
        for unit in range(6):
            with torch.no_grad():
                values = [float(head.fc6[level](x[n, level].flatten())[unit]) for level in range(3)]
            fused.append(max(values))
        hidden = torch.relu(torch.tensor(fused))
        with torch.no_grad():
            expected[n] = torch.relu(head.fc7(hidden))
    torch.testing.assert_close(head(x), expected)
    # ReLU and max commute: PANet's max of ReLUs gives the same.
    per_level = torch.stack([torch.relu(head.fc6[i](x[:, i].flatten(1))) for i in range(3)], 1)
    torch.testing.assert_close(head(x), torch.relu(head.fc7(per_level.amax(1))))
    assert head(x[:0]).shape == (0, 6)
    with pytest.raises(ValueError, match="expects pooled RoIs"):
        head(torch.randn(5, 4 * 2 * 2))


def test_level_wins_counts_which_level_gave_the_maximum():
    from fpncli.modeling.box_head import AFPBoxHead

    torch.manual_seed(0)
    head = AFPBoxHead(3, 4, 8)
    with torch.no_grad():
        head.fc6[2].bias.fill_(100.0)  # level 2 wins every unit
    x = torch.randn(4, 3, 4, 1, 1)
    assert torch.equal(head.level_wins(x), torch.tensor([[0.0, 0.0, 1.0]] * 4))
    with torch.no_grad():
        head.fc6[2].bias[:2] = -100.0
        head.fc6[0].bias[:2] = 100.0  # level 0 now wins two of the eight units
    assert torch.equal(head.level_wins(x), torch.tensor([[0.25, 0.0, 0.75]] * 4))


@pytest.mark.parametrize("neck", PYRAMID_NECKS)
def test_afp_trains_with_every_pyramid_neck(make_targets, build_model, neck, one_thread):
    from fpncli.modeling.box_head import AFPBoxHead
    from fpncli.modeling.pooler import AllLevelRoIPooler

    model = build_model(
        neck=neck,
        roi_pooling="afp",
        min_size=64,
        max_size=96,
        # Another neck's option would do nothing, and is refused: only NAS-FPN gets its stacks.
        **({"nasfpn_stacks": 1} if neck == "nasfpn" else {}),
    ).train()
    assert isinstance(model.roi_heads.box_roi_pool, AllLevelRoIPooler)
    assert isinstance(model.roi_heads.box_head, AFPBoxHead) and model.roi_heads.box_head.num_levels == 4
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = [p.detach().clone() for p in model.roi_heads.box_head.fc6.parameters()]
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 60, 80)], make_targets())
    loss = sum(losses.values())
    assert torch.isfinite(loss), losses
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    # Every level's fc6 gets a gradient through the max (each wins some units).
    assert all(not torch.equal(a, b) for a, b in zip(before, model.roi_heads.box_head.fc6.parameters()))


def test_afp_needs_a_pyramid(build_model):
    with pytest.raises(FpnError, match="the c4 neck has one"):
        build_model(neck="c4", roi_pooling="afp")
    with pytest.raises(FpnError, match="unknown roi_pooling 'mean'"):
        build_model(roi_pooling="mean")


# ----------------------------------------------------------------------------- everywhere


def test_checkpoint_round_trip_identical_outputs(build_model, tmp_path, one_thread):
    from fpncli.checkpoint import save_checkpoint
    from fpncli.modeling.weights import load_detector

    model = build_model(neck="nasfpn", nasfpn_stacks=2, nasfpn_norm="bn", roi_pooling="afp")
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_detector(str(path)).model
    cfg = loaded.config
    assert (cfg.neck, cfg.nasfpn_stacks, cfg.nasfpn_norm, cfg.roi_pooling) == ("nasfpn", 2, "bn", "afp")
    torch.manual_seed(3)
    images = [torch.rand(3, 100, 130)]
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[0][key], expected[0][key], rtol=0, atol=0)


def test_old_configs_without_the_new_fields_keep_the_old_behaviour(tiny_config):
    data = tiny_config.to_dict()
    for key in ("roi_pooling", "nasfpn_stacks", "nasfpn_norm"):
        data.pop(key)
    cfg = ModelConfig.from_dict(data)
    assert cfg.roi_pooling == "level" and cfg.neck == "fpn"


def test_fpn_weights_into_nasfpn_and_afp_report_what_is_fresh(tiny_config, tmp_path, one_thread, build_model):
    from fpncli.checkpoint import save_checkpoint
    from fpncli.training.config import TrainConfig
    from fpncli.training.model_setup import build_training_model as _build_model

    fpn = build_model()
    path = save_checkpoint(tmp_path / "fpn.pt", fpn)
    categories = SimpleNamespace(names=tiny_config.class_names, category_ids=tiny_config.category_ids)

    afp, source = _build_model(TrainConfig(weights=str(path), model={"roi_pooling": "afp"}), categories)
    head = afp.roi_heads.box_head
    for fc in head.fc6:
        assert torch.equal(fc.weight, fpn.roi_heads.box_head.fc6.weight)
    assert torch.equal(head.fc7.weight, fpn.roi_heads.box_head.fc7.weight)
    assert torch.equal(afp.backbone.neck.laterals[0].weight, fpn.backbone.neck.laterals[0].weight)
    assert "fc6 copied into each of the 4 per-level fc6" in source and "initialised fresh" not in source

    nas, source = _build_model(
        TrainConfig(weights=str(path), neck="nasfpn", model={"nasfpn_stacks": 1}), categories
    )
    assert torch.equal(nas.backbone.bottom_up.conv1.weight, fpn.backbone.bottom_up.conv1.weight)
    assert torch.equal(nas.rpn.head.conv[0][0].weight, fpn.rpn.head.conv[0][0].weight)
    assert "initialised fresh: backbone.neck.laterals" in source and "backbone.neck.stages" in source
    assert "not used from the file: backbone.neck.laterals, backbone.neck.outputs" in source
    assert "\n" not in source


def test_info_shows_pooling_levels_and_parameters(cli):

    args = ["info", "--preset", "tiny", "--neck", "nasfpn", "--nasfpn-stacks", "2", "--roi-pooling", "afp"]
    result = cli([*args, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["roi_pooling"] == "afp" and info["neck_options"] == {"nasfpn_stacks": 2, "nasfpn_norm": "gn"}
    assert [lv["name"] for lv in info["levels"]] == ["p2", "p3", "p4", "p5", "p6"]
    assert sum(info["parameters_by_part"].values()) == info["parameters"]
    table = cli(args, terminal_width=200)
    assert "one fc6 per level, element-wise max" in table.output and "neck " in table.output
    bad = cli(["info", "--preset", "tiny", "--roi-pooling", "mean"])
    assert bad.exit_code == 1 and "unknown roi_pooling 'mean'" in bad.output and "Traceback" not in bad.output
    help_text = " ".join(cli(["train", "--help"], terminal_width=400).output.split())
    assert "--roi-pooling" in help_text and "--nasfpn-stacks" in help_text and "--nasfpn-norm" in help_text


def test_inspect_levels_afp_view(build_model, tmp_path, one_thread):
    from PIL import Image

    from fpncli.analysis.inspect_image import SIZE_BUCKETS, inspect_image
    from fpncli.viz.levels import save_afp_levels

    model = build_model(neck="panet", roi_pooling="afp")
    image = tmp_path / "img.png"
    torch.manual_seed(0)
    Image.fromarray((torch.rand(120, 150, 3) * 255).byte().numpy()).save(image)
    report = inspect_image(model, image, score_thr=0.0)
    afp = report.afp
    assert afp is not None and afp.total == len(report.detections) > 0
    for det in report.detections:
        assert det.afp_level in model.roi_levels and abs(sum(det.afp_shares) - 1) < 1e-5
        assert det.afp_shares[model.roi_levels.index(det.afp_level)] == max(det.afp_shares)
    sizes = [name for name, _ in SIZE_BUCKETS]
    assert sum(afp.won[lv][s] for lv in afp.levels for s in sizes) == afp.total
    assert sum(afp.equation[lv][s] for lv in afp.levels for s in sizes) == afp.total
    assert afp.agree == sum(d.afp_level == d.level for d in report.detections)
    data = report.to_json()
    assert data["afp"]["detections"] == afp.total and "afp_shares" in data["detections"][0]
    assert save_afp_levels(report, tmp_path / "afp.png").stat().st_size > 0

    empty = inspect_image(model, image, score_thr=1.1)
    assert empty.afp.total == 0 and empty.afp.agree == 0
    assert save_afp_levels(empty, tmp_path / "empty.png").stat().st_size > 0
    plain = inspect_image(build_model(), image, score_thr=0.5)
    assert plain.afp is None and "afp" not in plain.to_json()
    assert save_afp_levels(plain, tmp_path / "plain.png") is None


def test_cli_inspect_levels_prints_the_afp_table(tmp_path, one_thread, cli):
    from PIL import Image

    image = tmp_path / "img.png"
    torch.manual_seed(0)
    Image.fromarray((torch.rand(100, 120, 3) * 255).byte().numpy()).save(image)
    args = ["inspect-levels", str(image), "--preset", "tiny", "--roi-pooling", "afp", "--score-thr", "0"]
    result = cli([*args, "--min-size", "128", "--max-size", "160"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "AFP | Eq.1" in result.output and "detections agree" in result.output
    bad = cli(["inspect-levels", str(image), "--preset", "tiny", "--neck", "c5", "--roi-pooling", "afp"])
    assert bad.exit_code == 1 and "the c5 neck has one" in bad.output and "Traceback" not in bad.output
