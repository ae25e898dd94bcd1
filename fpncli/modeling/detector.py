"""The FPN Faster R-CNN, assembled from the project's backbone/neck contract and
torchvision's detection blocks (RPN, RoI heads, transform), which already implement
the paper's heads exactly."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead

from fpncli.config import ModelConfig
from fpncli.errors import FpnError
from fpncli.modeling.anchors import LevelAnchorGenerator
from fpncli.modeling.backbone import ResNetBottomUp, bottom_up_kwargs
from fpncli.modeling.box_head import AFPBoxHead
from fpncli.modeling.consistent_supervision import AuxiliaryBoxHead, ConsistentSupervisionRoIHeads
from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.necks.registry import build_neck
from fpncli.modeling.pooler import AllLevelRoIPooler, LevelRoIPooler
from fpncli.modeling.soft_roi import SoftRoISelection


class BackboneWithNeck(nn.Module):
    """Bottom-up ResNet followed by a neck; what torchvision's ``FasterRCNN`` calls its backbone.

    ``forward``: ``Tensor[B, 3, H, W]`` (normalised, padded) -> ordered
    ``{level name: Tensor[B, d, H/stride, W/stride]}`` for every level in :attr:`levels`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # cfg arrives resolved (build_model): norm and trainable_layers are set.
        self.bottom_up = ResNetBottomUp(**bottom_up_kwargs(cfg))
        self.neck = build_neck(cfg.neck, self.bottom_up.output_specs, cfg)
        self.out_channels = self.neck.out_channels  # read by torchvision's FasterRCNN
        # Exact, rather than DDP's find_unused_parameters (a graph walk every step): these
        # stages are unused in every iteration, not just in some.
        self.bottom_up.freeze_after(self.neck.in_names[-1])
        for recursive in self.neck.backbone_copies():
            # RFP's recursive ResNets start as the first one (then an untrained RFP is the FPN).
            recursive.load_state_dict(self.bottom_up.state_dict())

    @property
    def levels(self) -> OrderedDict[str, LevelSpec]:
        return self.neck.output_specs

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        # A neck that reads only some bottom-up levels (c4) lets the ResNet stop early.
        last = self.neck.in_names[-1]
        features = self.bottom_up(images, last=last)
        if self.neck.needs_image:  # RFP runs the bottom-up network again, from the image
            return self.neck(features, images)
        return self.neck(features)


