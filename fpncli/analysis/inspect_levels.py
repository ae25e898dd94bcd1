"""`fpn inspect-levels` as two plain functions, one per mode, for the CLI and for Python:
:func:`run_inspect_image` (what each level sees in one image) and :func:`run_anchor_fit`
(whether a dataset's boxes fit the pyramid's anchors). Each checks its outputs before any
work, builds or reads the model configuration, runs the analysis and writes the report and
pictures when an output folder is given; the analyses themselves are
:mod:`fpncli.analysis.inspect_image` and :mod:`fpncli.analysis.anchor_fit`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpncli.atomic import write_json
from fpncli.errors import FpnError
from fpncli.outputs import check_outputs
from fpncli.runtime.events import ProgressFn

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.analysis.anchor_fit import AnchorFitReport
    from fpncli.analysis.inspect_image import ImageInspection
    from fpncli.config import ModelConfig

IMAGE_FILES = (
    "levels.json",
    "pyramid.png",
    "detections.png",
    "bottom_up_vs_top_down.png",
    "afp_levels.png",
    "soft_levels.png",
    "rfp_steps.png",
)
DATASET_FILES = ("dataset_levels.json", "box_sizes.png", "coverage.png")


@dataclass
class InspectOptions:
    """The model to inspect and the settings that may differ from its stored ones.

    ``weights``: ``coco``, ``none`` (then ``preset``, ``neck``, ``num_classes`` and
    ``backbone_weights`` build it) or a checkpoint / torchvision state-dict path.
    ``anchor_sizes`` / ``aspect_ratios`` / ``min_size`` / ``max_size``: ``None`` keeps the model's.
    """

    weights: str = "none"
    preset: str = "default"
    # Architecture options for --weights none (ModelConfig field -> value: neck, RoI pooling,
    # the neck's own options, SAC ...), as the user gave them.
    model: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 80
    backbone_weights: str = "none"
    device: str = "auto"
    min_size: int | None = None
    max_size: int | None = None
    anchor_sizes: tuple[int, ...] | None = None
    aspect_ratios: tuple[float, ...] | None = None
    score_thr: float = 0.5
    bottom_up: bool = False
    out: Path | None = None

    def preset_config(self, num_classes: int) -> ModelConfig:
        from fpncli.config import model_overrides, preset_config

        names = [f"class_{i}" for i in range(1, num_classes + 1)]
        base = preset_config(self.preset, class_names=names, category_ids=list(range(1, num_classes + 1)))
        return model_overrides(self.model, base)

    def weights_input(self) -> str | None:
        return self.weights if self.weights not in ("coco", "none") else None


def run_inspect_image(
    image: str | os.PathLike, options: InspectOptions, progress: ProgressFn | None = None
) -> tuple[ImageInspection, list[Path]]:
    """Inspect one image; returns the report and the files written into ``options.out``."""
    image = Path(image)
    out = options.out
    if out is not None:
        # Heat maps are named after the levels: an input called heatmap_*.png is protected too.
        names = [*IMAGE_FILES, *([image.name] if image.name.startswith("heatmap_") else [])]
        check_outputs(folders=[out], files=[out / n for n in names], inputs=[image, options.weights_input()])
    import torch

    from fpncli.analysis.inspect_image import inspect_image
    from fpncli.device import resolve_device
    from fpncli.modeling.weights import load_detector

    device = resolve_device(options.device)
    cfg = options.preset_config(options.num_classes)
    overrides: dict[str, Any] = {
        "min_size": options.min_size,
        "max_size": options.max_size,
        "anchor_sizes": options.anchor_sizes,
        "aspect_ratios": options.aspect_ratios,
        "box_score_thresh": min(options.score_thr, cfg.box_score_thresh),
    }
    if options.weights == "none":
        torch.manual_seed(0)  # a random model gives the same pictures on every run
    try:
        loaded = load_detector(
            options.weights, config=cfg, backbone_weights=options.backbone_weights, **overrides
        )
    except ValueError as exc:  # e.g. --anchor-sizes that do not match the number of RPN levels
        raise FpnError(f"bad model configuration: {exc}") from None
    report = inspect_image(
        loaded.model,
        image,
        device=device,
        score_thr=options.score_thr,
        bottom_up=options.bottom_up,
        weights=loaded.source,
        progress=progress,
    )
    written: list[Path] = []
    if out is not None:
        from fpncli.viz.levels import save_image_figures

        write_json(out / "levels.json", report.to_json())
        written = [out / "levels.json", *save_image_figures(report, out)]
    return report, written


def run_anchor_fit(
    annotations: str | os.PathLike, options: InspectOptions, progress: ProgressFn | None = None
) -> tuple[AnchorFitReport, list[Path]]:
    """Check every box of a COCO annotation file against the anchors and levels of the
    model ``options`` describes (no weights are loaded); returns the report and the files
    written into ``options.out``."""
    out = options.out
    if out is not None:
        check_outputs(
            folders=[out],
            files=[out / n for n in DATASET_FILES],
            inputs=[annotations, options.weights_input()],
        )
    from fpncli.analysis.anchor_fit import inspect_dataset
    from fpncli.modeling.weights import weights_config

    cfg = weights_config(
        options.weights,
        config=options.preset_config(1),
        min_size=options.min_size,
        max_size=options.max_size,
        anchor_sizes=options.anchor_sizes,
        aspect_ratios=options.aspect_ratios,
    )
    cfg.validate()
    report = inspect_dataset(annotations, cfg, progress=progress)
    written: list[Path] = []
    if out is not None:
        from fpncli.viz.levels import save_dataset_figures

        write_json(out / "dataset_levels.json", report.to_json())
        written = [out / "dataset_levels.json", *save_dataset_figures(report, out)]
    return report, written
