"""Necks: modules that turn bottom-up maps C2..C5 into the maps the heads use.

Every neck follows one contract (:class:`fpncli.modeling.necks.base.Neck`): it declares the
bottom-up levels it reads, its output levels (name, channels, stride) and which of them the
RPN and the RoI head use. Anchor strides and RoI pooling scales are read from these
declarations, never inferred. Which necks exist is :mod:`fpncli.modeling.necks.registry`.

Nothing is imported here (the registry is torch-free; the necks import torch).
"""
