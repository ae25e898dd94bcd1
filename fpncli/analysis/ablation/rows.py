"""The ablation's rows: what a row name (``neck`` or ``neck+mod[+mod...]``) trains, the row
sets ``fpn ablation`` offers, and the neck options a run's rows take."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fpncli.errors import FpnError
from fpncli.modeling.necks.registry import NECK_REGISTRY, get_neck

# The rows, in table order, come from the neck registry: the paper's single-scale
# baselines, then FPN, then the later necks; then the RoI-pooling rows ("neck+afp": that
# neck with PANet's adaptive feature pooling; "panet+afp" is the full PANet).
DEFAULT_NECKS = tuple(e.name for e in NECK_REGISTRY.values() if e.ablation)
AFP_ROWS = ("fpn+afp", "panet+afp")
# AugFPN part by part, as the paper's ablation adds each part to its FPN baseline: consistent
# supervision alone, residual feature augmentation alone, soft RoI selection alone, all three
# (the "augfpn" neck row). Leave-one-out rows are written augfpn+nocs, augfpn+norfa, augfpn+level.
AUGFPN_ROWS = ("fpn+cs", "fpn+rfa", "fpn+soft")
# DetectoRS's rows (--necks fpn,rfp,sac,rfp+sac): opt-in, the backbone runs twice or its 3x3s do.
DETECTORS_ROWS = ("rfp", "sac", "rfp+sac")
# The default run stays within its CPU budget (the paper's rows and the two later necks,
# ~23 min on 2 cores); the neck survey's rows are added with --necks (SURVEY_ROWS).
DEFAULT_ROWS = DEFAULT_NECKS
SURVEY_ROWS = (
    *DEFAULT_NECKS,
    *(e.name for e in NECK_REGISTRY.values() if not e.ablation),
    *AFP_ROWS,
    *AUGFPN_ROWS,
    *(r for r in DETECTORS_ROWS if r not in NECK_REGISTRY),
)
SINGLE_SCALE = tuple(e.name for e in NECK_REGISTRY.values() if e.single_scale)


# What a "+name" suffix of a row changes in the model config, on top of the neck. Each
# survey option that is not a neck (an RoI pooling, a backbone change) adds an entry here;
# a row is "neck" or "neck+mod[+mod...]".
ROW_MODIFIERS: dict[str, dict[str, Any]] = {
    "afp": {"roi_pooling": "afp"},
    "soft": {"roi_pooling": "soft"},
    "level": {"roi_pooling": "level"},  # e.g. augfpn+level: AugFPN without soft RoI selection
    "norfa": {"augfpn_rfa": False},
    "nocs": {"augfpn_consistent_supervision": False},
    # DetectoRS's Switchable Atrous Convolution in res3-res5 (non-deformable: the CPU budget).
    "sac": {"sac": True},
}
# Rows that name a modifier alone, and the row they stand for.
ROW_ALIASES: dict[str, str] = {
    # AugFPN's parts on their own: FPN plus one part is the augfpn neck with the others off.
    "fpn+cs": "augfpn+level+norfa",
    "fpn+rfa": "augfpn+level+nocs",
    "sac": "fpn+sac",
}


def parse_row(row: str) -> tuple[str, dict[str, Any]]:
    """A row name -> (neck, model-config overrides of its modifiers).

    ``"panet+afp"`` -> ``("panet", {"roi_pooling": "afp"})``; ``"fpn"`` -> ``("fpn", {})``.
    A bad neck or modifier, two modifiers for one setting (``fpn+afp+soft``: one RoI pooling
    would silently win), or afp on a single-scale neck, is a one-line :class:`FpnError`.
    """
    neck, *mods = ROW_ALIASES.get(row, row).split("+")
    if neck not in NECK_REGISTRY:
        raise FpnError(f"unknown neck {neck!r} in row {row!r}; choose from {', '.join(NECK_REGISTRY)}")
    overrides: dict[str, Any] = {}
    set_by: dict[str, str] = {}  # config key -> the modifier that set it
    for mod in mods:
        if mod not in ROW_MODIFIERS:
            raise FpnError(
                f"unknown modifier {mod!r} in row {row!r}; write NECK or NECK+MOD with MOD one of "
                + ", ".join(ROW_MODIFIERS)
            )
        for key, value in ROW_MODIFIERS[mod].items():
            # A row's name must say what trains: two modifiers for one setting cannot both hold.
            if key in set_by:
                what = "is given twice" if set_by[key] == mod else f"and {set_by[key]} both set {key}"
                raise FpnError(f"row {row!r}: {mod} {what}; a row takes one of them")
            set_by[key] = mod
            overrides[key] = value
    pooling = overrides.get("roi_pooling", get_neck(neck).roi_pooling)
    if pooling in ("afp", "soft") and get_neck(neck).single_scale:
        raise FpnError(f"row {row!r}: {pooling} pools from several levels; the {neck} neck has one")
    off = [m for m in mods if m in ("norfa", "nocs")]
    if off and neck != "augfpn":
        raise FpnError(f"row {row!r}: {', '.join(off)} switch off AugFPN parts; write augfpn+{off[0]}")
    return neck, overrides


def row_pooling(row: str) -> str:
    """The RoI pooling of a row: its modifier's, else the neck's own (``soft`` for augfpn)."""
    neck, overrides = parse_row(row)
    return str(overrides.get("roi_pooling", get_neck(neck).roi_pooling))


def row_neck_options(given: dict[str, Any], rows: Sequence[str]) -> dict[str, Any]:
    """The neck options of an ablation's settings: BiFPN's, NAS-FPN's and RFP's always (with
    ModelConfig's defaults, so that results saved before an option existed still match),
    any other only when given. Each given one must be valid and belong to some row's neck."""
    from fpncli.config import ModelConfig
    from fpncli.modeling.necks.registry import neck_options

    defaults = ModelConfig()
    by_field = {o.field: o for o in neck_options()}
    row_necks = {parse_row(r)[0] for r in rows}
    for name, value in given.items():
        option = by_field.get(name)
        if option is None:
            raise FpnError(f"{name}: not a neck option")
        try:
            option.check(value)
        except FpnError as exc:
            raise FpnError(f"{option.cli_flag}: {exc}") from None
        if option.neck not in row_necks:
            raise FpnError(f"{option.cli_flag}: no row has the {option.neck} neck, so it would do nothing")
    legacy = ("bifpn_repeats", "nasfpn_stacks", "nasfpn_norm", "rfp_steps")
    return {**{k: getattr(defaults, k) for k in legacy}, **given}


def split_seeds(row: str, default: int = 1) -> tuple[str, int]:
    """``"fpn@3"`` -> ``("fpn", 3)``: the row and how many seeds it runs with (``default``,
    the run's ``--seeds``, without a suffix)."""
    name, at, count = row.partition("@")
    if not at:
        return row, default
    if not count.isdigit() or int(count) < 1:
        raise FpnError(f"row {row!r}: write ROW@N with N a whole number of seeds, 1 or more")
    return name, int(count)
