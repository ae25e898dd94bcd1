"""Necks: modules that turn bottom-up maps C2..C5 into the maps the heads use.

Every neck follows one contract (:class:`Neck`): it declares its output levels
(name, channels, stride) and which of them the RPN and the RoI head use. Anchor
strides and RoI pooling scales are read from these declarations, never inferred.
"""

from __future__ import annotations

from fpncli.modeling.necks.base import Neck
from fpncli.modeling.necks.fpn import FPN

__all__ = ["Neck", "FPN", "build_neck"]


def build_neck(name: str, in_specs: dict, channels: int, **kwargs) -> Neck:
    """Build the neck called ``name`` over bottom-up levels ``in_specs`` (``c2``..``c5``)."""
    if name == "fpn":
        return FPN(in_specs, channels)
    raise ValueError(f"unknown neck {name!r}")
