"""Inference-only rewrites of a detector that keep its outputs (to float rounding).

- :func:`fold_batchnorm`: an eval-mode BatchNorm (frozen or not) after a convolution is an
  affine map per channel, so it can live in the convolution's weight and bias. This removes
  one full read and write of every ResNet feature map (53 of them in R50).
- :func:`use_channels_last`: oneDNN's convolutions run natively on NHWC tensors; with NCHW
  every convolution reorders its input and output.

Both change parameter names and layouts, so an optimised model is for inference only:
never train it or save its state dict. :func:`optimize_for_inference` works on a copy
unless told otherwise.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

_FOLDABLE = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _fold_into(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A new convolution computing ``norm(conv(x))`` for eval-mode ``norm``."""
    # float64 so the folded weights round once, not twice.
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(
        weight.shape[0], dtype=torch.float64, device=weight.device)
    mean, var = norm.running_mean.double(), norm.running_var.double()
    gamma = norm.weight.detach().double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.detach().double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma * torch.rsqrt(var + norm.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=conv.weight.device,
                      dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_((bias - mean) * scale + beta)
    fused.weight.requires_grad_(False)
    fused.bias.requires_grad_(False)
    return fused


def _foldable(conv: nn.Module | None, norm: nn.Module | None) -> bool:
    if not isinstance(conv, nn.Conv2d) or not isinstance(norm, _FOLDABLE):
        return False
    if isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None):
        return False  # batch statistics are not a fixed affine map
    return norm.running_mean.shape[0] == conv.out_channels


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    Pairs are found where the data flow is known: consecutive items of an ``nn.Sequential``
    (ResNet ``downsample``), and ``convK``/``bnK`` attributes of a module whose forward
    applies ``bnK(convK(x))`` (torchvision's ResNet blocks and stem, our bottom-up
    pathway). GroupNorm and training-mode BatchNorm are left alone.

    Returns:
        how many BatchNorm layers were folded (each replaced by ``nn.Identity``).
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    from fpncli.modeling.backbone import ResNetBottomUp

    pairs_by_name = (BasicBlock, Bottleneck, ResNet, ResNetBottomUp)
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
                if _foldable(conv, norm):
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


def optimize_for_inference(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                           inplace: bool = False) -> nn.Module:
    """Return ``model`` (a copy unless ``inplace``) in eval mode with the rewrites applied.

    The detections stay those of the original model up to float rounding (see
    ``tests/test_predict.py`` and ``scripts/bench_detect.py``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if fold_bn:
        fold_batchnorm(model)
    if channels_last:
        use_channels_last(model)
    return model
