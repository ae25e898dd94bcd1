"""DetectoRS's Recursive Feature Pyramid (Qiao et al. 2021), on the paper's FPN.

The reference is MMDetection's ``RFP(FPN)`` with ``DetectoRS_ResNet`` (see
../shared/docs/NECKS.md 1.2.1). Per extra step:

1. the current pyramid's P3, P4, P5 go through one shared ASPP (1x1; 3x3 dilation 3;
   3x3 dilation 6; global pool + 1x1; ReLU each; concatenated to ``d`` channels);
2. a second bottom-up ResNet runs **from the image**; the first block of its stages
   c3, c4, c5 adds the fed-back ASPP(P3), ASPP(P4), ASPP(P5) through a zero-initialised
   1x1 conv, before the block's final ReLU;
3. the same (shared) FPN turns that pass into a pyramid;
4. each level is fused with the previous pyramid by a learned gate,
   ``g = sigmoid(gate(second))``, ``out = g * second + (1 - g) * previous``, where ``gate`` is
   one zero-initialised 1x1 conv ``d -> 1`` shared by all levels (``g = 0.5`` at start).

The second pass has **its own weights** (MMDetection's ``rfp_backbone``, the configuration
behind the published gains; the paper's ``rfp_sharing`` option reuses the first). It starts
as a copy of the first ResNet (the detector copies it after building, and every load of
ImageNet/COCO backbone weights fills both), so with the feedback convs at zero the second
pass reproduces the first, the gate averages two equal pyramids, and an untrained RFP
computes exactly the FPN's pyramid.

torchvision's detector gives its ``backbone`` the image: :class:`~fpncli.modeling.detector.BackboneWithNeck`
hands it on to a neck that declares ``needs_image``, so nothing of torchvision is copied.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from fpncli.modeling.backbone import ResNetBottomUp
from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.necks.fpn import FPN


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as in MMDetection's RFP: four branches of
    ``branch_channels`` (1x1; 3x3 dilation 3; 3x3 dilation 6; global average pool then 1x1),
    each with bias and ReLU, concatenated. ``Tensor[B, C, h, w]`` -> ``Tensor[B, 4 * branch, h, w]``.
    """

    def __init__(self, in_channels: int, branch_channels: int) -> None:
        super().__init__()
        convs = [
            nn.Conv2d(in_channels, branch_channels, 1),
            nn.Conv2d(in_channels, branch_channels, 3, padding=3, dilation=3),
            nn.Conv2d(in_channels, branch_channels, 3, padding=6, dilation=6),
            nn.Conv2d(in_channels, branch_channels, 1),  # on the globally pooled map
        ]
        for conv in convs:
            # The reference's init_cfg=Kaiming: mmcv's defaults are normal, fan_out, relu, bias 0.
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # built with bias=True
        self.branches = nn.ModuleList(convs)
        self.out_channels = 4 * branch_channels

    def forward(self, x: Tensor) -> Tensor:
        outs = [F.relu(conv(x)) for conv in self.branches[:3]]
        pooled = F.relu(self.branches[3](F.adaptive_avg_pool2d(x, 1)))
        outs.append(pooled.expand_as(outs[0]))
        return torch.cat(outs, dim=1)


