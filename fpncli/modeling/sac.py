"""Switchable Atrous Convolution (DetectoRS, Qiao et al. 2021), for the bottom-up ResNet.

The reference is mmcv's ``SAConv2d(ConvAWS2d)`` (``mmcv/ops/saconv.py``, see
../shared/docs/NECKS.md 1.2.2). A SAC layer replaces a 3x3 convolution and, at
initialisation, computes exactly what that convolution computes (up to float rounding of
the weight standardisation): the context convs and the weight difference start at zero,
the switch at 1, the offsets (deformable variant) at zero.

Weight standardisation (the reference's adaptive one, ``ConvAWS2d``): the layer convolves
with ``gamma * (w - mean(w)) / std(w) + beta`` per output channel, where ``gamma`` / ``beta``
are buffers (not trained). The reference fills them with the std / mean of the pretrained
weight when it loads a plain convolution's state dict, so the standardised weight *is* the
pretrained weight. fpncli does the same on every load of a plain conv state (ImageNet, COCO,
an FPN checkpoint), and also at construction from the layer's own initial weight, so a
random (from-scratch) SAC layer equals the random conv it replaced as well; a SAC
checkpoint carries its own ``weight_gamma`` / ``weight_beta`` and loads them unchanged.
Training then moves the standardised shape of each kernel while its per-channel mean and
scale stay those of the pretrained kernel (the reference's behaviour).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import deform_conv2d

# mmcv's ConvAWS2d: variance + this, under the square root.
WS_EPS = 1e-5
# The SAC parameters a plain convolution's state dict does not have; they keep their
# (identity) initialisation when one is loaded.
_EXTRA_MODULES = ("pre_context", "post_context", "switch", "offset_s", "offset_l")


def _mean_std(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per output channel mean and std (unbiased variance + eps, as mmcv), ``[C_out, 1, 1, 1]``."""
    flat = weight.reshape(weight.shape[0], -1)
    mean = flat.mean(dim=1).reshape(-1, 1, 1, 1)
    std = torch.sqrt(flat.var(dim=1) + WS_EPS).reshape(-1, 1, 1, 1)
    return mean, std


def _padded_positions(n: Tensor, reflect: Tensor) -> Tensor:
    """Source rows (or columns) of a 2-cell padding of ``n`` cells: ``Tensor[n + 4]`` int64,
    by reflection (``-2 -> 2``, ``n + 1 -> n - 3``) where ``reflect``, else by replication."""
    i = torch.arange(-2, n + 2)  # type: ignore[call-overload]  # n: a traced 0-dim size
    mirrored = torch.where(i < 0, -i, torch.where(i >= n, 2 * (n - 1) - i, i))
    return torch.where(reflect, mirrored, i.clamp(min=0).minimum(n - 1))


def switch_padding(x: Tensor) -> Tensor:
    """SAC's 2-cell padding before its 5x5 average pool: ``Tensor[N, C, H, W]`` ->
    ``Tensor[N, C, H + 4, W + 4]``, by reflection as in the reference; maps with 2 cells or
    fewer per side (the coarsest of small images), which reflection cannot pad, by replication.

    When traced (``fpn export``) it gathers rows and columns with indices computed from the
    map's size in the graph, so the exported model makes the same choice at every input size
    (``F.pad``'s mode would be frozen at the traced size).
    """
    if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
        return F.pad(x, (2, 2, 2, 2), mode=mode)
    size = torch._shape_as_tensor(x)[-2:]
    reflect = torch.minimum(size[0], size[1]) > 2  # not ReduceMin: see ExportableDetector.forward
    rows = _padded_positions(size[0], reflect)
    cols = _padded_positions(size[1], reflect)
    return x.index_select(-2, rows).index_select(-1, cols)


