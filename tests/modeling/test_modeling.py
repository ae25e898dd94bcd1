"""The FPN Faster R-CNN as the paper describes it: levels, strides, anchors, heads, norms."""

import math

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d, roi_align

from fpncli.config import ModelConfig, preset_config
from fpncli.errors import FpnError
from fpncli.modeling.detector import build_model


@pytest.mark.parametrize("height, width", [(128, 160), (333, 517), (97, 65), (64, 64)])
def test_declared_strides_match_real_shapes(tiny_model, height, width):
    x = torch.rand(1, 3, height, width)
    with torch.no_grad():
        bottom_up = tiny_model.backbone.bottom_up(x)
        pyramid = tiny_model.backbone(x)
    for name, spec in tiny_model.backbone.bottom_up.output_specs.items():
        assert bottom_up[name].shape[1] == spec.channels
        assert tuple(bottom_up[name].shape[-2:]) == (
            math.ceil(height / spec.stride),
            math.ceil(width / spec.stride),
        )
    assert list(pyramid) == ["p2", "p3", "p4", "p5", "p6"]
    for name, spec in tiny_model.levels.items():
        # Odd sizes round up at every stride-2 step, so level k is ceil(size / 2**k).
        assert tuple(pyramid[name].shape[-2:]) == (
            math.ceil(height / spec.stride),
            math.ceil(width / spec.stride),
        )
        assert pyramid[name].shape[1] == spec.channels == tiny_model.config.fpn_channels


def test_paper_defaults():
    model = build_model(ModelConfig(class_names=["a", "b"], category_ids=[1, 2]))
    assert [(s.name, s.stride, s.channels) for s in model.levels.values()] == [
        ("p2", 4, 256),
        ("p3", 8, 256),
        ("p4", 16, 256),
        ("p5", 32, 256),
        ("p6", 64, 256),
    ]
    assert model.rpn_levels == ["p2", "p3", "p4", "p5", "p6"]
    assert model.roi_levels == ["p2", "p3", "p4", "p5"]  # P6 feeds the RPN only
    assert model.anchor_sizes() == [(32,), (64,), (128,), (256,), (512,)]
    assert model.rpn.anchor_generator.aspect_ratios[0] == (0.5, 1.0, 2.0)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    pooler = model.roi_heads.box_roi_pool
    assert [1.0 / s.stride for s in pooler.levels] == [0.25, 0.125, 0.0625, 0.03125]
    assert pooler.output_size == (7, 7)
    head = model.roi_heads.box_head
    assert (head.fc6.in_features, head.fc6.out_features, head.fc7.out_features) == (256 * 49, 1024, 1024)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    # The neck has no non-linearities: only convolutions.
    kinds = {type(m).__name__ for m in model.backbone.neck.modules()} - {"FPN", "ModuleList"}
    assert kinds == {"Conv2d"}


def test_neck_uses_nearest_upsampling_and_addition(tiny_model):
    """P4 before its 3x3 conv equals lateral(C4) + nearest-x2(M5): check on the real modules."""
    neck = tiny_model.backbone.neck
    feats = tiny_model.backbone.bottom_up(torch.rand(1, 3, 128, 128))
    with torch.no_grad():
        m5 = neck.laterals[3](feats["c5"])
        m4 = neck.laterals[2](feats["c4"]) + m5.repeat_interleave(2, -1).repeat_interleave(2, -2)
        assert torch.allclose(neck(feats)["p4"], neck.outputs[2](m4), atol=1e-5)


def test_pooler_takes_each_roi_from_its_equation_level(tiny_model):
    pyramid = tiny_model.backbone(torch.rand(1, 3, 512, 512))
    boxes = torch.tensor([[0.0, 0.0, 224.0, 224.0], [10.0, 10.0, 40.0, 40.0], [0.0, 0.0, 500.0, 500.0]])
    pooled = tiny_model.roi_heads.box_roi_pool(pyramid, [boxes], [(512, 512)])
    for box, level, out in zip(boxes, ["p4", "p2", "p5"], pooled):
        stride = tiny_model.levels[level].stride
        direct = roi_align(pyramid[level], [box[None]], (7, 7), 1.0 / stride, 2, aligned=False)
        assert torch.allclose(out, direct[0])


