"""The paper's ablation, rerun: every neck trained on the same data with the same budget and
seed, then measured the way Tables 1 and 3 of the FPN paper measure them.

Per neck: RPN proposal recall (AR100, AR1k, AR1k for small / medium / large objects; the
RPN in eval mode keeping its 1000 best proposals), detector AP (AP50, AP, APs, APm, APl at
the model's own inference settings), parameters and inference time per image.

Proposal recall is COCOeval's average recall with the proposals as class-agnostic
detections (``useCats = 0``, ``maxDets = [100, 1000]``, IoU 0.50:0.95), the usual way to
score proposals on COCO. Training goes through :func:`fpncli.training.train.train`; the
default data is :mod:`fpncli.data.synth`'s multi-scale shapes.

This module returns data and reports progress through a callback; printing is the CLI's.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpncli.atomic import write_json, write_text
from fpncli.errors import FpnError
from fpncli.evaluation.coco_eval import RECALL_KEYS, proposal_recall, resolve_backend
from fpncli.modeling.necks.registry import NECK_REGISTRY, get_neck
from fpncli.outputs import check_outputs
from fpncli.runtime.events import ProgressFn

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
# Budget 1 (the default) is sized for about 20-30 minutes on 2 CPU cores for all five
# necks with the tiny preset: ~0.6-0.9 s per iteration of 4 images at 256 px
# (../shared/docs/MEASURED.md), plus evaluation. Everything scales linearly with --budget.
BASE_ITERS = 250
BASE_TRAIN_IMAGES = 500
BASE_VAL_IMAGES = 150
BATCH_SIZE = 4
TIMED_IMAGES = 20
PROPOSALS = 1000
PYRAMID_LEVELS = 5  # P2..P6: the RPN candidates every neck is given (see equal_pre_nms)
AP_KEYS = ("AP50", "AP", "APs", "APm", "APl")


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


# --------------------------------------------------------------------------- proposals


def equal_pre_nms(model: Any, per_level: int) -> int:
    """Pre-NMS top-n per level that gives every neck the candidates of a five-level pyramid.

    torchvision (like Detectron) keeps the top-n anchors *per level* before NMS, so a
    single-level baseline would see a fifth of FPN's candidates; Detectron2's C4 RPN keeps
    6000 for the same reason. Here a neck with L RPN levels keeps ``per_level * 5 / L``.
    """
    return max(1, round(per_level * PYRAMID_LEVELS / len(model.rpn_levels)))


def rpn_proposals(model: Any, images: Sequence[Any], top_n: int = PROPOSALS) -> list[Any]:
    """The RPN's proposals for ``images`` in eval mode, keeping the ``top_n`` best per image.

    Args:
        model: an :class:`~fpncli.modeling.detector.FPNFasterRCNN`.
        images: ``[Tensor[3, H, W]]`` floats in 0..1 on the model's device.
        top_n: post-NMS proposals per image (Table 1 uses 1000); the pre-NMS top-n per
            level is ``top_n`` spread as :func:`equal_pre_nms` says.

    Returns:
        Per image ``Tensor[N, 4]`` (N <= top_n), xyxy in that image's pixels, best first.
    """
    import torch

    was_training = model.training
    model.eval()
    limits = model.inference_limits(rpn_pre_nms_top_n=equal_pre_nms(model, top_n), rpn_post_nms_top_n=top_n)
    try:
        with torch.inference_mode(), limits:
            return model.propose(list(images))
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- measurements


def _val_images(val_ann: str, val_images: str) -> tuple[dict[str, Any], list[tuple[int, Path]]]:
    from fpncli.data.coco import load_coco, safe_image_path

    coco = load_coco(val_ann)
    paths = []
    for image_id, rec in coco.images.items():
        path = safe_image_path(val_images, rec["file_name"], source=str(coco.path))
        if path.is_file():
            paths.append((image_id, path))
    if not paths:
        raise FpnError(f"{val_ann}: none of its images were found in {val_images}")
    return coco.raw, paths


def _load_tensor(path: Path):
    from torchvision.transforms.functional import pil_to_tensor

    from fpncli.data.images import read_image

    return pil_to_tensor(read_image(path)).float().div_(255)


def measure_recall(
    model: Any,
    dataset: dict[str, Any],
    paths: list[tuple[int, Path]],
    device: Any,
    batch_size: int = 2,
    top_n: int = PROPOSALS,
    backend: str = "auto",
) -> dict[str, float]:
    """Proposal recall of ``model``'s RPN on the images ``paths`` (``(image_id, file)``)."""
    proposals: dict[int, list[list[float]]] = {}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [_load_tensor(p).to(device) for _, p in chunk]
        for (image_id, _), boxes in zip(chunk, rpn_proposals(model, images, top_n)):
            proposals[image_id] = boxes.float().cpu().tolist()
    ids = {image_id for image_id, _ in paths}
    subset = dict(
        dataset,
        images=[im for im in dataset["images"] if im["id"] in ids],
        annotations=[a for a in dataset["annotations"] if a["image_id"] in ids],
    )
    return proposal_recall(subset, proposals, (100, top_n), backend=backend)