class SAConv2d(nn.Module):
    """Switchable atrous 3x3 convolution with weight standardisation, no bias.

    ``forward``: ``Tensor[B, C_in, H, W]`` -> ``Tensor[B, C_out, ceil(H/stride), ceil(W/stride)]``
    (the size of the 3x3, padding 1 convolution it replaces):

    1. ``x = x + pre_context(GAP(x))``;
    2. ``S = switch(AvgPool5x5(reflect-pad-2(x)))`` (stride of the conv, no sigmoid);
    3. ``out = S * conv(x, W, dilation 1) + (1 - S) * conv(x, W + weight_diff, dilation 3)``
       with ``W`` the standardised weight (deformable convs with their own offsets when
       ``deform``);
    4. ``out = out + post_context(GAP(out))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        deform: bool = False,
        weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.deform = stride, deform
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        with torch.no_grad():
            if weight is not None:
                # The conv it replaces: no random draw, so the rest of a seeded model is
                # initialised as it would be without SAC.
                self.weight.copy_(weight)
            else:
                nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # torchvision's
        self.weight_diff = nn.Parameter(torch.zeros_like(self.weight))
        self.register_buffer("weight_gamma", torch.ones(out_channels, 1, 1, 1))
        self.register_buffer("weight_beta", torch.zeros(out_channels, 1, 1, 1))
        self.pre_context = nn.Conv2d(in_channels, in_channels, 1)
        self.post_context = nn.Conv2d(out_channels, out_channels, 1)
        self.switch = nn.Conv2d(in_channels, 1, 1, stride=stride)
        self.offset_s = nn.Conv2d(in_channels, 18, 3, padding=1, stride=stride) if deform else None
        self.offset_l = nn.Conv2d(in_channels, 18, 3, padding=1, stride=stride) if deform else None
        for conv in (self.pre_context, self.post_context, self.offset_s, self.offset_l):
            if conv is not None:
                for p in conv.parameters():
                    nn.init.zeros_(p)
        nn.init.zeros_(self.switch.weight)
        nn.init.ones_(self.switch.bias)  # type: ignore[arg-type]  # built with bias=True
        self.fit_standardisation()

    @torch.no_grad()
    def fit_standardisation(self) -> None:
        """Set ``gamma`` / ``beta`` to the std / mean of the current weight, so the
        standardised weight equals it (what loading a plain conv does)."""
        mean, std = _mean_std(self.weight)
        self.weight_beta.copy_(mean)
        self.weight_gamma.copy_(std)

    weight_gamma: Tensor
    weight_beta: Tensor

    def standardised_weight(self) -> Tensor:
        """``gamma * (w - mean(w)) / std(w) + beta`` per output channel, ``Tensor[C_out, C_in, 3, 3]``."""
        mean, std = _mean_std(self.weight)
        return self.weight_gamma * (self.weight - mean) / std + self.weight_beta

    def _conv(
        self, x: Tensor, weight: Tensor, dilation: int, offsets: nn.Conv2d | None, pooled: Tensor
    ) -> Tensor:
        if offsets is None:
            return F.conv2d(x, weight, None, self.stride, dilation, dilation)
        # torchvision's op has CPU and CUDA kernels (mmcv's had no CPU one: MMDetection #5208).
        shifts = offsets(pooled)
        if x.device.type == "cpu" and x.dtype != torch.float32:
            # Its CPU kernel has no bfloat16 (deformable_im2col) and CPU autocast does not cast
            # for it: under --precision bf16 this layer runs in float32.
            out = deform_conv2d(
                x.float(),
                shifts.float(),
                weight.float(),
                stride=self.stride,
                padding=dilation,
                dilation=dilation,
            )
            return out.to(x.dtype)
        return deform_conv2d(x, shifts, weight, stride=self.stride, padding=dilation, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pre_context(F.adaptive_avg_pool2d(x, 1))
        pooled = F.avg_pool2d(switch_padding(x), kernel_size=5, stride=1)
        switch = self.switch(pooled)
        weight = self.standardised_weight()
        out_s = self._conv(x, weight, 1, self.offset_s, pooled)
        out_l = self._conv(x, weight + self.weight_diff, 3, self.offset_l, pooled)
        out = switch * out_s + (1 - switch) * out_l
        return out + self.post_context(F.adaptive_avg_pool2d(out, 1))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool, *args: Any
    ) -> None:
        # A plain 3x3 conv's state (``prefix + "weight"`` only: ImageNet, COCO, an FPN run):
        # complete it with the standardisation that reproduces that weight and with this
        # layer's identity-initialised extras, so it loads without missing keys. Children
        # load after their parent, from this same (copied) dict.
        if prefix + "weight" in state_dict and prefix + "weight_gamma" not in state_dict:
            weight = state_dict[prefix + "weight"]
            if weight.shape == self.weight.shape:
                mean, std = _mean_std(weight.detach().to(torch.float32))
                state_dict[prefix + "weight_gamma"] = std.to(weight.dtype)
                state_dict[prefix + "weight_beta"] = mean.to(weight.dtype)
                state_dict[prefix + "weight_diff"] = torch.zeros_like(weight)
                for name in _EXTRA_MODULES:
                    module = getattr(self, name)
                    if module is not None:
                        for key, value in module.state_dict().items():
                            state_dict.setdefault(f"{prefix}{name}.{key}", value)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, dilations=(1, 3), "
            f"deform={self.deform}"
        )


def _three_by_three(block: nn.Module) -> list[str]:
    """Names of a torchvision ResNet block's 3x3 convolutions: a Bottleneck's ``conv2`` (the
    reference's only one), both convs of a BasicBlock (ResNet-18/34, which DetectoRS never
    used; every 3x3 conv, as the paper converts "all 3x3 convolutional layers")."""
    if isinstance(block, Bottleneck):
        return ["conv2"]
    if isinstance(block, BasicBlock):
        return ["conv1", "conv2"]
    raise TypeError(f"not a torchvision ResNet block: {type(block).__name__}")


def convert_to_sac(stage: nn.Sequential, deform: bool = False) -> int:
    """Replace every 3x3 convolution in the blocks of ``stage`` (a ResNet ``layerN``) by an
    :class:`SAConv2d` holding the same weight (so the stage computes what it did); returns
    how many were replaced."""
    count = 0
    for block in stage:
        for name in _three_by_three(block):
            conv: nn.Conv2d = getattr(block, name)
            if conv.kernel_size != (3, 3) or conv.dilation != (1, 1) or conv.groups != 1:
                raise ValueError(f"SAC replaces plain 3x3 convolutions, not {conv}")
            sac = SAConv2d(
                conv.in_channels, conv.out_channels, stride=conv.stride[0], deform=deform, weight=conv.weight
            )
            setattr(block, name, sac)
            count += 1
    return count


def sac_layers(modules: Iterable[nn.Module]) -> list[SAConv2d]:
    return [m for m in modules if isinstance(m, SAConv2d)]
