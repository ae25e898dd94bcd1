"""Model configuration: one dataclass, saved in every checkpoint and run folder.

Defaults are the paper's R50-FPN (see ../shared/docs/PAPER.md) with torchvision's
inference settings; `PRESETS` holds named overrides (``tiny`` trains on a CPU in minutes).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from fpncli.errors import FpnError
from fpncli.modeling.necks.registry import NASFPN_NORMS, get_neck, neck_names, neck_options
from fpncli.modeling.options import ModelOption, owned_elsewhere

# Every registered neck (fpncli.modeling.necks.registry), kept here for importers.
NECKS = tuple(neck_names())

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("auto", "frozen_bn", "bn", "gn")
ANCHOR_GRIDS = ("stride", "torchvision")  # see ModelConfig.anchor_grid
# NAS-FPN's merging-cell norms live with the neck (registry); kept here for importers.
__all__ = ["FIELD_DEFAULTS", "NASFPN_NORMS", "ModelConfig", "architecture_options", "preset_config"]
# How a RoI is pooled: "level" (FPN's Eqn. (1): one level per RoI) or "afp" (PANet's adaptive
# feature pooling: every RoI level, fused by element-wise max after a per-level fc6).
# "soft": AugFPN's soft RoI selection (every RoI level, weighted by learned per-level spatial
# attention, summed). ModelConfig.roi_pooling may also be "auto": the neck's own choice
# (NeckEntry.roi_pooling: soft for augfpn, level for the others), resolved by build_model.
ROI_POOLINGS = ("level", "afp", "soft")

# Bottom-up stages that can carry Switchable Atrous Convolution (c2..c5; the reference: 3, 4, 5).
SAC_STAGES = (2, 3, 4, 5)

# torchvision's ImageNet statistics, which its pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _sac_stages(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise FpnError(f"--sac-stages: expected comma-separated stages like 3,4,5, got {text!r}") from None


# The architecture settings every neck shares; each neck's own are in its registry entry.
GENERAL_OPTIONS: tuple[ModelOption, ...] = (
    ModelOption(
        "backbone",
        "Bottom-up ResNet: resnet18, resnet34, resnet50 or resnet101 (default: the preset's).",
        type=str,
        choices=BACKBONES,
    ),
    ModelOption("neck", f"Neck: {', '.join(NECKS)} (default: the preset's, fpn).", type=str, choices=NECKS),
    ModelOption(
        "roi_pooling",
        "RoI pooling: level (FPN's Eqn. (1), the default), afp (PANet's adaptive feature pooling: "
        "every RoI from every level, per-level fc6, element-wise max) or soft (AugFPN's soft RoI "
        "selection: every level weighted by learned spatial attention, the default with --neck augfpn).",
        type=str,
        choices=("auto", *ROI_POOLINGS),
    ),
    ModelOption("fpn_channels", "Channels d of every pyramid level (default: the preset's)."),
    ModelOption(
        "sac",
        "DetectoRS's Switchable Atrous Convolution: every 3x3 conv of the --sac-stages ResNet stages "
        "switches per position between dilation 1 and 3 (starts equal to the plain conv).",
        type=bool,
    ),
    ModelOption(
        "sac_deform",
        "SAC with deformable convolutions (the reference's; implies --sac).",
        type=bool,
        also=(("sac", True),),
    ),
    ModelOption(
        "sac_stages",
        "SAC: comma-separated ResNet stages among 2..5 (c2..c5; default 3,4,5, the reference's).",
        type=str,
        parse=_sac_stages,
        requires=("sac", "chooses where SAC goes: add --sac (or --sac-deform)"),
    ),
)


def architecture_options() -> list[ModelOption]:
    """Every architecture option: the shared ones, then each neck's, in registry order."""
    return [*GENERAL_OPTIONS, *neck_options()]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a detector (not its weights).

    Class labels: the model predicts contiguous labels ``1..len(class_names)`` (0 is
    background); label ``i`` is dataset category ``category_ids[i - 1]`` named
    ``class_names[i - 1]``.
    """

    backbone: str = "resnet50"
    neck: str = "fpn"
    # "auto" resolves to frozen_bn when the backbone starts from pretrained weights (the
    # paper freezes BN: batches of 2 images give useless statistics) and to bn when it is
    # trained from scratch (frozen random statistics cannot learn).
    norm: str = "auto"
    # How many ResNet stages (counted from the top, 0..5) are trained. None resolves to 3
    # with a pretrained backbone (torchvision's choice) and 5 from scratch (random lower
    # stages must learn too).
    trainable_layers: int | None = None
    # FrozenBatchNorm2d's eps: torchvision's default 1e-5, but its builder sets 0.0 for the
    # COCO_V1 detector weights (`overwrite_eps`: they were trained when FrozenBN had none).
    frozen_bn_eps: float = 1e-5
    fpn_channels: int = 256  # the paper's d
    bifpn_repeats: int = 2
    nasfpn_stacks: int = 7  # the paper's (and MMDetection's) stack count
    nasfpn_norm: str = "gn"
    # AugFPN's parts (neck augfpn only): residual feature augmentation on C5, and consistent
    # supervision (a training-only auxiliary box head on the raw laterals, each level's
    # losses times alpha). Soft RoI selection is roi_pooling "soft".
    augfpn_rfa: bool = True
    augfpn_consistent_supervision: bool = True
    augfpn_cs_alpha: float = 0.25
    # DetectoRS. Recursive Feature Pyramid (--neck rfp): bottom-up + FPN passes, the
    # paper's 2 = one extra pass. Switchable Atrous Convolution in the bottom-up ResNet: the
    # stages (c2..c5 = 2..5) whose 3x3 convs it replaces (the reference's res3-res5), and its
    # deformable variant (the reference's use_deform). Files without these fields had neither.
    rfp_steps: int = 2
    sac: bool = False
    sac_stages: tuple[int, ...] = (3, 4, 5)
    sac_deform: bool = False
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    # Input resizing (shorter side to min_size, longer capped at max_size) and normalisation.
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # RPN: one anchor size per pyramid level (P2..P6), the paper's three aspect ratios (h/w).
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # Where anchors sit on each level. "stride": every multiple of the level's true stride
    # (the paper's; P6 is 64 px, whatever the image size). "torchvision": every multiple of
    # padded_batch_size // feature_size, as torchvision's AnchorGenerator does; equal to the
    # stride except where a map has an odd size (P6 of most photos at 800 px: 61-62 px, not 64),
    # so weights trained by torchvision need it to give torchvision's detections. Files
    # without the field were made when fpncli always used "stride".
    anchor_grid: str = "stride"
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    # Box head: RoIAlign 7x7, two FC layers of box_head_dim, classifier + regressor.
    roi_pooling: str = "auto"
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    # torchvision's (and the COCO_V1 weights') RoIAlign has aligned=False; Detectron2 uses
    # True. Kept False by default so official weights give their published AP.
    roi_aligned: bool = False
    box_head_dim: int = 1024
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100

    @property
    def num_classes(self) -> int:
        """Classifier outputs, background included."""
        return len(self.class_names) + 1

    def resolved_norm(self, pretrained_backbone: bool) -> str:
        if self.norm != "auto":
            return self.norm
        return "frozen_bn" if pretrained_backbone else "bn"

    def resolved_trainable_layers(self, pretrained_backbone: bool) -> int:
        if self.trainable_layers is not None:
            return self.trainable_layers
        return 3 if pretrained_backbone else 5

    def resolved_roi_pooling(self) -> str:
        """``roi_pooling`` with ``auto`` replaced by the neck's own RoI pooling."""
        if self.roi_pooling != "auto":
            return self.roi_pooling
        return get_neck(self.neck).roi_pooling

    def validate(self) -> ModelConfig:
        if self.backbone not in BACKBONES:
            raise FpnError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        get_neck(self.neck)  # one-line error naming the registered necks
        if self.norm not in NORMS:
            raise FpnError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.anchor_grid not in ANCHOR_GRIDS:
            raise FpnError(
                f"unknown anchor grid {self.anchor_grid!r}; choose one of {', '.join(ANCHOR_GRIDS)}"
            )
        if not self.frozen_bn_eps >= 0:
            raise FpnError(f"frozen_bn_eps must be >= 0, got {self.frozen_bn_eps}")
        for option in neck_options():  # each neck's rules, declared with the neck
            option.check(getattr(self, option.field))
        # Another neck's setting away from its default would do nothing: refuse it.
        changed = {
            o.field: getattr(self, o.field)
            for o in neck_options()
            if getattr(self, o.field) != FIELD_DEFAULTS[o.field]
        }
        foreign = owned_elsewhere(changed, neck_options(), self.neck)
        if foreign is not None:
            raise FpnError(foreign)
        if self.sac_deform and not self.sac:
            raise FpnError("sac_deform is SAC's deformable variant: it needs sac (--sac)")
        if self.sac:
            stages = list(self.sac_stages)
            if not stages or any(isinstance(k, bool) or k not in SAC_STAGES for k in stages):
                raise FpnError(
                    f"sac_stages must be ResNet stages among {', '.join(map(str, SAC_STAGES))} "
                    f"(c2..c5), got {stages}"
                )
            if len(set(stages)) != len(stages):
                raise FpnError(f"sac_stages lists a stage twice: {stages}")
        if self.roi_pooling not in ("auto", *ROI_POOLINGS):
            raise FpnError(
                f"unknown roi_pooling {self.roi_pooling!r}; choose one of {', '.join(ROI_POOLINGS)}"
            )
        pooling = self.resolved_roi_pooling()
        if pooling in ("afp", "soft") and get_neck(self.neck).single_scale:
            raise FpnError(f"--roi-pooling {pooling} pools from several levels; the {self.neck} neck has one")
        if not self.class_names:
            raise FpnError("the model needs at least one class")
        if len(self.category_ids) != len(self.class_names):
            raise FpnError(f"{len(self.class_names)} class names but {len(self.category_ids)} category ids")
        for name, value in (
            ("fpn_channels", self.fpn_channels),
            ("box_head_dim", self.box_head_dim),
            ("min_size", self.min_size),
            ("max_size", self.max_size),
        ):
            if value <= 0:
                raise FpnError(f"{name} must be positive, got {value}")
        if self.min_size > self.max_size:
            raise FpnError(f"min_size {self.min_size} is larger than max_size {self.max_size}")
        for name, values in (("anchor_sizes", self.anchor_sizes), ("aspect_ratios", self.aspect_ratios)):
            # nan/inf would be accepted by every comparison below and break the anchors silently.
            if not values or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
                for v in values
            ):
                raise FpnError(f"{name} must be positive finite numbers, got {list(values)}")
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= 5:
            raise FpnError(f"trainable_layers must be in 0..5, got {self.trainable_layers}")
        return self

    @property
    def consistent_supervision(self) -> bool:
        """Whether the model trains an auxiliary box head on the raw laterals (AugFPN)."""
        return self.neck == "augfpn" and bool(self.augfpn_consistent_supervision)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); also safe for ``torch.load(weights_only=True)``."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a newer or foreign file)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise FpnError(f"unknown model configuration keys: {', '.join(unknown)}")
        values = {}
        # Files without the field were written when every neck pooled RoIs by Eqn. (1).
        data = {"roi_pooling": "level", **data}
        for key, value in data.items():
            if isinstance(value, list) and known[key].type.startswith("tuple"):
                value = tuple(value)
            values[key] = value
        return cls(**values)

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with the given fields changed; ``None`` values are ignored (CLI defaults)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