def test_norm_and_trainable_layers_follow_pretraining():
    cfg = preset_config("tiny", class_names=["a"], category_ids=[1])
    scratch = build_model(cfg, pretrained_backbone=False)
    pretrained = build_model(cfg, pretrained_backbone=True)
    assert scratch.norm == "bn" and isinstance(scratch.backbone.bottom_up.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in scratch.backbone.parameters())
    assert pretrained.norm == "frozen_bn" and isinstance(pretrained.backbone.bottom_up.bn1, FrozenBatchNorm2d)
    assert not pretrained.backbone.bottom_up.layer1[0].conv1.weight.requires_grad
    assert pretrained.backbone.bottom_up.layer2[0].conv1.weight.requires_grad
    gn = build_model(cfg.replace(norm="gn"))
    assert isinstance(gn.backbone.bottom_up.bn1, torch.nn.GroupNorm)


@pytest.mark.parametrize("backbone, c5", [("resnet18", 512), ("resnet34", 512), ("resnet101", 2048)])
def test_other_backbones(backbone, c5):
    model = build_model(preset_config("tiny", backbone=backbone, class_names=["a"], category_ids=[1]))
    assert model.backbone.bottom_up.output_specs["c5"].channels == c5


def test_training_step_gives_finite_losses_with_and_without_boxes(tiny_model):
    tiny_model.train()
    images = [torch.rand(3, 128, 160), torch.rand(3, 150, 120)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]
    losses = tiny_model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert tiny_model.roi_heads.box_predictor.cls_score.weight.grad is not None


def test_inference_outputs_are_in_image_pixels(tiny_model):
    with torch.no_grad():
        out = tiny_model([torch.rand(3, 97, 211)])[0]
    assert out["boxes"].shape[1] == 4
    if len(out["boxes"]):
        # Clipped to the resized image, then scaled back: equal up to float rounding.
        assert out["boxes"][:, 2].max() <= 211 + 1e-3 and out["boxes"][:, 3].max() <= 97 + 1e-3
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"backbone": "vgg16"}, "unknown backbone"),
        ({"neck": "nas"}, "unknown neck"),
        ({"class_names": []}, "at least one class"),
        ({"min_size": 900, "max_size": 800}, "larger than max_size"),
    ],
)
def test_bad_configuration_is_a_clear_error(overrides, message):
    cfg = ModelConfig(class_names=["a"], category_ids=[1])
    for key, value in overrides.items():
        setattr(cfg, key, value)
    with pytest.raises(FpnError, match=message):
        build_model(cfg)


def test_fine_tuning_on_other_classes_keeps_everything_but_the_box_predictor(tiny_config):
    from fpncli.modeling.detector import build_model

    torch.manual_seed(0)
    trained = build_model(tiny_config)
    torch.manual_seed(1)
    new = build_model(tiny_config.replace(class_names=["x", "y"], category_ids=[7, 9]))
    predictor = {k: v.clone() for k, v in new.roi_heads.box_predictor.state_dict().items()}
    new.load_all_but_box_predictor(trained)
    ours, theirs = new.state_dict(), trained.state_dict()
    for key, value in ours.items():
        if key.startswith("roi_heads.box_predictor."):
            assert torch.equal(value, predictor[key[len("roi_heads.box_predictor.") :]])
        else:
            assert torch.equal(value, theirs[key]), key
    assert new.roi_heads.box_predictor.cls_score.out_features == 3  # 2 classes + background
    # Another architecture is not "the same model with other classes": refused loudly.
    other = build_model(tiny_config.replace(fpn_channels=tiny_config.fpn_channels * 2))
    with pytest.raises(RuntimeError):
        other.load_all_but_box_predictor(trained)
