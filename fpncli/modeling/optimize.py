"""Inference-only rewrites of a detector that keep its outputs (to float rounding).

- :func:`fold_batchnorm`: an eval-mode BatchNorm (frozen or not) after a convolution is an
  affine map per channel, so it can live in the convolution's weight and bias. This removes
  one full read and write of every ResNet feature map (53 of them in R50).
- :func:`use_channels_last`: oneDNN's convolutions run natively on NHWC tensors; with NCHW
  every convolution reorders its input and output.
- :func:`use_winograd`: on the CPU, 3x3 stride-1 convolutions (most of an FPN detector's
  multiply-adds: the ResNet's middle convs, the FPN's output convs and the RPN head) go
  through NNPACK's Winograd transform, which needs about a third of the multiplications. Its
  results differ from a direct convolution by ~1e-5 relative (float rounding of a
  different sum order); ``tests/inference/test_predict.py`` and ``scripts/bench_detect.py`` check that
  the detections stay the same.
- :func:`use_nchw_cpu_kernels`, with Winograd (single-threaded NCHW replicas): a 1x1
  stride-2 convolution (ResNet's downsampling shortcuts) becomes a subsample then a 1x1
  stride-1 convolution, the same products and sums, which PyTorch runs as one GEMM instead
  of oneDNN's reorder-bound strided kernel (~2x faster alone); the stem's 3x3 max pool runs
  on a channels-last copy, whose kernel vectorises over channels (exact: a maximum does not
  round).

The rewrites change parameter names and layouts, so an optimised model is for inference only:
never train it or save its state dict. :func:`optimize_for_inference` works on a copy
unless told otherwise.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

M = TypeVar("M", bound=nn.Module)

_FOLDABLE = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _fold_into(conv: nn.Module, norm: nn.Module) -> nn.Conv2d:
    """A new convolution computing ``norm(conv(x))`` for eval-mode ``norm`` (a pair that
    :func:`_foldable` accepted: an ``nn.Conv2d`` and a BatchNorm with running statistics)."""
    assert isinstance(conv, nn.Conv2d)
    running_mean, running_var = norm.running_mean, norm.running_var
    norm_weight, norm_bias = norm.weight, norm.bias
    assert isinstance(running_mean, Tensor) and isinstance(running_var, Tensor)
    assert norm_weight is None or isinstance(norm_weight, Tensor)
    assert norm_bias is None or isinstance(norm_bias, Tensor)
    # float64 so the folded weights round once, not twice.
    weight = conv.weight.detach().double()
    bias = (
        conv.bias.detach().double()
        if conv.bias is not None
        else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    )
    mean, var = running_mean.double(), running_var.double()
    gamma = norm_weight.detach().double() if norm_weight is not None else torch.ones_like(mean)
    beta = norm_bias.detach().double() if norm_bias is not None else torch.zeros_like(mean)
    scale = gamma * torch.rsqrt(var + float(norm.eps))  # type: ignore[arg-type]  # a float attribute
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]  # Conv2d keeps 2-tuples; typed tuple[int, ...]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused_bias = fused.bias
    assert fused_bias is not None  # bias=True
    with torch.no_grad():
        fused.weight.copy_(weight * scale.reshape(-1, 1, 1, 1))
        fused_bias.copy_((bias - mean) * scale + beta)
    fused.weight.requires_grad_(False)
    fused_bias.requires_grad_(False)
    return fused


def _foldable(conv: nn.Module | None, norm: nn.Module | None) -> bool:
    if not isinstance(conv, nn.Conv2d) or not isinstance(norm, _FOLDABLE):
        return False
    if isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None):
        return False  # batch statistics are not a fixed affine map
    running_mean = norm.running_mean
    return isinstance(running_mean, Tensor) and running_mean.shape[0] == conv.out_channels


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    Pairs are found where the data flow is known: consecutive items of an ``nn.Sequential``
    (ResNet ``downsample``), and ``convK``/``bnK`` attributes of a module whose forward
    applies ``bnK(convK(x))`` (torchvision's ResNet blocks and stem, our bottom-up
    pathway). GroupNorm and training-mode BatchNorm are left alone.

    Returns:
        how many BatchNorm layers were folded (each replaced by ``nn.Identity``).
    """
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    from fpncli.modeling.backbone import ResNetBottomUp

    # IntermediateLayerGetter: torchvision's detection backbones (the ResNet stem's conv1/bn1).
    pairs_by_name = (BasicBlock, Bottleneck, ResNet, ResNetBottomUp, IntermediateLayerGetter)
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if _foldable(module[i], module[i + 1]):
                    module[i] = _fold_into(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
                    folded += 1
        if isinstance(module, pairs_by_name):
            for k in (1, 2, 3):
                conv, norm = getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)
                if conv is not None and norm is not None and _foldable(conv, norm):
                    setattr(module, f"conv{k}", _fold_into(conv, norm))
                    setattr(module, f"bn{k}", nn.Identity())
                    folded += 1
    return folded


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def use_channels_last(model: nn.Module) -> None:
    """Store 4-D weights as NHWC and feed the backbone NHWC images, in place.

    Feature maps stay NHWC through the neck and the RPN head (convolutions keep the
    layout of their input); RoIAlign and the box head take them as they come.
    """
    model.to(memory_format=torch.channels_last)
    backbone = getattr(model, "backbone", model)
    backbone.register_forward_pre_hook(_to_channels_last)


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1 ``nn.Conv2d`` that runs NNPACK's Winograd convolution on CPU float32
    inference inputs, and the ordinary convolution otherwise (CUDA, gradients, other dtypes)."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 4
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            return torch._nnpack_spatial_convolution(
                x.contiguous(),
                self.weight,
                self.bias,
                list(self.padding),  # type: ignore[arg-type]  # int padding: use_winograd checks it
                [1, 1],
            )
        return super().forward(x)


