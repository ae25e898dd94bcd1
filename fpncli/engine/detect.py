"""`fpn detect` as a plain function: expand sources, run the model, write JSON and pictures.

Outputs in ``out_dir``:
    predictions.json   ``{"images": [{"file", "width", "height", "detections": [{"box":
                       [x1, y1, x2, y2], "score", "category_id", "label"}]}], "errors":
                       [{"file", "error"}]}``; boxes in original-image pixels (EXIF
                       orientation applied). Rewritten atomically every few seconds, so it
                       is valid for the images done so far even after Ctrl-C or a crash.
    --coco-results     ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.
    annotated images   one per readable input, at the input's path relative to the common
                       folder of all inputs (so equal names in different folders never
                       collide), with ``_det`` added when that would be the input itself.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpncli.atomic import write_json
from fpncli.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, is_image_file
from fpncli.errors import FpnError

PREDICTIONS_FILE = "predictions.json"
_GLOB_CHARS = set("*?[")
# Rewriting predictions.json at most this often (and less often as it grows, see run_detect)
# keeps a 10k-image run from spending its time rewriting the file.
_FLUSH_SECONDS = 2.0
# Annotated images waiting to be encoded; bounds memory when drawing is slower than the model.
_MAX_PENDING_DRAWS = 8


@dataclass
class DetectOptions:
    """Everything `fpn detect` needs besides the sources (``None`` = the model's own value)."""

    weights: str
    out_dir: Path
    score_thr: float = 0.5
    nms_iou: float | None = None
    max_dets: int | None = None
    classes: list[str] | None = None
    min_size: int | None = None
    max_size: int | None = None
    batch_size: int | None = None  # None: 2 on CUDA, 1 on CPU
    # None: up to 4. On CUDA: decoding processes. On the CPU: model replicas, each decoding
    # and detecting whole images (0: everything in this process).
    workers: int | None = None
    device: str = "auto"
    half: bool = False
    draw: bool = True
    recursive: bool = False
    coco_results: Path | None = None
    coco_annotations: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    optimize: bool = True


@dataclass
class DetectSummary:
    """What a run did: counts, per-class detections, speed, where the outputs are."""

    images_total: int
    images_read: int = 0
    images_failed: int = 0
    detections: int = 0
    per_class: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    interrupted: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)
    predictions_path: Path | None = None
    coco_results_path: Path | None = None
    coco_unmatched: list[str] = field(default_factory=list)
    device: str = "cpu"
    weights: str = ""
    predictions: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        done = self.images_read + self.images_failed
        return done / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- sources


def expand_sources(
    sources: Sequence[str | os.PathLike], recursive: bool = False, exclude: Path | None = None
) -> list[Path]:
    """Image paths from files, folders and glob patterns, in a stable order, without repeats.

    A file is taken as given (whatever its extension: reading it will say if it is no
    image); a folder gives its files with an image extension (``--recursive``: also in
    sub-folders), sorted; a glob pattern gives its sorted matches (``**`` only with
    ``recursive``). Files under ``exclude`` (the output folder) are skipped inside folders.

    Raises:
        FpnError: a source that does not exist or matches no image.
    """
    if not sources:
        raise FpnError("no SOURCE given: pass image files, folders or glob patterns")
    exclude_resolved = exclude.resolve() if exclude is not None else None
    seen: set[Path] = set()
    out: list[Path] = []

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)

    for source in sources:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_dir():
            found = _folder_images(path, recursive, exclude_resolved)
            if not found:
                hint = "" if recursive else " (use --recursive to look in sub-folders)"
                raise FpnError(f"{text}: folder has no images ({', '.join(IMAGE_EXTENSIONS)}){hint}")
        elif path.exists() or path.is_symlink():
            found = [path]
        elif _GLOB_CHARS & set(text):
            found = []
            for match in sorted(glob.glob(os.path.expanduser(text), recursive=recursive)):
                m = Path(match)
                if m.is_dir():
                    found.extend(_folder_images(m, recursive, exclude_resolved))
                elif is_image_file(m):
                    found.append(m)
            if not found:
                raise FpnError(f"{text}: pattern matches no images")
        else:
            raise FpnError(f"{text}: no such file or folder")
        for p in found:
            add(p)
    return out


