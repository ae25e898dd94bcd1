"""COCO box evaluation: the 12 standard numbers and a per-class table, from a results list or a model.

The numbers are pycocotools' ``COCOeval`` numbers on the same inputs. ``faster-coco-eval``
(the optional extra ``fast``: ``pip install "fpncli[fast]"``) implements the same matching
and accumulation in C++; ``backend="auto"`` uses it when it is installed and falls back to
pycocotools otherwise. ``tests/evaluation/test_eval_coco.py`` checks both against pycocotools' own
``COCOeval``; ``scripts/bench_eval.py`` measures the speed-up.

Category ids: result files carry dataset category ids (COCO's 1..90 with gaps); the model
predicts contiguous labels, and label ``i`` is ``model.config.category_ids[i - 1]``. For
torchvision's COCO_V1 weights those ids are 1..90 (label = COCO id, "N/A" for unused ids).

The results and the annotation file are checked first (:mod:`fpncli.evaluation.checks`).
This module imports neither torch nor matplotlib at import time: evaluating a results file
needs neither, and plots import matplotlib only when asked for.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpncli.atomic import write_json
from fpncli.data.coco import safe_image_path
from fpncli.errors import FpnError
from fpncli.evaluation.checks import (
    GroundTruth,
    check_category_mapping,
    counted,
    load_ground_truth,
)
from fpncli.evaluation.coco_eval import (
    METRIC_KEYS,
    detections_to_coco,
    resolve_backend,
)
from fpncli.evaluation.metrics import PER_CLASS_KEYS, _evaluate, evaluate_results

__all__ = ["METRIC_KEYS", "PER_CLASS_KEYS", "EvalOptions", "evaluate_model", "evaluate_results", "run_eval"]
from fpncli.inference.backends import EXACT, PathChoice, choose_path, prepare_path
from fpncli.inference.settings import (
    InferenceArgs,
    check_half,
    check_inference_options,
    inference_overrides,
    resolve_parallelism,
)
from fpncli.runtime.events import ProgressFn

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.evaluation.analysis.report import AnalyzeOptions


def evaluate_model(
    model: Any,
    annotation_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    out_dir: str | os.PathLike | None = None,
    device: Any = "cpu",
    batch_size: int = 2,
    workers: int = 0,
    plots: bool = False,
    progress: ProgressFn | None = None,
    backend: str = "auto",
    weights: str | None = None,
    max_images: int | None = None,
    half: bool = False,
    sharded: bool = False,
    inference: dict[str, Any] | None = None,
    cpu_replicas: int = 0,
    analyze: AnalyzeOptions | None = None,
    max_pixels: int | None = None,
    ground_truth: GroundTruth | None = None,
) -> dict[str, Any] | None:
    """Run ``model`` over the annotated images and evaluate its detections.

    Args:
        model: an :class:`~fpncli.modeling.detector.FPNFasterRCNN` (anything with
            ``.config.category_ids`` that :func:`~fpncli.inference.predict.predict_images` runs).
        annotation_file: COCO annotations of the images.
        images_dir: the folder the ``file_name`` entries are relative to.
        out_dir: when given, ``detections.json`` (COCO results) and ``metrics.json`` go there.
        device, batch_size, workers: inference settings (see ``predict_images``).
        plots: save precision-recall curves into ``out_dir``.
        progress: receives ``{"event": "image", "done", "total"}`` after each image.
        backend: evaluation backend (see :func:`evaluate_results`).
        weights: recorded in the metrics.
        max_images: evaluate only the first N images of the file (quick checks).
        half: float16 autocast for the forward pass (CUDA only; see ``predict_images``).
        sharded: under torchrun, split the images over the processes (every rank calls this;
            see :func:`~fpncli.inference.sharded.predict_sharded`); rank 0
            evaluates and writes, the others return None.
        inference: recorded in the metrics as ``inference`` (e.g. slicing and TTA settings).
        cpu_replicas: on the CPU, this many single-threaded model replicas detect whole
            images (``batch_size`` and ``workers`` are then unused; see ``predict_images``):
            every image is computed alike however the run is split (0: batched, one process).
        analyze: run the error analysis too (see :func:`evaluate_results`); the model records
            each detection's pyramid levels (``modeling/level_record.py``) for it.
        max_pixels: refuse larger images (see ``predict_images``).
        ground_truth: ``annotation_file`` already loaded (:func:`load_ground_truth`), for a
            caller that evaluates several runs on one file.

    Returns:
        The metrics of :func:`evaluate_results`, plus ``missing_images`` (file names not
        found on disk), ``skipped_images`` (``"file: reason"`` for unreadable images or bad
        paths); those images are left out of the evaluation, the rest are evaluated.
    """
    from fpncli.inference.predict import predict_images
    from fpncli.inference.sharded import is_main, predict_sharded

    gt = ground_truth if ground_truth is not None else load_ground_truth(annotation_file)
    coco = gt.coco
    category_ids = list(model.config.category_ids)
    mapping_notes = check_category_mapping(category_ids, list(model.config.class_names), coco)
    paths, path_ids, missing, skipped = select_images(coco, images_dir, max_images)
    if not paths:
        where = f"{images_dir}" if Path(images_dir).is_dir() else f"{images_dir} (no such folder)"
        which = (
            f"the first {max_images} of the {len(coco.images)} images"
            if max_images is not None and max_images < len(coco.images)
            else f"the {len(coco.images)} images"
        )
        raise FpnError(f"none of {which} of {coco.path} were found in {where}")
    keep = set(coco.categories.category_ids)
    if analyze is not None:
        from fpncli.evaluation.analysis.model_levels import attach_levels, collect_levels, level_recorder
    recorder = level_recorder(model) if analyze is not None else None
    if recorder is not None:
        recorder.record_levels = True
    detections: list[dict[str, Any]] = []
    evaluated: list[int] = []
    dropped = 0
    for done, (img_id, result) in enumerate(
        zip(
            path_ids,
            (predict_sharded if sharded else predict_images)(
                model,
                paths,
                device=device,
                batch_size=batch_size,
                workers=workers,
                half=half,
                cpu_processes=cpu_replicas,
                threads_per_image=1 if cpu_replicas else None,
                max_pixels=max_pixels,
            ),
        ),
        start=1,
    ):
        if result.error:
            skipped.append(result.error)  # already "path: reason"
        else:
            evaluated.append(img_id)
            dets = detections_to_coco(
                result.boxes.tolist(), result.scores.tolist(), result.labels.tolist(), img_id, category_ids
            )
            if recorder is not None:
                attach_levels(result, dets, len(category_ids))
            kept = [d for d in dets if d["category_id"] in keep]
            dropped += len(dets) - len(kept)
            detections.extend(kept)
        if progress is not None:
            progress({"event": "image", "done": done, "total": len(paths)})
    if recorder is not None:
        recorder.record_levels = False
    if sharded and not is_main():
        return None  # this rank's results went to rank 0
    levels = collect_levels(model, detections) if analyze is not None else None
    if dropped:
        mapping_notes.append(
            f"{counted(dropped, 'detection')} of classes that {coco.path.name} does not have "
            f"{'was' if dropped == 1 else 'were'} dropped"
        )
    if out_dir is not None:
        write_json(Path(out_dir) / "detections.json", detections, indent=None)
    if not evaluated:
        raise FpnError(f"none of the {len(paths)} images found could be read (first: {skipped[-1]})")
    extra: dict[str, Any] = {
        "missing_images": missing,
        "skipped_images": skipped,
        "detections_file": str(Path(out_dir) / "detections.json") if out_dir is not None else None,
    }
    if inference:
        extra["inference"] = inference
    metrics = _evaluate(
        gt,
        detections,
        out_dir=out_dir,
        plots=plots,
        backend=backend,
        image_ids=evaluated,
        weights=weights,
        extra=extra,
        analyze=analyze,
        levels=levels,
    )
    metrics["problems"] = mapping_notes + metrics["problems"]
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------- the command


@dataclass(kw_only=True)
class EvalOptions(InferenceArgs):
    """What ``fpn eval`` evaluates: a results file (``results``) or a model (``weights`` run
    over ``images`` with the inference options of
    :class:`~fpncli.inference.settings.InferenceArgs`), against ``annotations``; outputs go
    to ``out``."""

    annotations: Path
    results: Path | None = None
    images: Path | None = None
    weights: str | None = None
    out: Path = Path("runs/eval")
    plots: bool = False
    coco_backend: str = "auto"  # the COCO evaluation's (see coco_eval.py); backend: the model's path
    max_images: int | None = None
    analyze: AnalyzeOptions | None = None  # fpn eval --analyze

    def check(self) -> list[str]:
        """Raise on contradictory options; returns notes (ignored options)."""
        check_inference_options(self)
        if self.results is not None and self.weights is not None:
            raise FpnError(
                "give either --results (evaluate a results file) or --weights (run a model), not both"
            )
        if self.results is None and self.weights is None:
            raise FpnError("give --results DETS.json, or --weights W --images DIR to run a model")
        if self.results is None and self.images is None:
            raise FpnError("--weights needs --images, the folder of the annotated images")
        if self.weights == "none":
            raise FpnError(
                "--weights none would evaluate a random model; give a checkpoint, a state dict or 'coco'"
            )
        notes = []
        if self.analyze is not None:
            self.analyze.check()
        if self.results is not None and (
            self.max_images is not None or (self.images is not None and self.analyze is None)
        ):
            notes.append("--images/--max-images are ignored with --results")
        if self.results is not None and (self.slice_size is not None or self.tta is not None):
            notes.append("--slice/--tta are ignored with --results (they change how a model runs)")
        return notes


def run_eval(options: EvalOptions, progress: ProgressFn | None = None) -> dict[str, Any] | None:
    """``fpn eval``: check the options and outputs before any work, then evaluate the results
    file, or load the model and evaluate it (sharded over the processes under torchrun).

    ``progress`` gets ``{"event": "warning", "message"}`` for ignored options and
    ``{"event": "image", "done", "total"}`` after each image of a model run. Returns the metrics (see
    :func:`evaluate_results`), or None on torchrun ranks other than 0 (rank 0 reports).
    """
    import os as _os

    from fpncli.outputs import check_outputs

    for note in options.check():
        if progress is not None:
            progress({"event": "warning", "message": note})
    out = options.out
    weights = options.weights
    # Results mode writes no detections.json: `--results OUT/detections.json --out OUT`
    # (re-scoring a model run's detections) is fine.
    names: tuple[str, ...] = ("metrics.json", "pr_overall.png", "pr_per_class.png")
    names += ("detections.json",) if options.results is None else ()
    names += ("analysis.json",) if options.analyze is not None else ()
    if options.analyze is not None:
        options.analyze.images = options.images  # the gallery draws from it
    check_outputs(
        folders=[out, out / "analysis" if options.analyze is not None else None],
        files=[out / n for n in names],
        inputs=[
            options.annotations,
            options.results,
            weights if weights not in (None, "coco", "none") else None,
        ],
    )
    if options.results is not None:
        # Results mode never imports torch: the evaluation is pure pycocotools / numpy.
        if int(_os.environ.get("RANK", "0")) != 0:
            return None  # under torchrun there is nothing to share: rank 0 evaluates the file
        return evaluate_results(
            options.annotations,
            options.results,
            out_dir=out,
            plots=options.plots,
            backend=options.coco_backend,
            analyze=options.analyze,
        )
    from fpncli.inference.sharded import cpu_cores, inference_device
    from fpncli.modeling.weights import load_for_inference
    from fpncli.weight_files import exported_format

    resolve_backend(options.coco_backend)  # fail before loading a model
    # An exported file (fpn export) runs on the CPU: "auto" means the CPU for it.
    exported = weights not in (None, "coco", "none") and exported_format(weights) is not None
    device = inference_device("cpu" if exported and options.device == "auto" else options.device)
    check_half(options, device.type)
    assert weights is not None and options.images is not None  # check() made sure
    cuda = device.type == "cuda"
    plan = resolve_parallelism(options, cuda, cores=cpu_cores())
    needs_torch = options.slice_size is not None or options.tta is not None or options.analyze is not None
    # Loaded once for every run below (a reduced precision is evaluated beside fp32).
    gt = load_ground_truth(options.annotations)
    pool = _image_files(options.images, options.max_images)
    if options.dtype == "int8" and options.calibrate is None and not exported:
        # int8 calibrates on a sample of the images evaluated: the annotation file's.
        pool = select_images(gt.coco, options.images, options.max_images)[0]
    choice = choose_path(options, device.type, exported=exported, images=len(pool), needs_torch=needs_torch)
    model, source = load_for_inference(weights, **inference_overrides(options))
    candidates = ("torch", "winograd") if needs_torch else EXACT

    def prepared(model: Any, choice: PathChoice, args: EvalOptions) -> tuple[Any, PathChoice]:
        model, choice = prepare_path(
            model, args, choice, device.type, pool, source, progress, candidates=candidates
        )
        from fpncli.inference.augment import augmented, check_slice, parse_tta

        model = augmented(
            model,
            check_slice(args.slice_size, args.slice_overlap),
            parse_tta(args.tta),
            max_pixels=args.max_pixels,
        )
        return model, choice

    def run(model: Any, choice: PathChoice, args: EvalOptions, out_dir: Path | None) -> dict[str, Any] | None:
        if progress is not None:
            progress({"event": "note", "message": f"path: {choice.describe()}"})
        assert options.images is not None  # check() made sure
        metrics = evaluate_model(
            model,
            options.annotations,
            options.images,
            out_dir=out_dir,
            device=device,
            batch_size=plan.batch_size,
            workers=plan.workers if cuda else 0,
            plots=options.plots and out_dir is not None,
            backend=options.coco_backend,
            weights=source,
            max_images=options.max_images,
            half=args.dtype == "fp16",
            sharded=True,
            progress=progress,
            inference=_inference_settings(args),
            # A convolution's float sums depend on its thread count: one thread per image, the
            # cores used by image-level replicas, makes every layout (one process, torchrun on
            # any number of processes) compute each image alike, so results are byte-identical.
            cpu_replicas=plan.cpu_replicas,
            analyze=args.analyze if out_dir is not None else None,
            max_pixels=args.max_pixels,
            ground_truth=gt,
        )
        if metrics is not None:
            metrics["path"] = choice.describe()
        return metrics

    # The cost of reduced precision, shown before anyone deploys it: the same model at fp32
    # (an exported file has no float model beside it). Copied before the reduced path
    # rewrites the model, which is prepared first: a refusal, calibration or quantization
    # problem ends the run before an hour of fp32 evaluation, not after.
    compare = options.dtype in ("bf16", "int8") and not exported
    float_model = copy.deepcopy(model) if compare else None
    model, choice = prepared(model, choice, options)
    reference = None
    if float_model is not None:
        exact = dataclasses.replace(
            options, precision="fp32", half=False, backend="auto", calibrate=None, calibration=None
        )
        exact_choice = choose_path(
            exact, device.type, exported=False, images=len(pool), needs_torch=needs_torch
        )
        reference = run(*prepared(float_model, exact_choice, exact), exact, None)
    elif exported and choice.precision == "int8" and progress is not None:
        progress(
            {
                "event": "note",
                "message": "an int8 file: no fp32 model beside it to compare with (evaluate the checkpoint it came from)",
            }
        )
    metrics = run(model, choice, options, out)
    if metrics is not None and reference is not None:
        metrics["fp32"] = {key: reference[key] for key in METRIC_KEYS} | {"path": reference["path"]}
        write_json(Path(out) / "metrics.json", metrics)
    elif metrics is not None:
        write_json(Path(out) / "metrics.json", metrics)
    return metrics


def select_images(
    coco: Any, images_dir: str | os.PathLike, max_images: int | None
) -> tuple[list[Path], list[int], list[str], list[str]]:
    """``(paths, image ids, missing file names, skipped "file: reason")`` of the images of
    ``coco`` (a loaded annotation file) to evaluate: its first ``max_images`` entries, in file
    order, found in ``images_dir``."""
    missing: list[str] = []
    skipped: list[str] = []
    paths: list[Path] = []
    path_ids: list[int] = []
    for index, (img_id, rec) in enumerate(coco.images.items()):
        if max_images is not None and len(paths) + len(missing) + len(skipped) >= max_images:
            break
        try:
            path = safe_image_path(images_dir, rec["file_name"], source=f"{coco.path}: images[{index}]")
        except FpnError as exc:
            skipped.append(str(exc))
            continue
        if not path.is_file():
            missing.append(str(rec["file_name"]))
            continue
        paths.append(path)
        path_ids.append(img_id)
    return paths, path_ids, missing, skipped


def _image_files(folder: Path | None, limit: int | None) -> list[Path]:
    """The images of the evaluation folder (int8 calibrates on a sample of them; their
    number decides whether ``--backend auto`` measures the paths)."""
    from fpncli.data.sources import expand_sources

    if folder is None or not Path(folder).is_dir():
        return []
    try:
        found = expand_sources([folder], recursive=True)
    except FpnError:
        return []
    return found[:limit] if limit is not None else found


def _inference_settings(options: EvalOptions) -> dict[str, Any] | None:
    """Slicing and TTA settings as recorded in metrics.json (None when neither is used)."""
    if options.slice_size is None and options.tta is None:
        return None
    out: dict[str, Any] = {"tta": options.tta}
    if options.slice_size is not None:
        from fpncli.inference.augment import check_slice

        spec = check_slice(options.slice_size, options.slice_overlap)
        assert spec is not None
        out.update(slice=spec.size, slice_overlap=spec.overlap)
    return out
