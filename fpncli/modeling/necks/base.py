"""The contract every neck follows."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from fpncli.modeling.levels import LevelSpec, check_strides


def pyramid_specs(
    in_specs: dict[str, LevelSpec], names: list[str], channels: int
) -> OrderedDict[str, LevelSpec]:
    """The pyramid over bottom-up levels ``names`` (``c2``..``c5``): one ``p<k>`` per input at
    its stride, plus one coarser level at twice the last stride (the paper's P6), all
    ``channels`` wide, finest first."""
    specs: OrderedDict[str, LevelSpec] = OrderedDict()
    for name in names:
        level = "p" + name[1:]
        specs[level] = LevelSpec(level, channels, in_specs[name].stride)
    top = f"p{int(names[-1][1:]) + 1}"
    specs[top] = LevelSpec(top, channels, in_specs[names[-1]].stride * 2)
    return specs


class Neck(nn.Module):
    """Base class of necks.

    Subclasses set, in ``__init__``:
        in_names: the bottom-up levels ``forward`` reads (``c2``..``c5``), finest first; the
            backbone stops after the last one (the c4 baseline never runs conv5).
        output_specs: ordered ``name -> LevelSpec`` of every map ``forward`` returns,
            finest first, log2-contiguous strides.
        rpn_levels: names the RPN slides over (one anchor size per name).
        roi_levels: names the RoI head pools from (Eqn. (1) chooses among them).
    """

    in_names: list[str]
    output_specs: OrderedDict[str, LevelSpec]
    rpn_levels: list[str]
    roi_levels: list[str]
    # A neck that runs the bottom-up network again (RFP) gets the image as a second argument.
    needs_image: bool = False

    def backbone_copies(self) -> list[nn.Module]:
        """The neck's own bottom-up ResNets (RFP's recursive passes): they start as copies of
        the detector's and load the same ImageNet / COCO backbone weights."""
        return []

    def check_contract(self, in_specs: dict[str, LevelSpec] | None = None) -> None:
        """Raise ``ValueError`` if the declarations are inconsistent (optionally also
        against the bottom-up levels ``in_specs`` the neck was built on)."""
        if not getattr(self, "in_names", None):
            raise ValueError(f"{type(self).__name__} declares no input levels (in_names)")
        if in_specs is not None:
            for name in self.in_names:
                if name not in in_specs:
                    raise ValueError(f"input level {name!r} is not produced by the bottom-up backbone")
        specs = list(self.output_specs.values())
        check_strides(specs)
        channels = {s.channels for s in specs}
        if len(channels) != 1:
            # The RPN head and the box head are shared across levels: one width for all.
            raise ValueError(f"all levels must have the same channels, got {sorted(channels)}")
        for name in [*self.rpn_levels, *self.roi_levels]:
            if name not in self.output_specs:
                raise ValueError(f"level {name!r} is used by a head but not produced by the neck")

    @property
    def out_channels(self) -> int:
        return next(iter(self.output_specs.values())).channels

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError


class StackedNeck(Neck):
    """A neck that runs ``laterals`` on its inputs, adds a coarser map max-pooled from the
    last lateral (3x3, stride 2: ``ceil(H5/2)``, as FPN's P6), then applies its repeated
    blocks in turn, each taking and giving the maps finest first (BiFPN, NAS-FPN).

    Subclasses set ``laterals`` (one per input level) and return their blocks from
    :meth:`blocks` (under their own attribute name, which the checkpoints' keys carry).
    """

    laterals: nn.ModuleList

    def blocks(self) -> nn.ModuleList:  # pragma: no cover
        raise NotImplementedError

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """``{"c2": [B, C2, H2, W2], ...}`` -> ``{"p2": [B, d, H2, W2], ..., "p6": [B, d,
        ceil(H5/2), ceil(W5/2)]}``."""
        xs = [lateral(features[n]) for lateral, n in zip(self.laterals, self.in_names)]
        xs.append(F.max_pool2d(xs[-1], kernel_size=3, stride=2, padding=1))
        for block in self.blocks():
            xs = block(xs)
        return OrderedDict(zip(self.output_specs, xs))