class FPNFasterRCNN(FasterRCNN):
    """Faster R-CNN on a feature pyramid; carries its :class:`ModelConfig`.

    Training: ``model(images, targets)`` with images ``[Tensor[3, H, W]]`` in 0..1 and
    targets ``[{"boxes": Tensor[N, 4] xyxy pixels, "labels": Int64Tensor[N] in 1..K}]``
    returns a dict of losses. Inference: ``model(images)`` returns per image
    ``{"boxes": Tensor[M, 4] xyxy in that image's pixels, "scores": [M], "labels": [M]}``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.norm == "auto" or cfg.trainable_layers is None or cfg.roi_pooling == "auto":
            raise ValueError("FPNFasterRCNN needs a resolved config: build it with build_model()")
        backbone = BackboneWithNeck(cfg)
        levels = backbone.levels
        rpn_specs = [levels[n] for n in backbone.neck.rpn_levels]
        roi_specs = [levels[n] for n in backbone.neck.roi_levels]
        anchor_sizes = _anchor_sizes_per_level(cfg, len(rpn_specs))
        anchors = LevelAnchorGenerator(rpn_specs, anchor_sizes, cfg.aspect_ratios, grid=cfg.anchor_grid)
        channels = backbone.out_channels
        pooled = cfg.roi_output_size
        super().__init__(
            backbone,
            num_classes=None,
            min_size=cfg.min_size,
            max_size=cfg.max_size,
            image_mean=list(cfg.image_mean),
            image_std=list(cfg.image_std),
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
            rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
            rpn_nms_thresh=cfg.rpn_nms_thresh,
            rpn_fg_iou_thresh=cfg.rpn_fg_iou_thresh,
            rpn_bg_iou_thresh=cfg.rpn_bg_iou_thresh,
            rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
            rpn_positive_fraction=cfg.rpn_positive_fraction,
            box_roi_pool=_roi_pooler(cfg, roi_specs),
            box_head=_box_head(cfg, len(roi_specs), channels * pooled * pooled),
            box_predictor=FastRCNNPredictor(cfg.box_head_dim, cfg.num_classes),
            box_score_thresh=cfg.box_score_thresh,
            box_nms_thresh=cfg.box_nms_thresh,
            box_detections_per_img=cfg.box_detections_per_img,
            box_fg_iou_thresh=cfg.box_fg_iou_thresh,
            box_bg_iou_thresh=cfg.box_bg_iou_thresh,
            box_batch_size_per_image=cfg.box_batch_size_per_image,
            box_positive_fraction=cfg.box_positive_fraction,
        )
        if cfg.consistent_supervision:
            # FasterRCNN.__init__ (untyped) set roi_heads just above.
            heads: nn.Module = self.roi_heads  # type: ignore[has-type]
            self.roi_heads = _consistent_supervision_heads(cfg, heads, roi_specs, channels)
        self.config = cfg

    @property
    def norm(self) -> str:
        """The bottom-up ResNet's normalisation: ``frozen_bn``, ``bn`` or ``gn``."""
        return self.config.norm

    @property
    def levels(self) -> OrderedDict[str, LevelSpec]:
        """Every level the neck produces, finest first."""
        return self.backbone.levels

    @property
    def bottom_up_levels(self) -> OrderedDict[str, LevelSpec]:
        """The bottom-up ResNet's maps (``c2``..``c5``) that the neck reads from."""
        return self.backbone.bottom_up.output_specs

    @property
    def input_levels(self) -> list[str]:
        """The bottom-up levels the neck reads (declared by the neck)."""
        return list(self.backbone.neck.in_names)

    @property
    def rpn_levels(self) -> list[str]:
        return list(self.backbone.neck.rpn_levels)

    @property
    def roi_levels(self) -> list[str]:
        return list(self.backbone.neck.roi_levels)

    def anchor_sizes(self) -> list[tuple[int, ...]]:
        """Anchor sizes on each RPN level (same order as :attr:`rpn_levels`)."""
        return [tuple(s) for s in self.rpn.anchor_generator.sizes]

    # ------------------------------------------------------------------ inference API
    # What the engines need from the model, so that nothing outside ``modeling/`` touches
    # torchvision's internals (in the spirit of Detectron2's ``GeneralizedRCNN.inference``).

    @property
    def size_divisible(self) -> int:
        """Every batch is padded to a multiple of this (pixels)."""
        return int(self.transform.size_divisible)

    @property
    def min_size(self) -> int:
        """The shorter side at inference (pixels); training may draw from several."""
        return int(self.transform.min_size[-1])

    @property
    def max_size(self) -> int:
        return int(self.transform.max_size)

    @property
    def nms_thresh(self) -> float:
        """The per-class NMS IoU threshold of the box head (eval mode)."""
        return float(self.roi_heads.nms_thresh)

    @property
    def detections_per_img(self) -> int:
        """At most this many detections per image (eval mode)."""
        return int(self.roi_heads.detections_per_img)

    def prepare_image(self, image: Tensor, inplace: bool = False, min_size: int | None = None) -> Tensor:
        """``Tensor[3, H, W]`` float in 0..1 -> ``Tensor[3, h, w]`` normalised and resized
        exactly as ``model([image])`` would (torchvision's normalise-then-resize).

        ``inplace`` normalises in ``image`` itself (the same ``(x - mean) / std``, bit for bit),
        so a large image is held once instead of twice. ``min_size`` resizes the shorter side
        to that instead of :attr:`min_size` (the longer side's cap scales with it): test-time
        scales.
        """
        t = self.transform
        if inplace:
            mean = torch.as_tensor(t.image_mean, dtype=image.dtype, device=image.device)[:, None, None]
            std = torch.as_tensor(t.image_std, dtype=image.dtype, device=image.device)[:, None, None]
            normalized = image.sub_(mean).div_(std)
        else:
            normalized = t.normalize(image)
        if min_size is None or min_size == self.min_size:
            return t.resize(normalized, None)[0]
        saved = t.min_size, t.max_size
        t.min_size, t.max_size = (int(min_size),), round(self.max_size * min_size / self.min_size)
        try:
            return t.resize(normalized, None)[0]
        finally:
            t.min_size, t.max_size = saved

    def size_problem(self, width: int, height: int) -> str | None:
        """Why an image of ``width`` x ``height`` px cannot pass through the model at its
        input sizes (e.g. 3000x1 px), or None when it can."""
        from fpncli.data.images import model_size_problem

        return model_size_problem(width, height, self.min_size, self.max_size)

    def padded_size(self, prepared: Tensor) -> tuple[int, int]:
        """(h, w) that a prepared image is padded to in a batch of its own."""
        d = self.size_divisible
        h, w = int(prepared.shape[-2]), int(prepared.shape[-1])
        return (-(-h // d) * d, -(-w // d) * d)

    def batch(self, prepared: list[Tensor]) -> ImageList:
        """Pad prepared images into one ``ImageList`` (``tensors``: ``[B, 3, Hp, Wp]``)."""
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in prepared]
        return ImageList(self.transform.batch_images(prepared, size_divisible=self.size_divisible), sizes)

    def detect_prepared(
        self, prepared: list[Tensor], original_sizes: list[tuple[int, int]], half: bool = False
    ) -> list[dict[str, Tensor]]:
        """``GeneralizedRCNN.forward`` (eval mode) for images already through :meth:`prepare_image`.

        Args:
            prepared: ``[Tensor[3, h, w]]`` on the model's device.
            original_sizes: ``(H, W)`` of each image before resizing; boxes come back in it.
            half: float16 autocast (CUDA only).

        Returns:
            Per image ``{"boxes": Tensor[M, 4] xyxy original pixels, "scores": [M], "labels": [M]}``.
        """
        image_list = self.batch(prepared)
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.float16) if half else contextlib.nullcontext()
        )
        with autocast:
            if getattr(self, "record_levels", False):  # fpn eval --analyze (see level_record.py)
                from fpncli.modeling.level_record import detect_with_levels

                return detect_with_levels(self, image_list, list(original_sizes))
            features = self.backbone(image_list.tensors)
            proposals, _ = self.rpn(image_list, features)
            detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, list(original_sizes))

    def propose(self, images: list[Tensor]) -> list[Tensor]:
        """The RPN's proposals (eval mode, current limits) for ``[Tensor[3, H, W]]`` in 0..1.

        Returns per image ``Tensor[N, 4]`` xyxy in that image's pixels, best first.
        """
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = self.transform(list(images))
        features = self.backbone(image_list.tensors)
        proposals, _ = self.rpn(image_list, features)
        # postprocess rescales "boxes" from the resized input back to each image.
        out = self.transform.postprocess([{"boxes": p} for p in proposals], image_list.image_sizes, sizes)
        return [o["boxes"] for o in out]

    @contextlib.contextmanager
    def inference_limits(
        self,
        *,
        rpn_pre_nms_top_n: int | None = None,
        rpn_post_nms_top_n: int | None = None,
        detections_per_img: int | None = None,
        score_thresh: float | None = None,
    ) -> Iterator[None]:
        """Temporarily change the eval-mode limits: the RPN's top-n before NMS (per level)
        and after it (per image), the detections kept per image and their score threshold
        (kept when ``score > score_thresh``). ``None`` keeps a value."""
        rpn, heads = self.rpn, self.roi_heads
        saved = (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], heads.detections_per_img)
        saved_thresh = heads.score_thresh
        if score_thresh is not None:
            heads.score_thresh = score_thresh
        if rpn_pre_nms_top_n is not None:
            rpn._pre_nms_top_n["testing"] = rpn_pre_nms_top_n
        if rpn_post_nms_top_n is not None:
            rpn._post_nms_top_n["testing"] = rpn_post_nms_top_n
        if detections_per_img is not None:
            heads.detections_per_img = detections_per_img
        try:
            yield
        finally:
            rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], heads.detections_per_img = saved
            heads.score_thresh = saved_thresh

    def set_detections_per_img(self, n: int) -> None:
        """Keep at most ``n`` detections per image from now on (eval mode)."""
        self.roi_heads.detections_per_img = int(n)

    def set_train_sizes(self, sizes: tuple[int, ...]) -> None:
        """Shorter sides to draw from per batch in training mode (torchvision draws one per
        batch with the torch RNG, so it is seeded and resumable); inference keeps the last."""
        self.transform.min_size = tuple(int(s) for s in sizes)

    def load_all_but_box_predictor(self, other: FPNFasterRCNN) -> None:
        """Copy every weight of ``other`` (same architecture) except the box predictors (the
        main one and AugFPN's auxiliary one), whose shapes depend on the classes: fine-tuning
        on another label set."""
        predictors = ("roi_heads.box_predictor.", "roi_heads.aux_head.box_predictor.")
        own = {k: v for k, v in self.state_dict().items() if k.startswith(predictors)}
        state = {k: v for k, v in other.state_dict().items() if not k.startswith(predictors)}
        state.update(own)
        self.load_state_dict(state)

    def backbone_copy_prefixes(self) -> list[str]:
        """State-dict prefixes of the neck's own bottom-up ResNets (RFP's recursive passes),
        which mirror ``backbone.bottom_up.``; empty for other necks."""
        names = {id(m): name for name, m in self.named_modules()}
        return [names[id(m)] + "." for m in self.backbone.neck.backbone_copies()]

    def parts(self) -> dict[str, nn.Module]:
        """The model's parts by role, for ``fpn info``'s parameter counts (the parts that run
        at inference; see :meth:`training_only_parts`; a module listed under an earlier part
        is not counted again in a later one)."""
        copies = self.backbone.neck.backbone_copies()
        parts = {
            "bottom-up": self.backbone.bottom_up,
            **({"bottom-up, RFP passes": nn.ModuleList(copies)} if copies else {}),
            "neck": self.backbone.neck,
            "RPN head": self.rpn,
        }
        if any(True for _ in self.roi_heads.box_roi_pool.parameters()):
            parts["RoI pooling"] = self.roi_heads.box_roi_pool  # soft RoI selection's attention
        parts["box head"] = self.roi_heads.box_head
        parts["box predictor"] = self.roi_heads.box_predictor
        return parts

    def training_only_parts(self) -> dict[str, nn.Module]:
        """Modules that only training runs (AugFPN's auxiliary head); empty for an
        inference-only model."""
        aux = getattr(self.roi_heads, "aux_head", None)
        return {"auxiliary box head": aux} if aux is not None else {}

    def training_only_parameters(self) -> dict[str, int]:
        """Parameters of each training-only module the configuration trains, counted on a
        freshly built copy when this (inference-only) model has dropped them."""
        parts = self.training_only_parts()
        if not parts and self.config.consistent_supervision:
            specs = [self.levels[n] for n in self.roi_levels]
            parts = {"auxiliary box head": _auxiliary_head(self.config, specs, self.backbone.out_channels)}
        return {name: count_parameters(module) for name, module in parts.items()}

    def drop_training_only(self) -> FPNFasterRCNN:
        """Remove the training-only modules (their weights leave ``state_dict()`` too): what
        inference and exported models carry. Training such a model runs without them."""
        if getattr(self.roi_heads, "aux_head", None) is not None:
            self.roi_heads.aux_head = None
        return self

    def training_only_keys(self, state_dict: dict[str, Tensor]) -> list[str]:
        """The names in ``state_dict`` that belong to training-only modules of this
        architecture (whether or not this model still has them)."""
        if not self.config.consistent_supervision:
            return []
        return [k for k in state_dict if k.startswith("roi_heads.aux_head.")]

    def rfp_steps(self, images: Tensor) -> Any:
        """For an ``rfp`` model: every step of its neck (an
        :class:`~fpncli.modeling.necks.rfp.RFPSteps`: each pass's pyramid, the gates, the fused
        pyramids) for a normalised, padded batch ``Tensor[B, 3, H, W]`` (``ImageList.tensors``)."""
        neck = self.backbone.neck
        if not hasattr(neck, "run"):
            raise ValueError("rfp_steps needs a model with --neck rfp")
        return neck.run(self.backbone.bottom_up(images), images)