# Each field's default (fields with a default factory are left out).
FIELD_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(ModelConfig) if f.default is not dataclasses.MISSING
}


def model_overrides(given: dict[str, Any], config: ModelConfig) -> ModelConfig:
    """``config`` with the architecture options a user gave (field -> value, as
    :func:`fpncli.cli.params` collects them), checked as a whole.

    Raises:
        FpnError: a neck's option given for another neck (e.g. ``--rfp-steps`` with
            ``--neck fpn``: it would do nothing), or any rule of :meth:`ModelConfig.validate`.
    """
    updated = config.replace(**given)
    foreign = owned_elsewhere(given, neck_options(), updated.neck)
    if foreign is not None:
        raise FpnError(foreign)
    return updated.validate()


# Named configurations. `tiny` is a CPU-sized FPN for learning from scratch on small
# synthetic images: narrow neck and head, 256 px inputs, anchors one octave smaller than
# the paper's (objects here go down to ~8 px), fewer sampled anchors and RoIs.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny": {
        "backbone": "resnet18",
        "fpn_channels": 64,
        "box_head_dim": 256,
        "min_size": 256,
        "max_size": 384,
        "anchor_sizes": (16, 32, 64, 128, 256),
        "rpn_pre_nms_top_n_train": 600,
        "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 150,
        "rpn_batch_size_per_image": 128,
        "box_batch_size_per_image": 128,
    },
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The preset's configuration with explicit (non-None) overrides applied."""
    if name not in PRESETS:
        raise FpnError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**PRESETS[name]).replace(**overrides)
