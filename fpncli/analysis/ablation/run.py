"""Running the ablation: every row trained on the same data with the same budget and seed
(or reused from an earlier run with the same settings), measured (:mod:`.measure`), then
``ablation.json`` and ``ablation.md`` written (:mod:`.report`).

Training goes through :func:`fpncli.training.train.train`; the default data is
:mod:`fpncli.data.synth`'s multi-scale shapes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpncli.analysis.ablation.measure import PROPOSALS, TIMED_IMAGES, measure_row
from fpncli.analysis.ablation.report import small_object_claim, to_markdown
from fpncli.analysis.ablation.rows import DEFAULT_ROWS, parse_row, row_neck_options
from fpncli.atomic import write_json, write_text
from fpncli.errors import FpnError
from fpncli.evaluation.coco_eval import resolve_backend
from fpncli.modeling.necks.registry import get_neck
from fpncli.outputs import check_outputs
from fpncli.runtime.events import ProgressFn

# Budget 1 (the default) is sized for about 20-30 minutes on 2 CPU cores for all five
# necks with the tiny preset: ~0.6-0.9 s per iteration of 4 images at 256 px
# (../shared/docs/MEASURED.md), plus evaluation. Everything scales linearly with --budget.
BASE_ITERS = 250
BASE_TRAIN_IMAGES = 500
BASE_VAL_IMAGES = 150
BATCH_SIZE = 4


def budget_plan(budget: float = 1.0) -> dict[str, int]:
    """Iterations per neck and dataset sizes for a budget (1.0 = the CPU default)."""
    if not budget > 0:
        raise FpnError(f"--budget must be positive, got {budget}")
    return {
        "iters": max(2, round(BASE_ITERS * budget)),
        "train_images": max(8, round(BASE_TRAIN_IMAGES * budget)),
        "val_images": max(4, min(1000, round(BASE_VAL_IMAGES * budget))),
        "batch_size": BATCH_SIZE,
    }


# --------------------------------------------------------------------------- the ablation


def _prepare_data(out: Path, data: str | None, plan: dict[str, int], seed: int, emit: ProgressFn) -> Path:
    """The dataset root: ``data`` as given, or synthetic shapes under ``out/data`` (reused
    when a previous run made the same one)."""
    if data is not None:
        return Path(data)
    from fpncli.data.synth import synthesize

    root = out / "data"
    marker = root / "ablation_data.json"
    wanted = {"train": plan["train_images"], "val": plan["val_images"], "seed": seed}
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == wanted:
            return root
    except (OSError, json.JSONDecodeError):
        pass
    emit({"event": "data", "root": str(root), **wanted})
    synthesize(root, train=wanted["train"], val=wanted["val"], seed=seed, overwrite=True)
    write_json(marker, wanted, indent=None)
    return root


def _train_key(settings: dict[str, Any], row: str) -> dict[str, Any]:
    """What decides a row's trained weights (measurement settings are left out, so changing
    how necks are measured re-measures the saved checkpoints instead of retraining)."""
    neck, overrides = parse_row(row)
    keys = ("seed", "preset", "data", "iters", "batch_size", "train_images", "val_images")
    key = {k: settings[k] for k in keys}
    key["neck"] = neck
    if "backbone_weights" in settings:  # only when given: rows trained from scratch still match
        key["backbone_weights"] = settings["backbone_weights"]
    # Only the modifiers' overrides (none for a plain neck), so runs made before an option
    # existed still match.
    key.update(overrides)
    for option in get_neck(neck).option_fields:
        if option in settings:  # run-wide options (nasfpn_stacks); AugFPN's parts are modifiers
            key[option] = settings[option]
    return key


def _finished_training(run: Path, key: dict[str, Any]) -> bool:
    from fpncli.checkpoint import read_checkpoint

    try:
        saved = json.loads((run / "ablation_train.json").read_text(encoding="utf-8"))
        saved.pop("seconds", None)
        if saved != key:
            return False
        state = read_checkpoint(run / "last.pt").get("train_state") or {}
        return int(state.get("iteration", -1)) == key["iters"]
    except (OSError, json.JSONDecodeError, FpnError, ValueError, TypeError):
        return False


def _neck_result(
    row: str,
    run: Path,
    settings: dict[str, Any],
    data_root: Path,
    device: str,
    workers: int,
    fresh: bool,
    emit: ProgressFn,
    backend: str = "auto",
) -> dict[str, Any]:
    from fpncli.device import resolve_device
    from fpncli.modeling.weights import load_detector
    from fpncli.training.config import TrainConfig
    from fpncli.training.train import train

    neck, overrides = parse_row(row)
    model_overrides = {o: settings[o] for o in get_neck(neck).option_fields if o in settings}
    model_overrides.update(overrides)
    cfg = TrainConfig(
        out=str(run),
        data=str(data_root),
        preset=settings["preset"],
        neck=neck,
        model=model_overrides,
        backbone_weights=settings.get("backbone_weights", "none"),
        iters=settings["iters"],
        batch_size=settings["batch_size"],
        seed=settings["seed"],
        eval_every=-1,
        workers=workers,
        device=device,
        log_every=max(1, settings["iters"] // 10),
    )
    resolved = cfg.resolved()
    if not resolved.val_ann or not resolved.val_images:
        raise FpnError(
            f"{data_root}: the ablation needs a validation split (annotations/instances_val*.json)"
        )
    key = _train_key(settings, row)
    if not fresh and _finished_training(run, key):
        emit({"event": "measure", "neck": row, "what": f"the trained {run / 'last.pt'} (not retrained)"})
        model = load_detector(str(run / "last.pt")).model.to(resolve_device(device))
        train_seconds = json.loads((run / "ablation_train.json").read_text(encoding="utf-8")).get("seconds")
        checkpoint = str(run / "last.pt")
    else:
        if run.exists():
            if not (run / "config.json").is_file() and any(run.iterdir()):
                raise FpnError(
                    f"{run}: exists and is not a training run of this ablation; choose another --out"
                )
            shutil.rmtree(run)  # an unfinished or outdated run of this ablation: start it again
        summary = train(cfg, progress=lambda e: emit({**e, "neck": row}))
        model, train_seconds, checkpoint = summary["model"], summary["seconds"], summary["last"]
        model.drop_training_only()  # measured as inference loads it (no auxiliary head)
        write_json(run / "ablation_train.json", {**key, "seconds": train_seconds}, indent=None)
    return measure_row(
        model,
        row,
        resolved.val_ann,
        resolved.val_images,
        settings,
        train_seconds,
        checkpoint,
        emit,
        backend,
    )


def run_ablation(
    out: str | os.PathLike,
    necks: Sequence[str] = DEFAULT_ROWS,
    budget: float = 1.0,
    seed: int = 0,
    data: str | None = None,
    device: str = "auto",
    workers: int = 0,
    neck_options: dict[str, Any] | None = None,
    fresh: bool = False,
    progress: ProgressFn | None = None,
    backend: str = "auto",
    backbone_weights: str = "none",
) -> dict[str, Any]:
    """Train and measure each neck; write ``ablation.json`` and ``ablation.md`` into ``out``.

    Args:
        out: output folder: ``data/`` (the synthetic set), ``runs/<neck>/`` (each training
            run, its ``last.pt`` and the neck's ``result.json``), ``ablation.json``, ``ablation.md``.
        necks: the rows, in table order: a neck (names in
            :mod:`fpncli.modeling.necks.registry`), or ``neck+afp`` for that neck with
            PANet's adaptive feature pooling (:func:`parse_row`).
        budget: scales iterations and data (:func:`budget_plan`); 1.0 is the CPU default.
        seed: one seed for the data, the initialisation and the sampling of every neck.
        data: a COCO-layout root (``annotations/instances_{train,val}*.json``) instead of
            the synthetic shapes.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        workers: data-loading processes during training.
        neck_options: settings of the rows' necks, ModelConfig field -> value (e.g.
            ``{"nasfpn_stacks": 3}``; the registry's neck options): each must belong to the
            neck of some row; unset ones take ModelConfig's defaults.
        backbone_weights: ``none`` (every row from scratch, the default), ``imagenet`` or a
            ResNet state dict path: the bottom-up ResNet of every row (both of RFP's) starts
            from it, as ``fpn train --backbone-weights`` does.
        backend: COCO evaluation backend for recall and AP (see
            :func:`fpncli.evaluation.coco_eval.resolve_backend`).
        fresh: retrain and re-measure every neck. Otherwise a neck whose ``result.json`` was
            made with the same settings is reused, and a neck whose training finished with the
            same training settings is only re-measured (an interrupted ablation continues
            where it stopped).
        progress: called with event dicts (``data``, ``neck_start``, the training engine's
            events with ``neck`` added, ``measure``, ``neck_done``).

    Returns:
        ``{"settings", "rows": [one dict per neck], "claim": {...}, "json", "markdown"}``.
    """

    emit = progress or (lambda event: None)
    necks = list(necks)
    if not necks:
        raise FpnError("no necks to compare")
    for name in necks:
        parse_row(name)
    if len(set(necks)) != len(necks):
        raise FpnError("a row is listed twice")
    row_options = row_neck_options(neck_options or {}, necks)
    if workers < 0:
        raise FpnError(f"--workers must be 0 or more, got {workers}")
    backend = resolve_backend(backend)  # a missing backend fails before any training
    if backbone_weights not in ("none", "imagenet") and not Path(backbone_weights).is_file():
        raise FpnError(f"{backbone_weights}: --backbone-weights must be none, imagenet or a file")
    plan = budget_plan(budget)
    out = Path(out)
    check_outputs(folders=[out], files=[out / "ablation.json", out / "ablation.md"], inputs=[data])
    out.mkdir(parents=True, exist_ok=True)
    import torch

    data_root = _prepare_data(out, data, plan, seed, emit)
    settings = {
        "budget": budget,
        "seed": seed,
        "preset": "tiny",
        "data": str(data_root),
        **row_options,
        "timed_images": TIMED_IMAGES,
        "proposals": PROPOSALS,
        "pre_nms": "equal total over 5 levels",
        **plan,
    }
    if backbone_weights != "none":  # absent when from scratch: earlier runs' results still match
        settings["backbone_weights"] = backbone_weights
    rows = []
    started = time.perf_counter()
    for index, neck in enumerate(necks):
        run = out / "runs" / neck
        cached = run / "result.json"
        if not fresh and cached.is_file():
            try:
                row = json.loads(cached.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                row = None
            if row and row.get("settings") == settings:
                emit({"event": "neck_cached", "neck": neck, "index": index, "total": len(necks)})
                rows.append(row)
                continue
        emit({"event": "neck_start", "neck": neck, "index": index, "total": len(necks), **plan})
        row = _neck_result(neck, run, settings, data_root, device, workers, fresh, emit, backend)
        write_json(cached, row)
        rows.append(row)
        emit({"event": "neck_done", "neck": neck, "row": row})
    environment = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": str(rows[-1].get("device", device)),
        "seconds": time.perf_counter() - started,
    }
    result: dict[str, Any] = {
        "settings": settings,
        "environment": environment,
        "rows": rows,
        "claim": small_object_claim(rows),
    }
    json_path = out / "ablation.json"
    md_path = out / "ablation.md"
    write_json(json_path, result)
    write_text(md_path, to_markdown(result))
    result["json"], result["markdown"] = str(json_path), str(md_path)
    return result