def _roi_pooler(cfg: ModelConfig, roi_specs: list[LevelSpec]) -> LevelRoIPooler:
    """Eqn. (1)'s one level per RoI (``level``), every level per RoI (``afp``), or every level
    fused by AugFPN's soft RoI selection (``soft``)."""
    if cfg.roi_pooling == "soft":
        return SoftRoISelection(
            roi_specs, roi_specs[0].channels, cfg.roi_output_size, cfg.roi_sampling_ratio, cfg.roi_aligned
        )
    kind = AllLevelRoIPooler if cfg.roi_pooling == "afp" else LevelRoIPooler
    return kind(roi_specs, cfg.roi_output_size, cfg.roi_sampling_ratio, cfg.roi_aligned)


def _consistent_supervision_heads(
    cfg: ModelConfig, heads: nn.Module, roi_specs: list[LevelSpec], channels: int
) -> ConsistentSupervisionRoIHeads:
    """torchvision's RoI heads as ``FasterRCNN`` built them, plus AugFPN's auxiliary head."""
    return ConsistentSupervisionRoIHeads(
        heads.box_roi_pool,
        heads.box_head,
        heads.box_predictor,
        cfg.box_fg_iou_thresh,
        cfg.box_bg_iou_thresh,
        cfg.box_batch_size_per_image,
        cfg.box_positive_fraction,
        None,  # torchvision's default box coder weights (10, 10, 5, 5), as FasterRCNN's
        cfg.box_score_thresh,
        cfg.box_nms_thresh,
        cfg.box_detections_per_img,
        aux_head=_auxiliary_head(cfg, roi_specs, channels),
    )