def block_with_feedback(block: Any, x: Tensor, feedback: Tensor) -> Tensor:
    """A torchvision ResNet block with ``feedback`` added before its final ReLU (the
    reference's ``Bottleneck.rfp_forward``): ``relu(residual(x) + shortcut(x) + feedback)``."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:  # BasicBlock
        out = block.bn2(block.conv2(out))
    return block.relu(out + identity + feedback)


class RFPBottomUp(ResNetBottomUp):
    """The bottom-up ResNet of an RFP step: the same network (same module names, so the
    same weights files load), plus ``rfp_convs``, zero-initialised 1x1 convs (with bias) from
    the fed-back features (``feedback_channels``) to the output width of the first block of
    each stage in ``feedback_stages`` (``c3``, ``c4``, ``c5``).

    ``forward(x, feedback=...)``: ``x`` ``Tensor[B, 3, H, W]``, ``feedback`` ``{"c3": Tensor[B, F,
    h3, w3], ...}`` at each stage's resolution -> ``{"c2": ..., "c5": ...}`` like
    :class:`ResNetBottomUp`.
    """

    def __init__(self, feedback_channels: int, feedback_stages: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rfp_convs = nn.ModuleDict(
            {
                name: nn.Conv2d(feedback_channels, self.output_specs[name].channels, 1)
                for name in feedback_stages
            }
        )
        for p in self.rfp_convs.parameters():
            nn.init.zeros_(p)

    def forward(
        self, x: Tensor, last: str = "c5", feedback: dict[str, Tensor] | None = None
    ) -> OrderedDict[str, Tensor]:
        if feedback is None:
            return super().forward(x, last=last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: OrderedDict[str, Tensor] = OrderedDict()
        for k, stage in zip(range(2, 6), (self.layer1, self.layer2, self.layer3, self.layer4)):
            name = f"c{k}"
            if name in self.rfp_convs:
                x = block_with_feedback(stage[0], x, self.rfp_convs[name](feedback[name]))
                for block in stage[1:]:
                    x = block(x)
            else:
                x = stage(x)
            out[name] = x
            if name == last:
                break
        return out

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool, *args: Any
    ) -> None:
        # A plain ResNet's weights (ImageNet, the first pass's): the feedback convs keep their
        # zero initialisation instead of being reported missing.
        if not any(k.startswith(prefix + "rfp_convs.") for k in state_dict):
            for key, value in self.rfp_convs.state_dict().items():
                state_dict[f"{prefix}rfp_convs.{key}"] = value
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)


@dataclass
class RFPSteps:
    """Every step of one RFP forward pass, each a pyramid ``{level: Tensor[B, d, h, w]}``:
    ``passes[0]`` is the plain FPN on the first bottom-up pass, ``passes[k]`` (k >= 1) the
    FPN on the k-th recursive bottom-up pass; ``gates[k - 1]`` ``{level: Tensor[B, 1, h, w]}``
    the share the k-th pass got in the fusion, ``fused[k - 1]`` the pyramid after it. The
    model's output is ``fused[-1]``."""

    passes: list[OrderedDict[str, Tensor]] = field(default_factory=list)
    gates: list[OrderedDict[str, Tensor]] = field(default_factory=list)
    fused: list[OrderedDict[str, Tensor]] = field(default_factory=list)

    @property
    def output(self) -> OrderedDict[str, Tensor]:
        return self.fused[-1] if self.fused else self.passes[0]


class RFP(FPN):
    """Recursive Feature Pyramid over the paper's FPN (the FPN's weights are shared by all
    steps and keep the FPN's names, so FPN / COCO weights load into it).

    Args:
        in_specs: ``c2..c5`` specs of the bottom-up pathway.
        channels: d; the ASPP has ``d // 4`` channels per branch (64 of 256, the reference's).
        steps: bottom-up + FPN passes (the paper's 2); ``steps - 1`` recursive ResNets.
        make_bottom_up: builds one recursive ResNet, given its feedback channels and stages.

    ``forward(features, image)``: the first pass's ``{"c2": ..., "c5": ...}`` and the
    normalised, padded image ``Tensor[B, 3, H, W]`` -> the fused pyramid, with the FPN's
    levels and sizes.
    """

    needs_image = True

    def __init__(
        self,
        in_specs: OrderedDict[str, LevelSpec],
        channels: int,
        steps: int,
        make_bottom_up: Callable[[int, list[str]], RFPBottomUp],
    ) -> None:
        super().__init__(in_specs, channels)
        # Every bottom-up level but the finest gets the ASPP of its pyramid level (c3 <- P3, ...).
        self.feedback = {name: "p" + name[1:] for name in self.in_names[1:]}
        self.steps = steps
        # RFP's own modules draw from a forked RNG: a seeded RFP model initialises its FPN,
        # RPN and box head exactly as the seeded FPN model (then both compute the same at start).
        with torch.random.fork_rng(devices=[]):
            self.aspp = ASPP(channels, channels // 4)
            self.rfp_backbones = nn.ModuleList(
                make_bottom_up(self.aspp.out_channels, list(self.feedback)) for _ in range(steps - 1)
            )
            self.gate = nn.Conv2d(channels, 1, 1)
            for p in self.gate.parameters():
                nn.init.zeros_(p)

    def backbone_copies(self) -> list[nn.Module]:
        return list(self.rfp_backbones)

    def forward(
        self, features: OrderedDict[str, Tensor], image: Tensor | None = None
    ) -> OrderedDict[str, Tensor]:
        return self.run(features, image).output

    def run(self, features: OrderedDict[str, Tensor], image: Tensor | None) -> RFPSteps:
        """All steps (:class:`RFPSteps`) for the first pass's ``features`` and ``image``."""
        if image is None:
            raise ValueError("the RFP neck runs the backbone again: it needs the image")
        x = super().forward(features)
        steps = RFPSteps(passes=[x])
        for backbone in self.rfp_backbones:
            feedback = {c: self.aspp(x[p]) for c, p in self.feedback.items()}
            second = super().forward(backbone(image, feedback=feedback))
            gates: OrderedDict[str, Tensor] = OrderedDict()
            fused: OrderedDict[str, Tensor] = OrderedDict()
            for name, previous in x.items():
                gate = torch.sigmoid(self.gate(second[name]))
                gates[name] = gate
                fused[name] = gate * second[name] + (1 - gate) * previous
            steps.passes.append(second)
            steps.gates.append(gates)
            steps.fused.append(fused)
            x = fused
        return steps
