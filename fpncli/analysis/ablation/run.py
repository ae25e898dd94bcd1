"""Running the ablation: every row trained on the same data with the same budget and seed
(or reused from an earlier run with the same settings), measured (:mod:`.measure`), then
``ablation.json`` and ``ablation.md`` written (:mod:`.report`).

A row stopped half way (Ctrl-C, SIGTERM: the trainer saves ``last.pt`` and returns) records
``status: interrupted`` in its ``ablation_train.json``, writes no ``result.json`` and stops the
ablation; the next call resumes that row exactly from ``last.pt`` (the trainer's resume:
optimizer, schedule, RNG and data order). A row is reused or re-measured only when its
``last.pt`` holds the full number of iterations, so a half-trained row is never read as finished.

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

from fpncli.analysis.ablation.machine import machine_info
from fpncli.analysis.ablation.measure import PROPOSALS, TIMED_IMAGES, measure_row
from fpncli.analysis.ablation.report import small_object_claim, to_markdown
from fpncli.analysis.ablation.rows import DEFAULT_ROWS, parse_row, row_neck_options, split_seeds
from fpncli.analysis.ablation.seeds import aggregate, differences
from fpncli.analysis.ablation.warm_start import ensure_warm_start, file_sha256, warm_start_key
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
TRAIN_RECORD = "ablation_train.json"


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
    # Only when given: rows trained from scratch with the data's seed still match older runs.
    for extra in ("backbone_weights", "backbone_sha256", "data_seed"):
        if extra in settings:
            key[extra] = settings[extra]
    # Only the modifiers' overrides (none for a plain neck), so runs made before an option
    # existed still match.
    key.update(overrides)
    for option in get_neck(neck).option_fields:
        if option in settings:  # run-wide options (nasfpn_stacks); AugFPN's parts are modifiers
            key[option] = settings[option]
    return key


def _training_status(run: Path, key: dict[str, Any]) -> tuple[str, float | None] | None:
    """``("finished", seconds)`` when ``run`` trained ``key`` to its last iteration,
    ``("partial", seconds so far)`` when it stopped earlier with a resumable ``last.pt``,
    else None (nothing usable: train it from the start)."""
    from fpncli.checkpoint import read_checkpoint

    try:
        saved = json.loads((run / TRAIN_RECORD).read_text(encoding="utf-8"))
        seconds = saved.pop("seconds", None)
        saved.pop("status", None)
        if saved != key:
            return None
        state = read_checkpoint(run / "last.pt").get("train_state") or {}
        iteration = int(state.get("iteration", -1))
    except (OSError, json.JSONDecodeError, FpnError, ValueError, TypeError, AttributeError):
        return None
    if iteration == key["iters"]:
        return "finished", seconds
    if 0 < iteration < key["iters"] and (run / "config.json").is_file():
        return "partial", seconds or 0.0
    return None


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
        # A run killed outright loses at most a fifth of its iterations.
        save_every=max(1, settings["iters"] // 5),
    )
    resolved = cfg.resolved()
    if not resolved.val_ann or not resolved.val_images:
        raise FpnError(
            f"{data_root}: the ablation needs a validation split (annotations/instances_val*.json)"
        )
    key = _train_key(settings, row)
    status = None if fresh else _training_status(run, key)
    if status is not None and status[0] == "finished":
        emit({"event": "measure", "neck": row, "what": f"the trained {run / 'last.pt'} (not retrained)"})
        model = load_detector(str(run / "last.pt")).model.to(resolve_device(device))
        train_seconds, checkpoint = status[1], str(run / "last.pt")
    else:
        before = 0.0
        if status is not None:  # stopped half way with the same settings: continue exactly
            before = status[1] or 0.0
            cfg.resume = True
            emit({"event": "neck_resumed", "neck": row, "checkpoint": str(run / "last.pt")})
        elif run.exists():
            if not any((run / f).is_file() for f in ("config.json", TRAIN_RECORD)) and any(run.iterdir()):
                raise FpnError(
                    f"{run}: exists and is not a training run of this ablation; choose another --out"
                )
            shutil.rmtree(run)  # an unusable or outdated run of this ablation: start it again
        # Recorded before training, so a run killed outright is recognised (and resumed from its
        # last periodic last.pt) next time.
        write_json(run / TRAIN_RECORD, {**key, "status": "training", "seconds": before}, indent=None)
        summary = train(cfg, progress=lambda e: emit({**e, "neck": row}))
        train_seconds = before + summary["seconds"]
        if summary["interrupted"]:
            write_json(
                run / TRAIN_RECORD, {**key, "status": "interrupted", "seconds": train_seconds}, indent=None
            )
            emit(
                {
                    "event": "interrupted",
                    "neck": row,
                    "iteration": summary["iterations"],
                    "total_iterations": summary["total_iterations"],
                    "checkpoint": summary["last"],
                }
            )
            raise KeyboardInterrupt  # no result.json: the next call resumes this row
        model, checkpoint = summary["model"], summary["last"]
        model.drop_training_only()  # measured as inference loads it (no auxiliary head)
        write_json(run / TRAIN_RECORD, {**key, "status": "finished", "seconds": train_seconds}, indent=None)
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


def _warm_start(
    out: Path,
    data_root: Path,
    plan: dict[str, int],
    budget: float,
    seed: int,
    device: str,
    redo: bool,
    emit: ProgressFn,
) -> dict[str, Any]:
    """The shared warm start's record (made or reused, :mod:`.warm_start`)."""
    from fpncli.config import preset_config
    from fpncli.training.config import TrainConfig

    resolved = TrainConfig(out=str(out), data=str(data_root), preset="tiny").resolved()
    splits = (resolved.train_ann, resolved.train_images, resolved.val_ann, resolved.val_images)
    if not all(splits):
        raise FpnError(f"{data_root}: the warm start needs a train and a validation split")
    key = warm_start_key(preset_config("tiny").backbone, data_root, plan, budget, seed)
    return ensure_warm_start(out, key, splits, device, redo, emit)  # type: ignore[arg-type]


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
    seeds: int = 1,
    warm_start: bool = False,
    redo_warm_start: bool = False,
) -> dict[str, Any]:
    """Train and measure each neck; write ``ablation.json`` and ``ablation.md`` into ``out``.

    Args:
        out: output folder: ``data/`` (the synthetic set), ``runs/<row>/`` (each training
            run, its ``last.pt`` and the row's ``result.json``; ``runs/<row>.seed<S>/`` for a
            row's further seeds), ``warm_start.pt``/``.json``, ``ablation.json``, ``ablation.md``.
        necks: the rows, in table order: a neck (names in
            :mod:`fpncli.modeling.necks.registry`), or ``neck+afp`` for that neck with
            PANet's adaptive feature pooling (:func:`parse_row`); ``ROW@N`` runs it with N seeds.
        budget: scales iterations and data (:func:`budget_plan`); 1.0 is the CPU default.
        seed: one seed for the data, the initialisation and the sampling of every neck; a
            row's further seeds train with ``seed + 1``, ``seed + 2``, ... on the same data.
        seeds: seeds per row without an ``@N`` suffix.
        data: a COCO-layout root (``annotations/instances_{train,val}*.json``) instead of
            the synthetic shapes.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        workers: data-loading processes during training.
        neck_options: settings of the rows' necks, ModelConfig field -> value (e.g.
            ``{"nasfpn_stacks": 3}``; the registry's neck options): each must belong to the
            neck of some row; unset ones take ModelConfig's defaults.
        backbone_weights: ``none`` (every row from scratch, the default), ``imagenet`` or a
            ResNet state dict path: the bottom-up ResNet of every row (both of RFP's) starts
            from it, as ``fpn train --backbone-weights`` does. A file's sha256 is part of the
            rows' settings.
        warm_start: make (or reuse) ``OUT/warm_start.pt`` (:mod:`.warm_start`) and start every
            row's ResNet from it; ``redo_warm_start`` makes it again (implies ``warm_start``).
        backend: COCO evaluation backend for recall and AP (see
            :func:`fpncli.evaluation.coco_eval.resolve_backend`).
        fresh: retrain and re-measure every neck (the warm start is kept). Otherwise a row
            whose ``result.json`` was made with the same settings and whose training finished
            is reused, one whose training finished is only re-measured, and one stopped half
            way resumes from its ``last.pt``.
        progress: called with event dicts (``data``, ``warm_start*``, ``neck_start``,
            ``neck_resumed``, the training engine's events with ``neck`` added, ``measure``,
            ``neck_done``, ``interrupted``).

    Returns:
        ``{"settings", "rows": [one dict per row, seeds averaged], "runs": [one per seed],
        "claim", "noise", "warm_start", "environment", "json", "markdown"}``.

    Raises:
        KeyboardInterrupt: a row's training was stopped (Ctrl-C / SIGTERM); it resumes next call.
    """

    emit = progress or (lambda event: None)
    if not list(necks):
        raise FpnError("no necks to compare")
    if seeds < 1:
        raise FpnError(f"--seeds must be 1 or more, got {seeds}")
    specs = [split_seeds(name, seeds) for name in necks]
    names = [name for name, _ in specs]
    for name in names:
        parse_row(name)
    if len(set(names)) != len(names):
        raise FpnError("a row is listed twice")
    row_options = row_neck_options(neck_options or {}, names)
    if workers < 0:
        raise FpnError(f"--workers must be 0 or more, got {workers}")
    backend = resolve_backend(backend)  # a missing backend fails before any training
    warm_start = warm_start or redo_warm_start
    if warm_start and backbone_weights != "none":
        raise FpnError("--warm-start makes the rows' backbone weights; leave out --backbone-weights")
    if backbone_weights not in ("none", "imagenet") and not Path(backbone_weights).is_file():
        raise FpnError(f"{backbone_weights}: --backbone-weights must be none, imagenet or a file")
    plan = budget_plan(budget)
    out = Path(out)
    outputs = [out / n for n in ("ablation.json", "ablation.md", "warm_start.pt", "warm_start.json")]
    check_outputs(folders=[out], files=outputs, inputs=[data])
    out.mkdir(parents=True, exist_ok=True)

    data_root = _prepare_data(out, data, plan, seed, emit)
    record = None
    if warm_start:
        record = _warm_start(out, data_root, plan, budget, seed, device, redo_warm_start, emit)
        backbone_weights = record["path"]
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
        if backbone_weights != "imagenet":  # a file changed at the same path retrains the rows
            settings["backbone_sha256"] = record["sha256"] if record else file_sha256(backbone_weights)
    jobs = [(name, seed + k) for name, count in specs for k in range(count)]
    runs = []
    started = time.perf_counter()
    for index, (neck, run_seed) in enumerate(jobs):
        run = out / "runs" / (neck if run_seed == seed else f"{neck}.seed{run_seed}")
        # Further seeds change the training's seed only: the data (and warm start) stay the same.
        row_settings = settings if run_seed == seed else {**settings, "seed": run_seed, "data_seed": seed}
        cached = run / "result.json"
        finished = None if fresh else _training_status(run, _train_key(row_settings, neck))
        if finished is not None and finished[0] == "finished" and cached.is_file():
            try:
                row = json.loads(cached.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and row.get("settings") == row_settings:
                emit(
                    {
                        "event": "neck_cached",
                        "neck": neck,
                        "seed": run_seed,
                        "index": index,
                        "total": len(jobs),
                    }
                )
                runs.append(row)
                continue
        emit(
            {
                "event": "neck_start",
                "neck": neck,
                "seed": run_seed,
                "index": index,
                "total": len(jobs),
                **plan,
            }
        )
        row = _neck_result(neck, run, row_settings, data_root, device, workers, fresh, emit, backend)
        write_json(cached, row)
        runs.append(row)
        emit({"event": "neck_done", "neck": neck, "row": row})
    rows = aggregate(runs)
    environment = {
        **machine_info(str(runs[-1].get("device", device))),
        "device": str(runs[-1].get("device", device)),
        "seconds": time.perf_counter() - started,
    }
    result: dict[str, Any] = {
        "settings": settings,
        "environment": environment,
        "warm_start": record,
        "rows": rows,
        "runs": runs,
        "claim": small_object_claim(rows),
        "noise": differences(rows),
    }
    json_path = out / "ablation.json"
    md_path = out / "ablation.md"
    write_json(json_path, result)
    write_text(md_path, to_markdown(result))
    result["json"], result["markdown"] = str(json_path), str(md_path)
    return result