def winograd_available() -> bool:
    """Whether this PyTorch build has NNPACK (x86-64 and ARM wheels do)."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):
        return False


def use_winograd(model: nn.Module) -> int:
    """Swap every eligible ``nn.Conv2d`` (3x3, stride 1, no dilation, one group, zero
    padding) for a :class:`WinogradConv2d` sharing its parameters, in place.

    Returns:
        how many convolutions were swapped (0 when NNPACK is not available).
    """
    if not winograd_available():
        return 0
    swapped = 0
    for module in list(model.modules()):
        for _name, child in list(module.named_children()):
            if (
                type(child) is nn.Conv2d
                and child.kernel_size == (3, 3)
                and child.stride == (1, 1)
                and child.dilation == (1, 1)
                and child.groups == 1
                and child.padding_mode == "zeros"
                and isinstance(child.padding, tuple)
            ):
                child.__class__ = WinogradConv2d  # same parameters and state dict, new forward
                swapped += 1
    return swapped


class SubsampledPointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-s, unpadded ``nn.Conv2d`` computed as ``x[..., ::s, ::s]`` through the
    stride-1 convolution on CPU float32 inference inputs (the same sums; see the module)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            sh, sw = self.stride
            return nn.functional.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)
        return super().forward(x)


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` run on a channels-last copy of a CPU NCHW input, returned NCHW."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def use_nchw_cpu_kernels(model: nn.Module) -> int:
    """Swap, in place, every 1x1 strided unpadded ``nn.Conv2d`` for a
    :class:`SubsampledPointwiseConv2d` and every ``nn.MaxPool2d`` without indices for a
    :class:`ChannelsLastMaxPool2d` (same parameters, state dict and outputs).

    Returns:
        how many modules were swapped.
    """
    swapped = 0
    for module in model.modules():
        if (
            type(module) is nn.Conv2d
            and module.kernel_size == (1, 1)
            and module.stride != (1, 1)
            and module.padding in (0, (0, 0))
            and module.dilation == (1, 1)
        ):
            module.__class__ = SubsampledPointwiseConv2d
            swapped += 1
        elif type(module) is nn.MaxPool2d and not module.return_indices:
            module.__class__ = ChannelsLastMaxPool2d
            swapped += 1
    return swapped


def optimize_for_inference(
    model: M,
    *,
    fold_bn: bool = True,
    channels_last: bool = False,
    winograd: bool = True,
    inplace: bool = False,
) -> M:
    """Return ``model`` (a copy unless ``inplace``) in eval mode with the rewrites applied.

    ``winograd`` (CPU) and ``channels_last`` do not mix: NNPACK wants NCHW tensors, and
    on the CPU Winograd saves far more than the layout does; use channels-last on CUDA.

    The detections stay those of the original model up to float rounding (see
    ``tests/inference/test_predict.py`` and ``scripts/bench_detect.py``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if fold_bn:
        fold_batchnorm(model)
    if winograd:
        use_winograd(model)
        use_nchw_cpu_kernels(model)
    if channels_last:
        use_channels_last(model)
    return model
