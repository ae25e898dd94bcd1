"""TrainConfig: everything `fpn train` needs, saved as the run's ``config.json``.

Unset (``None``) fields are filled from the preset's *training recipe* by
:meth:`TrainConfig.resolved`; the resolved config is what a run stores, so a run folder
always says exactly how it was trained. Model architecture fields live in
:class:`fpncli.config.ModelConfig` (``model`` holds only the overrides given here).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fpncli.config import PRESETS
from fpncli.errors import FpnError

OPTIMIZERS = ("sgd", "adamw")
# The 12 COCO numbers a validation logs; any of them can choose best.pt (higher is better).
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def metric_name(text: str) -> str:
    """``--best-metric`` as written (``ap50``, ``AP50``) -> its COCO name; unknown text is
    returned as given, for :meth:`TrainConfig.validate` to refuse by name."""
    return {m.lower(): m for m in COCO_METRICS}.get(text.strip().lower(), text)


# Experiment loggers of `--logger` (fpncli.training.loggers), each its own optional extra but csv.
LOGGERS = ("tensorboard", "mlflow", "wandb", "csv")

# Training recipes, one per model preset.
RECIPES: dict[str, dict[str, Any]] = {
    # The paper (../shared/docs/PAPER.md): SGD, momentum 0.9, weight decay 1e-4, lr 0.02 for a
    # batch of 16 images (2 per GPU x 8), scaled linearly with the batch, warm-up, x0.1 after
    # 3/4 of training; ImageNet-pretrained backbone with frozen BatchNorm. 12 epochs is the
    # usual "1x" COCO schedule (90k iterations of 16 images).
    "default": {
        "optimizer": "sgd",
        "base_lr": 0.02,
        "base_batch": 16,
        "batch_size": 2,
        "epochs": 12,
        "weight_decay": 1e-4,
        "warmup_iters": 500,
        "lr_steps": [0.75],
        "backbone_weights": "imagenet",
    },
    # Departs from the paper on purpose: the tiny preset trains from scratch on a CPU, where
    # SGD at the paper's lr went to NaN within 75 iterations and SGD at half of it barely
    # learned, while AdamW at 1e-3 (batch 4) reached AP 0.72 in ~350 iterations
    # (../shared/docs/MEASURED.md). The paper's SGD recipe is for pretrained backbones.
    "tiny": {
        "optimizer": "adamw",
        "base_lr": 1e-3,
        "base_batch": 4,
        "batch_size": 4,
        "epochs": 6,
        "weight_decay": 1e-4,
        "warmup_iters": 50,
        "lr_steps": [0.8],
        "backbone_weights": "none",
    },
}


@dataclass
class TrainConfig:
    """One training run. Paths are strings (JSON); ``None`` = take the preset's recipe value.

    Data: either ``data`` (a COCO-layout root: ``annotations/instances_train*.json`` +
    ``train*/``, and the ``val`` pair when present) or the explicit ``train_ann`` /
    ``train_images`` (``val_ann`` / ``val_images`` optional).

    Length: ``iters`` wins over ``epochs``. Learning rate: ``lr`` is for ``batch_size``
    images on one process (default: the recipe's ``base_lr * batch_size / base_batch``);
    under DistributedDataParallel it is multiplied by the world size (linear scaling rule).
    """

    out: str = "runs/train"
    data: str | None = None
    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    preset: str = "default"
    # Model: backbone / neck / other ModelConfig overrides (None = the preset's).
    backbone: str | None = None
    neck: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    weights: str = "none"
    backbone_weights: str | None = None
    # Schedule and optimiser.
    epochs: int | None = None
    iters: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_iters: int | None = None
    warmup_factor: float = 0.001
    lr_steps: list[float] | None = None  # fractions of the run where lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    # Not in the paper: clipping keeps a from-scratch run's early loss spikes from blowing up.
    clip_grad: float | None = 10.0
    # Data pipeline.
    flip: bool = True
    train_sizes: list[int] | None = None  # multi-scale: shorter side drawn from these
    drop_negatives: bool = False
    workers: int = 2
    # Hardware.
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "auto"  # auto|bf16|fp16 (fp16 uses a gradient scaler)
    channels_last: bool = True  # CUDA only
    # Bookkeeping.
    seed: int = 0
    eval_every: int = 1  # epochs; 0 = only at the end; -1 = never
    log_every: int = 20  # iterations
    save_every: int = 0  # iterations between last.pt writes (0 = each epoch end)
    eval_batch_size: int = 2
    best_metric: str = "AP"  # the validation metric that chooses best.pt
    loggers: list[str] | None = None  # experiment loggers (LOGGERS) besides metrics.jsonl
    resume: bool = False

    def resolved(self) -> TrainConfig:
        """A copy with the preset's recipe filled in and the data paths found; checked."""
        if self.preset not in RECIPES or self.preset not in PRESETS:
            raise FpnError(f"unknown preset {self.preset!r}; choose one of {', '.join(RECIPES)}")
        recipe = RECIPES[self.preset]
        out = dataclasses.replace(self, model=dict(self.model))
        for key in (
            "optimizer",
            "batch_size",
            "weight_decay",
            "warmup_iters",
            "lr_steps",
            "backbone_weights",
        ):
            if getattr(out, key) is None:
                setattr(out, key, recipe[key])
        if out.iters is None and out.epochs is None:
            out.epochs = recipe["epochs"]
        if out.lr is None:
            out.lr = recipe["base_lr"] * out.batch_size / recipe["base_batch"]
        if out.weights != "none":
            out.backbone_weights = "none"  # the detector weights include the backbone
        if out.weights == "none":
            # The architecture options, checked now rather than after the data is read.
            from fpncli.config import model_overrides, preset_config

            given = {k: v for k, v in out.model_overrides().items() if v is not None}
            model_overrides(given, preset_config(out.preset, class_names=["x"], category_ids=[1]))
        out._find_data()
        out.check()
        return out

    def _find_data(self) -> None:
        if self.data is not None:
            root = Path(self.data)
            if not root.is_dir():
                raise FpnError(f"{root}: dataset folder not found")
            ann_dir = root / "annotations"
            for split in ("train", "val"):
                anns = sorted(ann_dir.glob(f"instances_{split}*.json"))
                if not anns:
                    if split == "train":
                        raise FpnError(f"{root}: no annotations/instances_train*.json (COCO layout expected)")
                    continue
                ann = anns[0]
                suffix = ann.stem.removeprefix("instances_")  # e.g. train2017
                images = root / suffix
                if not images.is_dir():
                    cands = sorted(p for p in root.glob(f"{split}*") if p.is_dir())
                    if not cands:
                        raise FpnError(f"{root}: found {ann.name} but no {suffix}/ images folder")
                    images = cands[0]
                if split == "train":
                    self.train_ann = self.train_ann or str(ann)
                    self.train_images = self.train_images or str(images)
                else:
                    self.val_ann = self.val_ann or str(ann)
                    self.val_images = self.val_images or str(images)
        if not self.train_ann or not self.train_images:
            raise FpnError("no training data: give --data ROOT or --train-ann and --train-images")
        if bool(self.val_ann) != bool(self.val_images):
            raise FpnError("give both --val-ann and --val-images (or neither)")

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise FpnError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "iters", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FpnError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise FpnError(f"--lr must be positive, got {self.lr}")
        if self.workers < 0:
            raise FpnError(f"--workers must be 0 or more, got {self.workers}")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            raise FpnError(f"unknown --amp-dtype {self.amp_dtype!r}; choose auto, bf16 or fp16")
        if self.train_sizes is not None and (not self.train_sizes or min(self.train_sizes) < 32):
            raise FpnError(f"--train-sizes must be sizes of at least 32 px, got {self.train_sizes}")
        if self.best_metric not in COCO_METRICS:
            raise FpnError(
                f"unknown --best-metric {self.best_metric!r}; choose one of {', '.join(COCO_METRICS)}"
            )
        unknown = [name for name in self.loggers or [] if name not in LOGGERS]
        if unknown:
            raise FpnError(f"unknown --logger {unknown[0]!r}; choose from {', '.join(LOGGERS)}")
        if any(not 0 < s < 1 for s in self.lr_steps or []):
            raise FpnError(f"lr_steps are fractions of the run (0..1), got {self.lr_steps}")

    def model_overrides(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "neck": self.neck, **self.model}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FpnError(f"unknown training configuration keys: {', '.join(unknown)}")
        return cls(**data)


def read_run_config(run: str | os.PathLike) -> TrainConfig:
    """The training config stored in a run folder (``RUN/config.json``)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FpnError(f"{run}: not a run folder (no config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrainConfig.from_dict(data["train"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FpnError(f"{path}: not a training config ({exc})") from None


T = TypeVar("T")


def filled(value: T | None) -> T:
    """A :class:`TrainConfig` field that :meth:`TrainConfig.resolved` has filled in."""
    if value is None:
        raise RuntimeError("the training configuration was used before TrainConfig.resolved()")
    return value