def _folder_images(folder: Path, recursive: bool, exclude: Path | None) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    found = []
    for p in sorted(folder.glob(pattern)):
        if not is_image_file(p) or p.is_dir():
            continue
        if exclude is not None and exclude in p.resolve().parents:
            continue  # our own annotated images from an earlier run
        found.append(p)
    return found


def output_paths(paths: Sequence[Path], out_dir: Path) -> list[Path]:
    """Where the annotated copy of each input goes: its path relative to the inputs' common
    folder, under ``out_dir``; ``<stem>_det<suffix>`` when that is an input file itself."""
    if not paths:
        return []
    absolute = [Path(os.path.abspath(p)) for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    inputs = {p.resolve() for p in absolute}
    out = []
    for p in absolute:
        target = out_dir / p.relative_to(common)
        if target.resolve() in inputs:
            target = target.with_name(f"{target.stem}_det{target.suffix}")
        out.append(target)
    return out


# --------------------------------------------------------------------------- classes


def resolve_classes(
    class_names: Sequence[str], category_ids: Sequence[int], wanted: Sequence[str] | None
) -> set[int]:
    """The model labels (1..K) to report: ``wanted`` names or category ids (comma-separated
    items allowed), or all; placeholder classes (``N/A`` in torchvision's COCO_V1) never."""
    from fpncli.modeling.weights import UNUSED_CLASS

    usable = {i + 1 for i, name in enumerate(class_names) if name != UNUSED_CLASS}
    if not wanted:
        return usable
    by_name = {name.lower(): i + 1 for i, name in enumerate(class_names) if name != UNUSED_CLASS}
    by_id = {cid: i + 1 for i, cid in enumerate(category_ids) if i + 1 in usable}
    labels: set[int] = set()
    for item in wanted:
        for token in (t.strip() for t in str(item).split(",")):
            if not token:
                continue
            if token.lower() in by_name:
                labels.add(by_name[token.lower()])
            elif token.lstrip("-").isdigit() and int(token) in by_id:
                labels.add(by_id[int(token)])
            else:
                examples = ", ".join([n for n in class_names if n != UNUSED_CLASS][:8])
                raise FpnError(
                    f"--classes: {token!r} is neither a class name nor a category id of "
                    f"this model (classes include: {examples}...)"
                )
    return labels


# --------------------------------------------------------------------------- writing
def _coco_image_ids(paths: Sequence[Path], annotations: Path | None) -> tuple[dict[int, int], list[str]]:
    """Input index -> COCO image id, and the files the annotation file does not list.

    With an annotation file an image matches the entry whose ``file_name`` ends its path
    (so ``val2017/x.jpg`` and ``x.jpg`` both work); otherwise ids are 1..N in input order.
    """
    if annotations is None:
        return {i: i + 1 for i in range(len(paths))}, []
    from fpncli.data.coco import read_json

    data = read_json(annotations)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FpnError(f"{annotations}: not a COCO annotation file (no 'images' list)")
    by_name: dict[str, list[tuple[str, int]]] = {}
    for entry in data["images"]:
        if isinstance(entry, dict) and "file_name" in entry and "id" in entry:
            name = str(entry["file_name"]).replace("\\", "/")
            by_name.setdefault(name.rsplit("/", 1)[-1], []).append((name, entry["id"]))
    ids, unmatched = {}, []
    for i, p in enumerate(paths):
        posix = Path(os.path.abspath(p)).as_posix()
        candidates = [c for c in by_name.get(p.name, []) if posix.endswith("/" + c[0]) or posix == c[0]]
        if candidates:
            ids[i] = candidates[0][1]
        else:
            unmatched.append(str(p))
    return ids, unmatched


def _save_annotated(result, target: Path, names: list[str], keys: list[int]) -> None:
    from PIL import Image

    from fpncli.viz.draw import draw_detections

    image = Image.fromarray(result.image.permute(1, 2, 0).numpy())
    drawn = draw_detections(image, result.boxes.tolist(), names, result.scores.tolist(), keys)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    fmt = Image.registered_extensions().get(target.suffix.lower(), "PNG")
    params = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    try:
        drawn.save(tmp, format=fmt, **params)
        os.replace(tmp, target)
    except OSError as exc:
        raise FpnError(f"{target}: cannot write the annotated image ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------- the run


def run_detect(
    sources: Sequence[str | os.PathLike],
    options: DetectOptions,
    on_start: Callable[[int, str, str], None] | None = None,
    on_image: Callable[[dict[str, Any], DetectSummary], None] | None = None,
) -> DetectSummary:
    """Detect objects in every image of ``sources``; see the module docstring for outputs.

    Args:
        sources: files, folders and glob patterns (see :func:`expand_sources`).
        options: model, thresholds, speed and output settings.
        on_start: called once with (number of images, device, weights description).
        on_image: called after each image with its record (``predictions.json`` entry, or
            ``{"file", "error"}``) and the running summary.

    Returns:
        The summary; ``summary.predictions`` holds what ``predictions.json`` holds.
        Ctrl-C ends the run early with ``summary.interrupted`` set and all outputs valid.
    """
    out_dir = Path(options.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FpnError(f"{out_dir}: exists and is not a folder")
    paths = expand_sources(sources, options.recursive, exclude=out_dir)  # fail fast, before torch

    import torch

    from fpncli.engine import distributed_inference as DI
    from fpncli.engine.coco_eval import detections_to_coco
    from fpncli.modeling.weights import load_detector

    if not 0.0 <= options.score_thr <= 1.0:
        raise FpnError(f"--score-thr must be in 0..1, got {options.score_thr}")
    if options.nms_iou is not None and not 0.0 < options.nms_iou <= 1.0:
        raise FpnError(f"--nms-iou must be in (0, 1], got {options.nms_iou}")
    if options.max_dets is not None and options.max_dets < 1:
        raise FpnError(f"--max-dets must be at least 1, got {options.max_dets}")
    device = DI.inference_device(options.device)  # under torchrun: this process's GPU
    main, world = DI.is_main(), DI.world()[1]  # under torchrun only rank 0 writes the JSON files
    if options.half and device.type != "cuda":
        raise FpnError("--half (float16) needs a CUDA device; this run is on the CPU")

    loaded = load_detector(
        options.weights,
        min_size=options.min_size,
        max_size=options.max_size,
        box_score_thresh=options.score_thr,
        box_nms_thresh=options.nms_iou,
        box_detections_per_img=options.max_dets,
    )
    model = loaded.model
    cfg = model.config
    keep = resolve_classes(cfg.class_names, cfg.category_ids, options.classes)
    max_dets = cfg.box_detections_per_img
    filtered = len(keep) < len(cfg.class_names)
    if filtered:
        # Filter before the top-k cut, not after it: let the model keep every detection,
        # drop the unwanted classes, then take the best max_dets.
        model.set_detections_per_img(1_000_000)
    if options.optimize:
        from fpncli.modeling.optimize import optimize_for_inference

        # CPU: NNPACK's Winograd needs NCHW; CUDA: channels-last feeds the tensor cores.
        model = optimize_for_inference(
            model, inplace=True, winograd=device.type == "cpu", channels_last=device.type == "cuda"
        )
    cuda = device.type == "cuda"
    batch_size = options.batch_size or (2 if cuda else 1)
    # The cores of a machine are shared by its torchrun processes.
    cores = max(1, (os.cpu_count() or 1) // DI.local_world_size())
    workers = options.workers if options.workers is not None else min(4, cores)
    # On the CPU each worker is a whole single-threaded model replica (see predict_images).
    cpu_processes = workers if not cuda else 0

    out_dir.mkdir(parents=True, exist_ok=True)
    targets = output_paths(paths, out_dir) if options.draw else []
    image_ids, unmatched = ({}, [])
    if options.coco_results is not None:
        image_ids, unmatched = _coco_image_ids(paths, options.coco_annotations)
    summary = DetectSummary(
        images_total=len(paths),
        device=str(device) if world == 1 else f"{device.type} x {world} processes",
        weights=loaded.source,
        predictions_path=out_dir / PREDICTIONS_FILE,
        coco_unmatched=unmatched,
    )
    images: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = summary.errors
    coco: list[dict[str, Any]] = []
    summary.predictions = {"images": images, "errors": errors}

    if options.coco_results is not None:
        Path(options.coco_results).parent.mkdir(parents=True, exist_ok=True)

    def flush() -> None:
        if not main:
            return
        write_json(summary.predictions_path, summary.predictions, indent=None)
        if options.coco_results is not None:
            write_json(Path(options.coco_results), coco, indent=None)

    index = {p: i for i, p in enumerate(paths)}
    drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fpn-draw") if options.draw else None
    pending: list[Future] = []

    def select(result):
        """The result's boxes, scores and labels of the wanted classes (best max_dets)."""
        if not filtered:
            return result.boxes, result.scores, result.labels
        mask = torch.tensor([int(label) in keep for label in result.labels.tolist()], dtype=torch.bool)
        return result.boxes[mask][:max_dets], result.scores[mask][:max_dets], result.labels[mask][:max_dets]

    def draw(result) -> None:
        """Queue the annotated picture; under torchrun on the process that holds the pixels."""
        if drawer is None or result.error is not None:
            return
        boxes, scores, labels = select(result)
        names = [cfg.class_names[label - 1] for label in labels.tolist()]
        cat_ids = [cfg.category_ids[label - 1] for label in labels.tolist()]
        drawn = dataclasses.replace(result, boxes=boxes, scores=scores)
        pending.append(drawer.submit(_save_annotated, drawn, targets[index[result.path]], names, cat_ids))
        while pending and (pending[0].done() or len(pending) > _MAX_PENDING_DRAWS):
            pending.pop(0).result()  # re-raises a failed write

    start = time.perf_counter()
    last_flush, flush_every = start, _FLUSH_SECONDS
    flush()  # a valid (empty) file from the first moment
    if on_start is not None:
        on_start(len(paths), summary.device, loaded.source)
    try:
        for result in DI.predict_sharded(
            model,
            paths,
            device=device,
            batch_size=batch_size,
            workers=workers,
            half=options.half,
            max_pixels=options.max_pixels,
            keep_images=options.draw,
            cpu_processes=cpu_processes,
            on_local=draw,
        ):
            i = index[result.path]
            if result.error is not None:
                record: dict[str, Any] = {"file": str(result.path), "error": result.error}
                errors.append(record)
                summary.images_failed += 1
            else:
                boxes, scores, labels = select(result)
                label_list = labels.tolist()
                cat_ids = [cfg.category_ids[label - 1] for label in label_list]
                names = [cfg.class_names[label - 1] for label in label_list]
                detections = [
                    {
                        "box": [round(v, 2) for v in box],
                        "score": round(score, 4),
                        "category_id": cid,
                        "label": name,
                    }
                    for box, score, cid, name in zip(boxes.tolist(), scores.tolist(), cat_ids, names)
                ]
                record = {
                    "file": str(result.path),
                    "width": result.width,
                    "height": result.height,
                    "detections": detections,
                }
                if options.coco_results is not None and i in image_ids:
                    record["image_id"] = image_ids[i]
                    coco.extend(
                        detections_to_coco(
                            boxes.tolist(), scores.tolist(), label_list, image_ids[i], cfg.category_ids
                        )
                    )
                images.append(record)
                summary.images_read += 1
                summary.detections += len(detections)
                summary.per_class.update(names)
            summary.seconds = time.perf_counter() - start
            if on_image is not None:
                on_image(record, summary)
            if time.perf_counter() - last_flush >= flush_every:
                t0 = time.perf_counter()
                flush()
                last_flush = time.perf_counter()
                # A big run's file takes long to rewrite: keep that under ~10% of the time.
                flush_every = max(_FLUSH_SECONDS, 10 * (last_flush - t0))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if drawer is not None:
            drawer.shutdown(wait=True)
        summary.seconds = time.perf_counter() - start
        flush()
    for f in pending:
        f.result()
    if options.coco_results is not None:
        summary.coco_results_path = Path(options.coco_results)
    return summary
