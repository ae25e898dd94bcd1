"""Bottom-up pathway: a torchvision ResNet returning C2..C5 (strides 4, 8, 16, 32).

C1 (the stem output) is not used, as in the paper (memory).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import FrozenBatchNorm2d

from fpncli.modeling.levels import LevelSpec

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.config import ModelConfig

_STAGES = ("layer1", "layer2", "layer3", "layer4")
# Output channels of C2..C5: BasicBlock ResNets (18/34) vs Bottleneck ones (50/101).
_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}


def norm_layer(kind: str, frozen_bn_eps: float = 1e-5) -> type[nn.Module] | partial:
    """The normalisation module for ``kind`` (``frozen_bn``, ``bn`` or ``gn``); ``frozen_bn_eps``
    is FrozenBatchNorm2d's eps (0.0 for torchvision's COCO_V1 detector weights)."""
    if kind == "frozen_bn":
        return partial(FrozenBatchNorm2d, eps=frozen_bn_eps)
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return partial(_group_norm, groups=32)
    raise ValueError(f"unknown norm {kind!r}")


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class ResNetBottomUp(nn.Module):
    """ResNet body without its classifier.

    Its child modules keep torchvision's names (``conv1``, ``bn1``, ``layer1``..``layer4``)
    so that torchvision and ImageNet state dicts load by a prefix change only.

    Args:
        name: ``resnet18|resnet34|resnet50|resnet101``.
        norm: ``frozen_bn|bn|gn``.
        trainable_layers: how many stages, counted from the top (layer4, layer3, ...,
            and the stem as the fifth), keep ``requires_grad``.
        frozen_bn_eps: FrozenBatchNorm2d's eps (``norm="frozen_bn"`` only).
        sac_stages: stages (2..5, i.e. ``c2``..``c5``) whose 3x3 convolutions become
            Switchable Atrous Convolutions (:mod:`fpncli.modeling.sac`); ``sac_deform``: their
            deformable variant. A SAC layer loads a plain ResNet's 3x3 weight and then
            computes what it did.
    """

    def __init__(
        self,
        name: str,
        norm: str = "bn",
        trainable_layers: int = 5,
        frozen_bn_eps: float = 1e-5,
        sac_stages: tuple[int, ...] = (),
        sac_deform: bool = False,
    ) -> None:
        super().__init__()
        net = getattr(tv_resnet, name)(weights=None, norm_layer=norm_layer(norm, frozen_bn_eps))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if sac_stages:
            from fpncli.modeling.sac import convert_to_sac

            # The SAC layers' own (zero / constant) inits draw from a forked RNG, so a seeded
            # model's other modules get the values they get without SAC.
            with torch.random.fork_rng(devices=[]):
                for k in sac_stages:  # before freezing: SAC parameters of a frozen stage stay frozen
                    convert_to_sac(getattr(self, _STAGES[k - 2]), deform=sac_deform)
        self.output_specs = OrderedDict(
            (f"c{k}", LevelSpec(f"c{k}", ch, 2**k)) for k, ch in zip(range(2, 6), _CHANNELS[name])
        )
        trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            trainable.append("bn1")
        for module_name, param in self.named_parameters():
            if not any(module_name.startswith(prefix) for prefix in trainable):
                param.requires_grad_(False)

    def freeze_after(self, last: str) -> None:
        """Freeze the stages after level ``last``: a neck that reads only up to ``last`` (the
        c4 baseline) never runs them, so they never get a gradient. Frozen, they stay in the
        state dict (checkpoints and ImageNet weights load as before) but out of the optimizer
        and of DistributedDataParallel, whose reducer would otherwise wait for their
        gradients and stop with its unused-parameters error."""
        for k, stage in zip(range(2, 6), _STAGES):
            if k > int(last[1:]):
                getattr(self, stage).requires_grad_(False)

    def forward(self, x: Tensor, last: str = "c5") -> OrderedDict[str, Tensor]:
        """``x``: ``Tensor[B, 3, H, W]`` -> ``{"c2": [B, C2, H/4, W/4], ..., "c5": [B, C5, H/32, W/32]}``
        (sizes rounded up at each stride-2 step). ``last``: stop after this level (the
        single-scale C4 baseline never reads C5, so it does not pay for conv5)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: OrderedDict[str, Tensor] = OrderedDict()
        for k, stage in zip(range(2, 6), _STAGES):
            x = getattr(self, stage)(x)
            out[f"c{k}"] = x
            if f"c{k}" == last:
                break
        return out


def bottom_up_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """:class:`ResNetBottomUp`'s arguments for a resolved model config (the detector's
    ResNet and RFP's recursive ones are built alike)."""
    return {
        "name": cfg.backbone,
        "norm": cfg.norm,
        "trainable_layers": cfg.resolved_trainable_layers(False),
        "frozen_bn_eps": cfg.frozen_bn_eps,
        "sac_stages": tuple(cfg.sac_stages) if cfg.sac else (),
        "sac_deform": cfg.sac_deform,
    }


def imagenet_state_dict_to_bottom_up(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the classifier (``fc.*``) from a torchvision ImageNet ResNet state dict."""
    return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
