"""Our R50-FPN is torchvision's fasterrcnn_resnet50_fpn, weight for weight and box for box.

This is what lets users load torchvision's COCO_V1 weights and get its 37.0 AP.
"""

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.transforms.functional import pil_to_tensor

from fpncli.data.images import read_image
from fpncli.modeling.detector import build_model
from fpncli.modeling.weights import (
    config_from_torchvision_state_dict,
    fpncli_to_torchvision,
    load_model_state,
    torchvision_to_fpncli,
)

SIZE = 480  # shorter side; the same on both models (smaller than 800 to keep CI fast)


def _seeded_state_dict(model: torch.nn.Module) -> dict:
    """Random weights *and* BatchNorm statistics, so every parameter matters."""
    g = torch.Generator().manual_seed(1234)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) * 0.5 + 0.75
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = torch.randn(value.shape, generator=g) * 0.05
        else:
            fan_in = value[0].numel() if value.dim() > 1 else 1
            state[key] = torch.randn(value.shape, generator=g) / fan_in**0.5
    return state


@pytest.mark.slow
def test_same_detections_as_torchvision_on_real_images(coco_tiny):
    reference = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=SIZE, max_size=800, box_score_thresh=0.0
    ).eval()
    state = _seeded_state_dict(reference)
    reference.load_state_dict(state)

    cfg = config_from_torchvision_state_dict(state, min_size=SIZE, max_size=800, box_score_thresh=0.0)
    assert (cfg.backbone, cfg.fpn_channels, cfg.box_head_dim, len(cfg.class_names)) == (
        "resnet50",
        256,
        1024,
        90,
    )
    ours = build_model(cfg).eval()
    load_model_state(ours, torchvision_to_fpncli(state), "seeded state dict")
    # The mapping is a bijection: nothing lost, nothing added.
    assert fpncli_to_torchvision(ours.state_dict()).keys() == state.keys()

    files = sorted((coco_tiny / "val2017").glob("*.jpg"))[:2]
    images = [pil_to_tensor(read_image(f)).float() / 255 for f in files]
    with torch.no_grad():
        expected = reference(images)
        actual = ours(images)
    for exp, act in zip(expected, actual):
        assert len(exp["boxes"]) == 100  # score threshold 0: the full top 100
        assert torch.equal(exp["labels"], act["labels"])
        assert torch.allclose(exp["scores"], act["scores"], atol=1e-6)
        assert (exp["boxes"] - act["boxes"]).abs().max() < 1e-3
