"""3x3 convolutions as Winograd F(4x4, 3x3) in plain ONNX operators, for ``fpn export``.

``fpn detect`` runs its 3x3 stride-1 convolutions through NNPACK's Winograd kernels
(:mod:`fpncli.modeling.optimize`); ONNX Runtime's CPU provider only has direct ones, and the
wide 3x3 convolutions (the FPN's output convs, the RPN head, ResNet's res4) are about 40 % of
an R50-FPN's CPU time there. Lavin & Gray's F(4x4, 3x3) computes each 4x4 output tile from a
6x6 input tile with 36 multiplications per (input, output) channel pair instead of 144, so
the graph here spells it out with operators every runtime has:

1. input transform ``V = B^T d B`` of every 6x6 tile (stride 4): one ``Conv`` with a fixed
   6x6 kernel per transform element over the images' channels as a batch,
   ``Tensor[N*C, 36, th, tw]``;
2. 36 matrix products ``M[e] = U[e] @ V[e]`` with ``U = G g G^T`` (one batched ``MatMul``),
   ``Tensor[36, K, N*th*tw]``;
3. output transform ``Y = A^T M A`` (a ``MatMul`` by the 16x36 matrix) and the tiles laid
   back out as pixels (``DepthToSpace``), cropped to the input's size.

Measured in ONNX Runtime 1.32 on this project's 2-core CPU, one thread, 256 channels in and
out: 128x176 maps 295 -> 187 ms, 64x88 74 -> 44 ms, 32x44 19 -> 14 ms. With 64 or 128
channels the transforms cost what the product saves (26 -> 39 ms at 64 channels, 128x176), so
only convolutions with at least :data:`MIN_CHANNELS` input and output channels are rewritten.
The results differ from a direct convolution by float rounding (with :data:`POINTS`, a
largest error like a direct convolution's, a mean 1.5x); ``fpn export``'s self-check holds
the detections to its tolerances.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_CHANNELS = 256
# The largest weight rewritten: U is 4x the size of the kernel (36 vs 9 values per pair), and
# ResNet's 512-channel res5 convs run on the smallest maps, where they save little (20 -> 13 ms
# for 16x22) for 28 MB more memory each.
MAX_CHANNELS = 256

# The interpolation points of F(4x4, 3x3) (plus the point at infinity). On a 256-channel conv
# of ReLU inputs (64x88, random He-initialised weights, float64 reference), Lavin & Gray's
# 0, +-1, +-2 err by up to 4.6x a direct convolution's largest error. Searching 0 plus four of
# +-{1/4, 1/3, 1/2, 2/3, 3/4, 1, 4/3, 3/2, 2, 3} for the smallest mean error gave these:
# largest error 1.0x, mean 1.5x the direct one's. Lavin's points failed fpn export's
# 0.01 px check on an R50-FPN at 800 px (0.0101 px); these pass it.
POINTS = (0.0, 2 / 3, -2 / 3, 3 / 2, -3 / 2)


def toom_cook_matrices(points: tuple[float, ...] = POINTS) -> tuple[Tensor, Tensor, Tensor]:
    """``(A^T [4, 6], G [6, 3], B^T [6, 6])`` float64 of F(4x4, 3x3) on ``points`` (five
    distinct finite points, and infinity): for a 6-tap input row ``d`` and a 3-tap kernel
    ``g``, ``A^T ((G g) * (B^T d))`` is the 4-output correlation ``y_i = sum_k g_k d_(i+k)``
    (modified Toom-Cook; Lavin & Gray, 2016; 2-D nests it: ``A^T [(G g G^T) * (B^T d B)] A``).

    Row ``j`` of ``B^T`` holds the coefficients (ascending) of ``prod_(l != j) (x - a_l)``, its
    last row those of ``prod_l (x - a_l)``; ``G[j, k] = a_j^k / prod_(l != j) (a_j - a_l)``;
    ``A^T[i, j] = a_j^i``, and the last column picks the top output.
    """
    m, r = 4, 3
    n = m + r - 1
    if len(points) != n - 1 or len(set(points)) != n - 1:
        raise ValueError(f"F(4x4, 3x3) needs {n - 1} distinct finite points, got {points}")
    at = torch.zeros(m, n, dtype=torch.float64)
    g = torch.zeros(n, r, dtype=torch.float64)
    bt = torch.zeros(n, n, dtype=torch.float64)

    def poly(roots: list[float]) -> list[float]:  # ascending coefficients of prod (x - root)
        coeffs = [1.0]
        for root in roots:
            shifted = [0.0, *coeffs]  # x * p(x)
            coeffs = [
                shifted[i] - root * (coeffs[i] if i < len(coeffs) else 0.0) for i in range(len(shifted))
            ]
        return coeffs

    for j, a in enumerate(points):
        others = [b for b in points if b != a]
        scale = 1.0
        for b in others:
            scale *= a - b
        at[:, j] = torch.tensor([a**i for i in range(m)], dtype=torch.float64)
        g[j] = torch.tensor([a**k / scale for k in range(r)], dtype=torch.float64)
        row = poly(others)
        bt[j, : len(row)] = torch.tensor(row, dtype=torch.float64)
    at[m - 1, n - 1] = 1.0
    g[n - 1, r - 1] = 1.0
    bt[n - 1] = torch.tensor(poly(list(points)), dtype=torch.float64)
    return at, g, bt


class _DepthToSpaceDCR(torch.autograd.Function):
    """``Tensor[N, r*r*K, h, w]`` with channels ordered (row in block, column in block, k) ->
    ``Tensor[N, K, r*h, r*w]``: ONNX's DepthToSpace in DCR mode. ``F.pixel_shuffle`` exports
    as CRD (k outermost), which would need a transpose of the whole product first."""

    @staticmethod
    def forward(ctx: object, x: Tensor, block: int) -> Tensor:
        n, c, h, w = x.shape
        k = c // (block * block)
        y = x.reshape(n, block, block, k, h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, k, h * block, w * block)

    @staticmethod
    def symbolic(g: Any, x: Any, block: int) -> Any:  # the exporter's GraphContext and Value
        return g.op("DepthToSpace", x, blocksize_i=block, mode_s="DCR")


class WinogradGraphConv(nn.Module):
    """``forward(x: Tensor[N, C, H, W]) -> Tensor[N, K, H, W]``: the wrapped 3x3, stride-1,
    padding-1 convolution (bias included) computed as F(4x4, 3x3), for ONNX export. Any N
    (the backbone and neck see one image, a box head's convs every RoI) and H, W >= 1, all
    taken from the input's shape in the graph."""

    input_transform: Tensor
    output_transform: Tensor
    g: Tensor

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not eligible(conv):
            raise ValueError("WinogradGraphConv needs a 3x3, stride-1, padding-1 convolution")
        k, c = conv.out_channels, conv.in_channels
        self.in_channels, self.out_channels = c, k
        self.weight = conv.weight  # Tensor[K, C, 3, 3], stored as it is in the file
        self.bias = conv.bias
        at, g, bt = toom_cook_matrices()
        # The input transform as 36 fixed 6x6 kernels, one per element of B^T d B.
        bb = torch.einsum("ip,jq->ijpq", bt, bt).reshape(36, 1, 6, 6).to(torch.float32)
        self.register_buffer("input_transform", bb, persistent=False)
        aa = torch.einsum("ip,jq->ijpq", at, at).reshape(16, 36).to(torch.float32)
        self.register_buffer("output_transform", aa, persistent=False)
        self.register_buffer("g", g.to(torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        c, k = self.in_channels, self.out_channels
        # U = G g G^T per (k, c): Tensor[36, K, C]. Computed from the weight in the graph, so the
        # file stores the 3x3 kernel (ONNX Runtime folds this into a constant at load).
        g = self.g
        u = torch.matmul(torch.matmul(g, self.weight), g.t())  # [K, C, 6, 6]
        u = u.reshape(k, c, 36).permute(2, 0, 1)
        # Tiles of 6x6 at stride 4 from the input padded by 1 (top, left) and 4 (bottom,
        # right): floor((H + 5 - 6) / 4) + 1 = ceil(H / 4) tile rows, the last one inside.
        # Images and channels as the batch, so the file holds one [36, 1, 6, 6] kernel per
        # convolution rather than a copy per channel.
        size = torch._shape_as_tensor(x)  # (N, C, H, W): sizes stay dynamic in the graph
        xp = F.pad(x, (1, 4, 1, 4)).reshape(-1, 1, size[2] + 5, size[3] + 5)  # type: ignore[call-overload]
        v = F.conv2d(xp, self.input_transform, stride=4)  # [N*C, 36, th, tw]
        tiles = torch._shape_as_tensor(v)
        v = v.reshape(size[0], c, 36, -1).permute(2, 1, 0, 3).reshape(36, c, -1)  # type: ignore[call-overload]
        m = torch.matmul(u, v)  # [36, K, N*T]
        y = torch.matmul(self.output_transform, m.reshape(36, -1))  # [16, K*N*T], rows (a, b)
        y = y.reshape(16, k, size[0], tiles[2], tiles[3]).permute(2, 0, 1, 3, 4)  # type: ignore[call-overload]
        y = y.reshape(size[0], 16 * k, tiles[2], tiles[3])
        y = _DepthToSpaceDCR.apply(y, 4)  # [N, K, 4*th, 4*tw]
        y = y[:, :, : size[2], : size[3]]
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


def eligible(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` that F(4x4, 3x3) computes exactly (3x3, stride 1, padding 1, no
    dilation, one group, zero padding)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def use_winograd_graph(model: nn.Module) -> int:
    """Swap every :func:`eligible` convolution with ``MIN_CHANNELS`` to ``MAX_CHANNELS``
    input and output channels for a :class:`WinogradGraphConv` sharing its weights, in place.

    Returns:
        how many convolutions were swapped.
    """
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if (
                isinstance(child, nn.Conv2d)
                and eligible(child)
                and MIN_CHANNELS <= child.in_channels <= MAX_CHANNELS
                and MIN_CHANNELS <= child.out_channels <= MAX_CHANNELS
            ):
                setattr(module, name, WinogradGraphConv(child))
                swapped += 1
    return swapped
