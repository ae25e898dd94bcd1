"""The one list of necks: name -> builder and what the neck is.

Everything that needs to know which necks exist reads this table: the config check
(:meth:`fpncli.config.ModelConfig.validate`), the CLI's help and choices, ``fpn info`` and
``fpn ablation``. Adding a neck is one entry here plus its module.

The table imports no torch: builders import their module when called, so ``fpn --help``
and config checks stay fast.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fpncli.errors import FpnError
from fpncli.modeling.options import ModelOption, at_least

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.config import ModelConfig
    from fpncli.modeling.levels import LevelSpec
    from fpncli.modeling.necks.base import Neck

Builder = Callable[["dict[str, LevelSpec]", "ModelConfig"], "Neck"]
# NAS-FPN's merging-cell normalisation: the paper's BatchNorm, GroupNorm (fpncli's default:
# batches of 2-4 images), BatchNorm with frozen statistics (fine-tuning a bn-trained neck), none.
NASFPN_NORMS = ("gn", "bn", "frozen_bn", "none")


@dataclass(frozen=True)
class NeckEntry:
    """One registered neck.

    Attributes:
        name: the ``--neck`` value, stored in every config and checkpoint.
        build: ``build(bottom-up specs c2..c5, model config) -> Neck``.
        summary: one line for ``--help``, ``fpn info`` and the README.
        single_scale: one output map (the paper's baselines; the RPN then gets every
            anchor size on that map).
        options: the settings only this neck reads, each a ModelConfig field with its
            flag, help and rule (:class:`~fpncli.modeling.options.ModelOption`).
        ablation: part of ``fpn ablation``'s default rows.
        roi_pooling: the RoI pooling the neck is designed with, used when none is given
            (``ModelConfig.roi_pooling == "auto"``).
    """

    name: str
    build: Builder
    summary: str
    single_scale: bool = False
    options: tuple[ModelOption, ...] = ()
    ablation: bool = True
    roi_pooling: str = "level"

    def __post_init__(self) -> None:
        # Each option knows its neck: commands refuse it for another neck.
        object.__setattr__(
            self, "options", tuple(dataclasses.replace(o, neck=self.name) for o in self.options)
        )

    @property
    def option_fields(self) -> tuple[str, ...]:
        return tuple(o.field for o in self.options)


def _fpn(in_specs: dict[str, LevelSpec], cfg: ModelConfig) -> Neck:
    from fpncli.modeling.necks.fpn import FPN

    return FPN(in_specs, cfg.fpn_channels)  # type: ignore[arg-type]


def _panet(in_specs: dict[str, LevelSpec], cfg: ModelConfig) -> Neck:
    from fpncli.modeling.necks.panet import PANet

    return PANet(in_specs, cfg.fpn_channels)  # type: ignore[arg-type]


def _bifpn(in_specs: dict[str, LevelSpec], cfg: ModelConfig) -> Neck:
    from fpncli.modeling.necks.bifpn import BiFPN

    return BiFPN(in_specs, cfg.fpn_channels, repeats=cfg.bifpn_repeats)  # type: ignore[arg-type]


def _nasfpn(in_specs: dict[str, LevelSpec], cfg: ModelConfig) -> Neck:
    from fpncli.modeling.necks.nasfpn import NASFPN

    return NASFPN(in_specs, cfg.fpn_channels, stacks=cfg.nasfpn_stacks, norm=cfg.nasfpn_norm)  # type: ignore[arg-type]


def _augfpn(in_specs: dict[str, LevelSpec], cfg: ModelConfig) -> Neck:
    from fpncli.modeling.necks.augfpn import AugFPN

    return AugFPN(
        in_specs,  # type: ignore[arg-type]
        cfg.fpn_channels,
        rfa=cfg.augfpn_rfa,
        raw_laterals=cfg.consistent_supervision,
    )


def _rfp(in_specs: dict[str, LevelSpec], cfg: ModelConfig) -> Neck:
    from fpncli.modeling.backbone import bottom_up_kwargs
    from fpncli.modeling.necks.rfp import RFP, RFPBottomUp

    if cfg.fpn_channels < 4:
        raise FpnError(
            f"the rfp neck's ASPP has fpn_channels / 4 channels per branch: needs at least 4, got {cfg.fpn_channels}"
        )

    def make_bottom_up(feedback_channels: int, stages: list[str]) -> RFPBottomUp:
        return RFPBottomUp(feedback_channels, stages, **bottom_up_kwargs(cfg))

    return RFP(in_specs, cfg.fpn_channels, cfg.rfp_steps, make_bottom_up)  # type: ignore[arg-type]


def _single(level: str) -> Builder:
    def build(in_specs: dict[str, LevelSpec], cfg: ModelConfig) -> Neck:
        from fpncli.modeling.necks.single import SingleScale

        return SingleScale(in_specs, cfg.fpn_channels, level=level)  # type: ignore[arg-type]

    return build


# Table order is the ablation's row order: the paper's baselines, the paper's FPN, later necks.
NECK_REGISTRY: dict[str, NeckEntry] = {
    e.name: e
    for e in (
        NeckEntry(
            "c4", _single("c4"), "single-scale baseline on C4 (stride 16), the paper's Table 1 (a)", True
        ),
        NeckEntry(
            "c5", _single("c5"), "single-scale baseline on C5 (stride 32), the paper's Table 1 (b)", True
        ),
        NeckEntry("fpn", _fpn, "Feature Pyramid Network, P2-P6 (Lin et al. 2017), the default"),
        NeckEntry("panet", _panet, "FPN + PANet's extra bottom-up path (Liu et al. 2018)"),
        NeckEntry(
            "bifpn",
            _bifpn,
            "BiFPN: repeated weighted top-down/bottom-up blocks (Tan et al. 2020)",
            options=(ModelOption("bifpn_repeats", "BiFPN: repeated blocks.", rule=at_least(1)),),
        ),
        NeckEntry(
            "nasfpn",
            _nasfpn,
            "NAS-FPN: the searched merging-cell graph (Ghiasi et al. 2019), stacked, run on P2-P6",
            options=(
                ModelOption(
                    "nasfpn_stacks",
                    "NAS-FPN: stacked merging-cell stages; the paper stacks 7.",
                    rule=at_least(1),
                ),
                ModelOption(
                    "nasfpn_norm",
                    "NAS-FPN: norm after each cell conv: gn, bn (the paper's), frozen_bn or none.",
                    type=str,
                    choices=NASFPN_NORMS,
                ),
            ),
            # Opt-in (`--necks ...,nasfpn`): 7 stacks double the default ablation's time.
            ablation=False,
        ),
        NeckEntry(
            "augfpn",
            _augfpn,
            "AugFPN: FPN + residual feature augmentation, soft RoI selection and consistent "
            "supervision (Guo et al. 2020)",
            options=(
                ModelOption(
                    "augfpn_rfa",
                    "AugFPN: switch off residual feature augmentation (the C5 context branch).",
                    type=bool,
                    flag="--no-rfa",
                    switch_value=False,
                ),
                ModelOption(
                    "augfpn_consistent_supervision",
                    "AugFPN: switch off consistent supervision (the training-only auxiliary head on "
                    "the raw laterals).",
                    type=bool,
                    flag="--no-consistent-supervision",
                    switch_value=False,
                ),
                ModelOption(
                    "augfpn_cs_alpha",
                    "AugFPN: weight of consistent supervision's auxiliary losses, as in the paper.",
                    type=float,
                    rule=(
                        lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
                        "be a positive number (turn the auxiliary losses off with --no-consistent-supervision)",
                    ),
                ),
            ),
            # Opt-in like nasfpn: its rows (augfpn and its parts) are the survey's, via --necks.
            ablation=False,
            roi_pooling="soft",
        ),
        NeckEntry(
            "rfp",
            _rfp,
            "DetectoRS's Recursive Feature Pyramid: FPN fed back (ASPP) into a second bottom-up "
            "pass from the image, gated fusion (Qiao et al. 2021)",
            options=(
                ModelOption(
                    "rfp_steps",
                    "RFP: bottom-up + FPN passes, each after the first with its own ResNet; the paper's is 2.",
                    rule=at_least(2, "the first pass is the plain FPN"),
                ),
            ),
            # Opt-in (`--necks ...,rfp`): the backbone runs twice.
            ablation=False,
        ),
    )
}


def neck_names() -> list[str]:
    """Every registered neck, in table order."""
    return list(NECK_REGISTRY)


def neck_options() -> list[ModelOption]:
    """Every neck's own options, in table order."""
    return [o for entry in NECK_REGISTRY.values() for o in entry.options]


def get_neck(name: str) -> NeckEntry:
    """The entry called ``name``; one-line :class:`FpnError` naming the choices otherwise."""
    try:
        return NECK_REGISTRY[name]
    except KeyError:
        raise FpnError(f"unknown neck {name!r}; choose one of {', '.join(NECK_REGISTRY)}") from None


def build_neck(name: str, in_specs: dict[str, LevelSpec], cfg: ModelConfig, **overrides: Any) -> Neck:
    """Build the neck ``name`` over bottom-up levels ``in_specs`` (``c2``..``c5``) for ``cfg``."""
    entry = get_neck(name)
    neck = entry.build(in_specs, cfg.replace(**overrides) if overrides else cfg)
    neck.check_contract(in_specs)
    return neck
