"""Necks: modules that turn bottom-up maps C2..C5 into the maps the heads use.

Every neck follows one contract (:class:`Neck`): it declares its output levels
(name, channels, stride) and which of them the RPN and the RoI head use. Anchor
strides and RoI pooling scales are read from these declarations, never inferred.
"""

from __future__ import annotations

from fpncli.errors import FpnError
from fpncli.modeling.necks.base import Neck
from fpncli.modeling.necks.bifpn import BiFPN
from fpncli.modeling.necks.fpn import FPN
from fpncli.modeling.necks.panet import PANet
from fpncli.modeling.necks.single import SingleScale

__all__ = ["FPN", "BiFPN", "Neck", "PANet", "SingleScale", "build_neck"]


def build_neck(name: str, in_specs: dict, channels: int, repeats: int = 2, **kwargs) -> Neck:
    """Build the neck called ``name`` over bottom-up levels ``in_specs`` (``c2``..``c5``).

    Names (``fpncli.config.NECKS``): ``fpn`` (the paper), ``panet`` (FPN + extra bottom-up
    path), ``bifpn`` (``repeats`` weighted top-down/bottom-up blocks), ``c4`` / ``c5`` (the
    paper's single-scale baselines). ``repeats`` is used by ``bifpn`` only.
    """
    if name == "fpn":
        return FPN(in_specs, channels)
    if name == "panet":
        return PANet(in_specs, channels)
    if name == "bifpn":
        if repeats < 1:
            raise FpnError(f"bifpn_repeats must be at least 1, got {repeats}")
        return BiFPN(in_specs, channels, repeats=repeats)
    if name in ("c4", "c5"):
        return SingleScale(in_specs, channels, level=name)
    raise FpnError(f"unknown neck {name!r}")
