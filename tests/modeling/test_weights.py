"""Weight sources: coco and imagenet through the torch hub cache (offline here), paths, none."""

import urllib.error

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from fpncli.config import preset_config
from fpncli.errors import FpnError
from fpncli.modeling import weights as W
from fpncli.modeling.coco_classes import UNUSED_CLASS
from fpncli.modeling.hub import COCO_WEIGHTS_URL, IMAGENET_URLS, hub_cache_path
from fpncli.modeling.torchvision_keys import fpncli_to_torchvision


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def offline(monkeypatch):
    def refuse(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_offline_coco_download_names_url_and_cache_path(hub_dir, offline):
    with pytest.raises(FpnError) as info:
        W.load_detector("coco")
    message = str(info.value)
    assert COCO_WEIGHTS_URL in message
    assert str(hub_dir / "checkpoints" / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth") in message
    assert "\n" not in message


def test_coco_weights_load_from_the_hub_cache(hub_dir, offline):
    """The file a user places in the cache is torchvision's COCO_V1 format: simulate it with
    a seeded torchvision model of the same architecture and check every tensor lands."""
    torch.manual_seed(0)
    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = hub_cache_path(COCO_WEIGHTS_URL)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    loaded = W.load_detector("coco", min_size=320)
    model = loaded.model
    assert "COCO_V1" in loaded.source
    assert model.norm == "frozen_bn" and model.config.min_size == 320
    assert model.config.class_names[0] == "person" and model.config.category_ids[:3] == [1, 2, 3]
    assert len(model.config.class_names) == 90 and model.config.class_names[11] == UNUSED_CLASS
    ours = fpncli_to_torchvision(model.state_dict())
    for key, value in state.items():
        assert torch.equal(ours[key], value), key


def test_imagenet_backbone_from_cache_and_from_path(hub_dir, offline, tmp_path):
    torch.manual_seed(1)
    state = resnet18().state_dict()
    cached = hub_cache_path(IMAGENET_URLS["resnet18"])
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    cfg = preset_config("tiny", class_names=["a"], category_ids=[1])
    for source in ("imagenet", str(cached)):
        loaded = W.load_detector("none", config=cfg, backbone_weights=source)
        body = loaded.model.backbone.bottom_up
        assert loaded.model.norm == "frozen_bn"  # pretrained backbone -> frozen BN (paper)
        assert torch.equal(body.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
        assert torch.equal(body.bn1.running_var, state["bn1.running_var"])
        assert "backbone from" in loaded.source


def test_offline_imagenet_download_suggests_training_from_scratch(hub_dir, offline):
    cfg = preset_config("tiny", class_names=["a"], category_ids=[1])
    with pytest.raises(FpnError, match=r"resnet18-f37072fd\.pth.*--backbone-weights none"):
        W.load_detector("none", config=cfg, backbone_weights="imagenet")


def test_backbone_weights_for_the_wrong_resnet(hub_dir, tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    cfg = preset_config("tiny", backbone="resnet50", class_names=["a"], category_ids=[1])
    with pytest.raises(FpnError, match="does not fit backbone resnet50"):
        W.load_detector("none", config=cfg, backbone_weights=str(path))


def test_weights_that_do_not_fit_the_model(tmp_path, tiny_model):
    state = fpncli_to_torchvision(tiny_model.state_dict())
    state.pop("rpn.head.cls_logits.weight")
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(FpnError, match="weights do not fit the model: 1 missing"):
        W.load_detector(str(path), anchor_sizes=(16, 32, 64, 128, 256))


def test_none_without_configuration_is_an_error():
    with pytest.raises(FpnError, match="no weights and no model configuration"):
        W.load_detector("none")
