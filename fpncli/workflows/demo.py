"""`fpn demo`: the whole job end to end, offline, on a CPU in a few minutes.

Synthesise a shapes dataset (:mod:`fpncli.data.synth`), train the ``tiny`` preset on it from
scratch (:func:`fpncli.training.train.train`), evaluate on the held-out images with the same
COCO evaluation as `fpn eval`, detect on a few held-out images, and inspect the pyramid
levels of one of them. Every step writes into one folder::

    OUT/data/      the synthetic dataset (COCO layout)
    OUT/run/       the training run (config.json, metrics.jsonl, last.pt, curves.png)
    OUT/eval/      metrics.json (the `fpn eval` schema), detections.json
    OUT/detect/    annotated images + predictions.json
    OUT/levels/    what each pyramid level sees (when `inspect-levels` is available)
    OUT/demo.json  the summary
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpncli.atomic import write_json
from fpncli.errors import FpnError
from fpncli.outputs import check_outputs
from fpncli.runtime.events import ProgressFn, emitter

MARKER = "demo.json"
STEPS = ("data", "run", "eval", "detect", "levels")


@dataclass
class DemoConfig:
    """The demo's budget. Defaults: ~4-5 min on 2 CPU cores (see README "Demo")."""

    out: str = "fpn-demo"
    train_images: int = 600
    val_images: int = 100
    iters: int = 300  # batch 4: two epochs of 600 images
    detect_images: int = 8
    seed: int = 0
    device: str = "cpu"
    workers: int = 0  # 256 px PNGs decode in ~1 ms: worker processes would only compete for 2 cores


def _prepare(out: Path) -> None:
    """Create ``out``; a previous demo there is replaced, anything else is refused."""
    check_outputs(folders=[out])
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FpnError(f"{out}: folder is not empty and is not a previous demo; choose another --out")
        for step in STEPS:
            shutil.rmtree(out / step, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MARKER, {"status": "running"}, indent=None)


def run_demo(cfg: DemoConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary written to ``OUT/demo.json``.

    ``progress`` receives ``{"event": "step", "step": name, "message": ...}`` between steps
    and the training engine's events (``"event": "iter"`` etc.) during training.
    """
    from fpncli.data.synth import synthesize
    from fpncli.evaluation.evaluate import evaluate_model
    from fpncli.training.config import TrainConfig
    from fpncli.training.train import train

    emit = emitter(progress)
    out = Path(cfg.out)
    _prepare(out)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"out": str(out)}

    emit(
        {
            "event": "step",
            "step": "data",
            "message": f"synthesising {cfg.train_images} + {cfg.val_images} images",
        }
    )
    t = time.perf_counter()
    # Square 256 px images: the tiny preset's input size, so no pixel is spent on padding
    # or upscaling (mixed orientations cost ~40% more per batch on a CPU).
    data = synthesize(
        out / "data", train=cfg.train_images, val=cfg.val_images, seed=cfg.seed, sizes=((256, 256),)
    )
    timings["data"] = time.perf_counter() - t
    val = data["splits"]["val"]

    emit(
        {"event": "step", "step": "train", "message": f"training the tiny preset for {cfg.iters} iterations"}
    )
    t = time.perf_counter()
    result = train(
        TrainConfig(
            data=str(out / "data"),
            preset="tiny",
            out=str(out / "run"),
            iters=cfg.iters,
            eval_every=-1,
            workers=cfg.workers,
            device=cfg.device,
            seed=cfg.seed,
            log_every=10,
        ),
        progress=progress,
    )
    timings["train"] = time.perf_counter() - t
    if result["interrupted"]:  # Ctrl-C: training saved last.pt; stop here
        write_json(out / MARKER, {"status": "interrupted", "run": str(out / "run")}, indent=None)
        raise KeyboardInterrupt
    model = result["model"].eval()

    emit({"event": "step", "step": "eval", "message": f"evaluating on {cfg.val_images} held-out images"})
    t = time.perf_counter()
    metrics = evaluate_model(
        model,
        val["annotation_file"],
        val["images_dir"],
        out_dir=out / "eval",
        device=cfg.device,
        batch_size=4,
        workers=cfg.workers,
        weights=str(out / "run" / "last.pt"),
    )
    assert metrics is not None  # not sharded: every process gets the metrics
    timings["eval"] = time.perf_counter() - t

    images = sorted(Path(val["images_dir"]).glob("*.png"))[: cfg.detect_images]
    emit({"event": "step", "step": "detect", "message": f"detecting on {len(images)} held-out images"})
    t = time.perf_counter()
    summary["detect"] = _detect(out / "run" / "last.pt", images, out / "detect", cfg.device)
    timings["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    summary["levels"] = _inspect(model, images[0], out / "levels", cfg.device, emit) if images else None
    timings["levels"] = time.perf_counter() - t

    summary.update(
        {
            "AP": metrics["AP"],
            "AP50": metrics["AP50"],
            "AP75": metrics["AP75"],
            "APs": metrics["APs"],
            "APm": metrics["APm"],
            "APl": metrics["APl"],
            "data": str(out / "data"),
            "run": str(out / "run"),
            "checkpoint": str(out / "run" / "last.pt"),
            "curves": result.get("curves"),
            "metrics": str(out / "eval" / "metrics.json"),
            "iterations": result["iterations"],
            "train_images_per_s": result["images_per_s"],
            "seconds": time.perf_counter() - t0,
            "timings": timings,
            "status": "done",
        }
    )
    write_json(out / MARKER, summary)
    return summary


def _detect(checkpoint: Path, images: list[Path], out: Path, device: str) -> str:
    """Annotated images + predictions.json through the `fpn detect` engine."""
    from fpncli.inference.detect import DetectOptions, run_detect

    run_detect(
        [str(p) for p in images],
        DetectOptions(weights=str(checkpoint), out_dir=out, device=device, workers=0),
    )
    return str(out)


def _inspect(model, image: Path, out: Path, device: str, emit) -> str | None:
    """`fpn inspect-levels` on one held-out image."""
    from fpncli.analysis.inspect_image import inspect_image
    from fpncli.viz.levels import save_image_figures

    emit({"event": "step", "step": "levels", "message": f"inspecting pyramid levels on {image.name}"})
    report = inspect_image(model, image, device=device, score_thr=0.5, weights="demo")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "levels.json", report.to_json())
    save_image_figures(report, out)
    return str(out)
