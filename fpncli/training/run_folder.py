"""What a training run writes in its folder besides checkpoints and metrics: ``config.json``
(how it was trained) and ``skipped_images.txt`` (every training image left out), checked
before anything is written."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from fpncli.atomic import write_json, write_text
from fpncli.data.dataset import DetectionDataset
from fpncli.errors import FpnError
from fpncli.modeling.detector import FPNFasterRCNN
from fpncli.outputs import check_outputs
from fpncli.runtime import distributed as D
from fpncli.runtime.events import ProgressFn
from fpncli.training.config import TrainConfig
from fpncli.training.resume import trim_metrics

SKIPPED_FILE = "skipped_images.txt"  # in the run folder: every training image left out, one per line
MAX_WARNED = 10  # unreadable training images named on the console; the file lists all


def check_run_outputs(cfg: TrainConfig, run: Path) -> None:
    """Nothing is written before the run folder's files and the inputs have been checked."""
    weights = getattr(cfg, "weights", None)
    check_outputs(
        folders=[run],
        files=[
            run / n
            for n in (
                "config.json",
                "last.pt",
                "best.pt",
                "metrics.jsonl",
                "curves.png",
                "metrics.csv",
                "loggers.json",
                SKIPPED_FILE,
            )
        ],
        inputs=[
            cfg.train_ann,
            cfg.val_ann,
            weights if weights not in (None, "coco", "none") and not cfg.resume else None,
        ],
    )


def run_record(
    cfg: TrainConfig,
    model: FPNFasterRCNN,
    source: str,
    info: D.DistInfo,
    batch_size: int,
    lr: float,
    total: int,
    per_epoch: int,
    train_images: int,
) -> dict[str, Any]:
    """The run's ``config.json``: the resolved configs, the schedule and the versions."""
    return {
        "train": cfg.to_dict(),
        "model": model.config.to_dict(),
        "weights_source": source,
        "world_size": info.world_size,
        "effective_batch": batch_size * info.world_size,
        "effective_lr": lr,
        "iterations": total,
        "iterations_per_epoch": per_epoch,
        "train_images": train_images,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": __import__("torchvision").__version__,
            "fpncli": __import__("fpncli").__version__,
        },
    }


def start_run_folder(
    cfg: TrainConfig,
    run: Path,
    record: dict[str, Any],
    metrics_path: Path,
    start_iter: int,
    train_set: DetectionDataset,
) -> None:
    """Rank 0: config.json, metrics.jsonl cut back to the resumed iteration, skipped_images.txt."""
    run.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and (run / "last.pt").exists():
        raise FpnError(f"{run}: already holds a run (last.pt); use --resume {run} or another --out")
    write_json(run / "config.json", record)
    trim_metrics(metrics_path, start_iter)
    # Every image left out, one per line, so nothing vanishes silently (UnreadableImages
    # appends the unreadable ones as they turn up).
    write_text(run / SKIPPED_FILE, "".join(line + "\n" for line in train_set.report.skipped_images()))


class UnreadableImages:
    """The loop's ``on_unreadable``: each unreadable image appended to skipped_images.txt
    (rank 0) and named in a warning, the first MAX_WARNED of them."""

    def __init__(self, skipped_file: Path, is_main: bool, emit: ProgressFn) -> None:
        self.skipped_file, self.is_main, self.emit = skipped_file, is_main, emit
        self.seen: set[str] = set()

    def __call__(self, reasons: list[str]) -> None:
        new = [r for r in reasons if r not in self.seen]
        if not new:
            return
        self.seen.update(new)
        if self.is_main:
            with open(self.skipped_file, "a", encoding="utf-8") as f:
                f.writelines(r + "\n" for r in new)
        shown = len(self.seen) - len(new)  # warned about so far
        for reason in new[: max(0, MAX_WARNED - shown)]:
            self.emit({"event": "warning", "message": f"unreadable training image skipped: {reason}"})
        if shown <= MAX_WARNED < len(self.seen):
            self.emit(
                {
                    "event": "warning",
                    "message": f"more unreadable training images: all in {self.skipped_file}",
                }
            )