def used_parameters(model: Any, image: Any) -> int:
    """Parameters of the modules that one inference pass actually runs (the c4 baseline
    carries an unused conv5 stage, which must not count)."""
    import torch

    called: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, *_: called.add(id(mod))) for m in model.modules()]
    try:
        model.eval()
        with torch.inference_mode():
            model([image])
    finally:
        for h in hooks:
            h.remove()
    return sum(p.numel() for m in model.modules() if id(m) in called for p in m.parameters(recurse=False))


def time_inference(model: Any, images: list[Any], warmup: int = 2) -> float:
    """Median seconds per image, one image per forward pass (as the paper reports)."""
    import torch

    model.eval()
    times = []
    with torch.inference_mode():
        for i, image in enumerate([*images[:warmup], *images]):
            if image.is_cuda:
                torch.cuda.synchronize(image.device)
            t0 = time.perf_counter()
            model([image])
            if image.is_cuda:
                torch.cuda.synchronize(image.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    from fpncli.evaluation.evaluate import evaluate_model
    from fpncli.modeling.detector import count_parameters
    from fpncli.modeling.weights import load_detector
    from fpncli.training.config import TrainConfig
    from fpncli.training.train import train

    neck, overrides = parse_row(row)
    pooling = row_pooling(row)
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
    model.eval()
    dev = next(model.parameters()).device
    emit({"event": "measure", "neck": row, "what": "proposal recall"})
    dataset, paths = _val_images(resolved.val_ann, resolved.val_images)
    recall = measure_recall(model, dataset, paths, dev, backend=backend)
    emit({"event": "measure", "neck": row, "what": "detector AP"})
    # The preset's inference settings, with the RPN candidates equalised across necks.
    with model.inference_limits(rpn_pre_nms_top_n=equal_pre_nms(model, model.config.rpn_pre_nms_top_n_test)):
        metrics = evaluate_model(
            model, resolved.val_ann, resolved.val_images, device=dev, batch_size=2, backend=backend
        )
        assert metrics is not None  # not sharded: every process gets the metrics
    emit({"event": "measure", "neck": row, "what": "inference time"})
    timed = [_load_tensor(p).to(dev) for _, p in paths[: settings["timed_images"]]]
    seconds = time_inference(model, timed)
    return {
        "neck": row,
        **{k: recall[k] for k, _, _ in RECALL_KEYS},
        **{k: float(metrics[k]) for k in AP_KEYS},
        "roi_pooling": pooling,
        "parameters": count_parameters(model),
        "parameters_used": used_parameters(model, timed[0]),
        "seconds_per_image": seconds,
        "train_seconds": train_seconds,
        "levels": [{"name": s.name, "stride": s.stride} for s in model.levels.values()],
        "rpn_levels": model.rpn_levels,
        "roi_levels": model.roi_levels,
        "checkpoint": checkpoint,
        "device": str(dev),
        "settings": settings,
    }


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
    row_options = _row_options(neck_options or {}, necks)
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


def _row_options(given: dict[str, Any], rows: Sequence[str]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- reporting


def small_object_claim(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paper's claim, checked on these rows: FPN's gain over the best single-scale
    baseline (per metric and object size) is largest for small objects.

    Returns ``None`` when the rows lack FPN or both baselines; else, for AR1k and AP, the
    gains (FPN minus the better baseline, in points) for small / medium / large and
    whether small is the largest.
    """
    by = {r["neck"]: r for r in rows}
    baselines = [by[n] for n in SINGLE_SCALE if n in by]
    if "fpn" not in by or not baselines:
        return None
    out: dict[str, Any] = {"baselines": [b["neck"] for b in baselines]}
    for family, keys in (("AR1k", ("AR1k_s", "AR1k_m", "AR1k_l")), ("AP", ("APs", "APm", "APl"))):
        gains = {}
        for key in keys:
            values = [b[key] for b in baselines if b[key] >= 0]
            if by["fpn"][key] < 0 or not values:
                continue
            gains[key] = 100.0 * (by["fpn"][key] - max(values))
        largest = max(gains, key=lambda k: gains[k]) if gains else None
        out[family] = {"gains": gains, "largest": largest, "small_largest": largest in ("AR1k_s", "APs")}
    out["holds"] = all(out[f]["small_largest"] for f in ("AR1k", "AP"))
    return out


COLUMNS = (
    ("AR100", "AR100"),
    ("AR1k", "AR1k"),
    ("AR1k_s", "AR1k s"),
    ("AR1k_m", "AR1k m"),
    ("AR1k_l", "AR1k l"),
    ("AP50", "AP50"),
    ("AP", "AP"),
    ("APs", "APs"),
    ("APm", "APm"),
    ("APl", "APl"),
)


def format_row(row: dict[str, Any]) -> list[str]:
    """Table cells: metrics in percent (one decimal, '-' where COCO gives -1), parameters in
    millions (used by inference), milliseconds per image."""
    cells = [row["neck"]]
    for key, _ in COLUMNS:
        cells.append("-" if row[key] < 0 else f"{100 * row[key]:.1f}")
    cells.append(f"{row['parameters_used'] / 1e6:.2f}")
    cells.append(f"{1000 * row['seconds_per_image']:.0f}")
    return cells


def header() -> list[str]:
    return ["neck", *(title for _, title in COLUMNS), "params (M)", "ms / image"]


def claim_sentence(claim: dict[str, Any] | None) -> str:
    """One honest sentence about the small-object claim, from the numbers."""
    if claim is None:
        return "The small-object claim needs FPN and at least one single-scale baseline (c4, c5) in the run."
    parts = []
    for family, label in (("AR1k", "proposal recall (AR1k)"), ("AP", "detector AP")):
        gains = claim[family]["gains"]
        if not gains:
            parts.append(f"{label}: no objects of some size to compare")
            continue
        listed = ", ".join(
            f"{k.replace('AR1k_', '').replace('AP', '') or k} {v:+.1f}" for k, v in gains.items()
        )
        parts.append(f"{label} gains over the best baseline (points, s/m/l): {listed}")
    verdict = (
        "held: FPN's largest gain is on small objects for both proposals and detection"
        if claim["holds"]
        else "did not fully hold in this run: FPN's largest gain is not on "
        "small objects for " + " and ".join(f for f in ("AR1k", "AP") if not claim[f]["small_largest"])
    )
    return f"The paper's claim {verdict}. " + "; ".join(parts) + "."


def to_markdown(result: dict[str, Any]) -> str:
    s, env = result["settings"], result["environment"]
    lines = [
        "| " + " | ".join(header()) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header()) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(format_row(r)) + " |" for r in result["rows"]]
    lines += [
        "",
        f"Budget {s['budget']:g}: {s['iters']} iterations of {s['batch_size']} images per neck, "
        f"{s['train_images']} training and {s['val_images']} validation images ({s['data']}), seed "
        f"{s['seed']}, preset {s['preset']}"
        + (f", backbone weights {s['backbone_weights']}" if "backbone_weights" in s else "")
        + f"; torch {env['torch']}, {env['threads']} thread(s), "
        f"{sum(r['train_seconds'] or 0 for r in result['rows']) / 60:.1f} min of training in all. AR: RPN proposals (top {s['proposals']} after NMS, "
        "class-agnostic, IoU 0.50:0.95); AP: detector at the preset's inference settings. Every neck's RPN "
        "keeps the pre-NMS candidates of a five-level pyramid (a single-level baseline keeps 5x the "
        "per-level top-n). params: those an inference pass uses (c4 skips conv5); time: median of "
        "one-image forward passes.",
        "",
        claim_sentence(result["claim"]),
        "",
    ]
    return "\n".join(lines)