def _auxiliary_head(cfg: ModelConfig, roi_specs: list[LevelSpec], channels: int) -> AuxiliaryBoxHead:
    pooled = cfg.roi_output_size
    return AuxiliaryBoxHead(
        roi_specs,
        channels * pooled * pooled,
        cfg.box_head_dim,
        cfg.num_classes,
        alpha=cfg.augfpn_cs_alpha,
        output_size=pooled,
        sampling_ratio=cfg.roi_sampling_ratio,
        aligned=cfg.roi_aligned,
    )


def _box_head(cfg: ModelConfig, num_levels: int, in_features: int) -> nn.Module:
    """torchvision's 2-FC head, or PANet's with a per-level fc6 and max fusion (``afp``)."""
    if cfg.roi_pooling == "afp":
        return AFPBoxHead(num_levels, in_features, cfg.box_head_dim)
    return TwoMLPHead(in_features, cfg.box_head_dim)


def _anchor_sizes_per_level(cfg: ModelConfig, num_levels: int) -> list[tuple[int, ...]]:
    """One anchor size per level (the paper); a single-level neck gets all sizes on its map."""
    sizes = tuple(cfg.anchor_sizes)
    if num_levels == 1:
        return [sizes]
    if len(sizes) != num_levels:
        raise FpnError(
            f"{len(sizes)} anchor sizes given for {num_levels} RPN levels; the {cfg.neck} neck "
            f"needs one size per level"
        )
    return [(s,) for s in sizes]


def build_model(cfg: ModelConfig, pretrained_backbone: bool = False) -> FPNFasterRCNN:
    """Build an untrained detector for ``cfg`` (weights are loaded by :mod:`fpncli.modeling.weights`)."""
    cfg.validate()
    # Resolved once, here: the model's config (saved in every checkpoint and run folder)
    # then says which normalisation and trainable stages the modules really have.
    cfg = cfg.replace(
        norm=cfg.resolved_norm(pretrained_backbone),
        trainable_layers=cfg.resolved_trainable_layers(pretrained_backbone),
        roi_pooling=cfg.resolved_roi_pooling(),
    )
    return FPNFasterRCNN(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
