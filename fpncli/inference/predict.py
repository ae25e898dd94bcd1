"""Batched inference over image files: the one pipeline behind `fpn detect` and `fpn eval`.

Images are decoded, normalised and resized in DataLoader workers with the model's own
transform (so the result is exactly what ``model([image])`` would compute), grouped into
batches of equal padded size, forwarded, and yielded in input order. An unreadable image
yields a result with ``error`` set; it never stops the others.

Why batches of equal padded size: torchvision pads every image of a batch to the largest
one, and the padding changes the feature maps near the border, hence the detections. Only
images that would be padded to the same size anyway are batched together, so the batch
size changes the speed, never the output.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor

from fpncli.data.images import ImageReadError, default_max_pixels, read_image
from fpncli.errors import FpnError, first_line
from fpncli.runtime.interrupts import workers_ignore_sigterm

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.modeling.detector import FPNFasterRCNN


@dataclass
class ImageResult:
    """Detections for one input image.

    Attributes:
        path: the input file.
        width, height: size of the upright image (EXIF orientation applied), pixels.
        boxes: ``Tensor[N, 4]`` float32, xyxy in that image's pixels (CPU).
        scores: ``Tensor[N]`` float32 in 0..1, decreasing.
        labels: ``Tensor[N]`` int64, the model's contiguous labels 1..K.
        error: why the image could not be used (then N = 0), else None.
        image: the decoded upright image, ``Tensor[3, H, W]`` uint8 (CPU), only when
            :func:`predict_images` is asked to keep images (for drawing); else None.
        extra: more per-detection ``Tensor[N]`` the model returned (``rpn_level`` and
            ``roi_level`` while it records levels, see ``modeling/level_record.py``).
    """

    path: Path
    width: int
    height: int
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    error: str | None = None
    image: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)


class _Item(NamedTuple):
    position: int  # in the input list
    original: Tensor | None  # uint8 [3, H, W] when images are kept
    prepared: Tensor | None  # float32 [3, h, w]: normalised and resized by the model's transform
    size: tuple[int, int]  # (H, W) of the upright image
    error: str | None


class _ImageFiles(Dataset):
    """Reads and prepares one image per item; runs in DataLoader workers."""

    def __init__(
        self,
        paths: Sequence[Path],
        model: FPNFasterRCNN | None,
        max_pixels: int,
        keep_images: bool,
    ) -> None:
        self.paths = list(paths)
        self.model = model  # forked into DataLoader workers, never pickled
        self.max_pixels = max_pixels
        self.keep_images = keep_images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        path = self.paths[index]
        try:
            if path.is_symlink() and not path.exists():
                raise ImageReadError(f"{path}: broken symbolic link (its target does not exist)")
            img = read_image(path, max_pixels=self.max_pixels)
        except ImageReadError as exc:
            return _Item(index, None, None, (0, 0), str(exc))
        except Exception as exc:  # a decoder bug must not stop the other images
            return _Item(index, None, None, (0, 0), f"{path}: cannot decode ({type(exc).__name__}: {exc})")
        try:
            width, height = img.size
            original = pil_to_tensor(img)  # uint8 [3, H, W]
            del img  # peak memory: a 100 MP image costs ~20 bytes per pixel, not ~40
            model = self.model
            if model is not None:
                problem = model.size_problem(width, height)
                if problem is not None:
                    return _Item(index, None, None, (0, 0), f"{path}: {problem}")
            prepared = original.float().div_(255)  # what torchvision's to_tensor gives
            if model is not None:
                # The model's own normalise-then-resize, bit for bit, in place so that the
                # full-size image is held once.
                prepared = model.prepare_image(prepared, inplace=True)
        except Exception as exc:  # one image that cannot be prepared must not stop the others
            reason = first_line(exc, empty="")
            return _Item(
                index,
                None,
                None,
                (0, 0),
                f"{path}: cannot prepare for the model ({type(exc).__name__}: {reason})",
            )
        size = (original.shape[1], original.shape[2])
        return _Item(index, original if self.keep_images else None, prepared, size, None)


def _extra(out: dict[str, Tensor]) -> dict[str, Tensor]:
    """The per-detection outputs beyond boxes, scores and labels (CPU)."""
    return {k: v.cpu() for k, v in out.items() if k not in ("boxes", "scores", "labels")}


def _identity(item):
    return item


class _DetectInWorker(Dataset):
    """Reads, prepares and detects one image per item: each DataLoader worker is a whole
    single-threaded model replica (CPU image-level parallelism, see :func:`predict_images`)."""

    def __init__(self, files: _ImageFiles, model: FPNFasterRCNN, threads: int) -> None:
        self.files, self.model, self.threads = files, model, threads

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[_Item, dict[str, Tensor] | None]:
        if self.threads and torch.get_num_threads() != self.threads:  # 0: leave them be
            torch.set_num_threads(self.threads)
        item = self.files[index]
        if item.error is not None:
            return item, None
        try:
            with torch.inference_mode():
                out = _forward(self.model, [item], torch.device("cpu"), half=False)[0]
        except Exception as exc:  # this image alone: report it, keep the others going
            reason = first_line(exc, empty="")
            path = self.files.paths[index]
            return item._replace(
                prepared=None, error=f"{path}: detection failed ({type(exc).__name__}: {reason})"
            ), None
        return item._replace(prepared=None), out


def _forward(
    model: FPNFasterRCNN, items: list[_Item], device: torch.device, half: bool
) -> list[dict[str, Tensor]]:
    """The model's detections for prepared images (see ``FPNFasterRCNN.detect_prepared``)."""
    images = []
    for it in items:
        assert it.prepared is not None  # only prepared images are batched (errors never are)
        images.append(it.prepared.to(device, non_blocking=True))
    return model.detect_prepared(images, [it.size for it in items], half=half)


def _forward_each_on_failure(
    model: FPNFasterRCNN, items: list[_Item], device: torch.device, half: bool
) -> Sequence[dict[str, Tensor] | str]:
    """:func:`_forward`; if the batch fails, each image alone, so one image that cannot pass
    through the model becomes its own error (a string) and never stops the others."""
    try:
        return _forward(model, items, device, half)
    except Exception as exc:
        if len(items) == 1:
            reason = first_line(exc, empty="")
            return [f"detection failed ({type(exc).__name__}: {reason})"]
    return [_forward_each_on_failure(model, [item], device, half)[0] for item in items]


def predict_images(
    model: FPNFasterRCNN,
    paths: Sequence[str | os.PathLike],
    device: torch.device | str = "cpu",
    batch_size: int = 2,
    workers: int = 0,
    on_result: Callable[[ImageResult], None] | None = None,
    *,
    half: bool = False,
    optimize: bool = False,
    max_pixels: int | None = None,
    keep_images: bool = False,
    lookahead: int | None = None,
    cpu_processes: int = 0,
    threads_per_image: int | None = None,
) -> Iterator[ImageResult]:
    """Run ``model`` over ``paths`` in batches, yielding one :class:`ImageResult` per path, in order.

    Args:
        model: an :class:`~fpncli.modeling.detector.FPNFasterRCNN` (or any torchvision
            ``GeneralizedRCNN``); put in eval mode and moved to ``device`` here.
        paths: image files.
        device: where the forward pass runs.
        batch_size: at most this many images per forward pass (only images with the same
            padded size share one, so results do not depend on it).
        workers: DataLoader worker processes decoding and resizing images (0 = in this process).
        on_result: called with each result as it is yielded (progress reporting).
        half: float16 autocast for the forward pass (CUDA only).
        optimize: run an inference-optimised copy of the model (BatchNorm folded into the
            convolutions, channels-last memory); ``model`` itself is left untouched.
        max_pixels: larger images are refused with a "too large" error (default
            :func:`~fpncli.data.images.default_max_pixels`).
        keep_images: also return each decoded image (``ImageResult.image``), e.g. to draw on.
        lookahead: how many decoded images may wait for a batch partner of the same size
            (default ``4 * batch_size``); bounds memory and latency.
        cpu_processes: on the CPU, run this many model replicas in worker processes, each
            reading and detecting whole images with ``torch threads // cpu_processes``
            threads (``batch_size`` and ``workers`` are then unused). On a few cores this
            beats one process using all threads: the serial parts of the detector (RoIAlign,
            NMS, box decoding) no longer leave cores idle, and no op waits at a thread
            barrier. 0 = one process (the only mode on CUDA).
        threads_per_image: with ``cpu_processes``, each replica's torch threads instead of
            ``torch threads // cpu_processes``. A convolution's float sums depend on its
            thread count, so a fixed count computes every image alike, however the images
            are split over processes (``fpn eval`` under torchrun: byte-identical results).
    """
    device = torch.device(device)
    if half and device.type != "cuda":
        raise FpnError("--half (float16) needs a CUDA device; on the CPU run in float32")
    if batch_size < 1:
        raise FpnError(f"batch size must be at least 1, got {batch_size}")
    if optimize:
        from fpncli.modeling.optimize import optimize_for_inference

        model = optimize_for_inference(model)
    model.eval().to(device)
    files = [Path(p) for p in paths]
    lookahead = max(lookahead if lookahead is not None else 4 * batch_size, batch_size)
    if max_pixels is None:
        max_pixels = default_max_pixels()  # read here: a bad $FPN_MAX_PIXELS fails once, up front
    dataset = _ImageFiles(files, model, max_pixels, keep_images)
    if cpu_processes > 0 and device.type == "cpu":
        if getattr(model, "runs_in_threads", False):
            yield from _predict_in_threads(model, dataset, cpu_processes, on_result)
            return
        if not torch.cuda.is_initialized():
            yield from _predict_in_processes(model, dataset, cpu_processes, on_result, threads_per_image)
            return
        # This process holds a CUDA context (a CPU run after GPU work in one program):
        # forking it into replicas hung on the H200 machine (2026-12-04), so detect here.
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
        shuffle=False,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        worker_init_fn=workers_ignore_sigterm,
    )
    empty = torch.zeros((0,))

    buckets: dict[tuple[int, int], list[_Item]] = {}  # padded size -> images waiting
    done: dict[int, ImageResult] = {}  # finished, waiting for earlier ones to be yielded
    next_index = 0

    def run(key: tuple[int, int]) -> None:
        items = buckets[key][:batch_size]
        rest = buckets[key][batch_size:]
        if rest:
            buckets[key] = rest
        else:
            del buckets[key]
        for item, out in zip(items, _forward_each_on_failure(model, items, device, half)):
            if isinstance(out, str):
                done[item.position] = ImageResult(
                    files[item.position],
                    0,
                    0,
                    empty.reshape(0, 4),
                    empty,
                    empty.long(),
                    error=f"{files[item.position]}: {out}",
                )
                continue
            done[item.position] = ImageResult(
                files[item.position],
                item.size[1],
                item.size[0],
                out["boxes"].float().cpu(),
                out["scores"].float().cpu(),
                out["labels"].cpu(),
                image=item.original,
                extra=_extra(out),
            )

    def oldest_bucket() -> tuple[int, int]:
        return min(buckets, key=lambda k: buckets[k][0].position)

    def ready() -> Iterator[ImageResult]:
        nonlocal next_index
        while next_index in done:
            result = done.pop(next_index)
            next_index += 1
            if on_result is not None:
                on_result(result)
            yield result

    with torch.inference_mode():
        for item in loader:
            if item.error is not None:
                done[item.position] = ImageResult(
                    files[item.position], 0, 0, empty.reshape(0, 4), empty, empty.long(), error=item.error
                )
            else:
                key = model.padded_size(item.prepared)
                buckets.setdefault(key, []).append(item)
                if len(buckets[key]) >= batch_size:
                    run(key)
                elif sum(len(b) for b in buckets.values()) >= lookahead:
                    run(oldest_bucket())
            yield from ready()
            # Never hold a finished result behind a partial batch for long: if the next image
            # to yield is waiting in a bucket while later ones are done, run that bucket.
            while buckets and len(done) >= lookahead:
                run(oldest_bucket())
                yield from ready()
        while buckets:
            run(oldest_bucket())
            yield from ready()
        yield from ready()


def _predict_in_processes(
    model: FPNFasterRCNN,
    files: _ImageFiles,
    processes: int,
    on_result: Callable[[ImageResult], None] | None,
    threads: int | None = None,
) -> Iterator[ImageResult]:
    threads = threads or max(1, torch.get_num_threads() // processes)
    # Workers are forked: each gets the model copy-on-write, no pickling of weights.
    loader = DataLoader(
        _DetectInWorker(files, model, threads),
        batch_size=None,
        num_workers=processes,
        collate_fn=_identity,
        shuffle=False,
        prefetch_factor=1,
        worker_init_fn=workers_ignore_sigterm,
    )
    yield from _replica_results(files, loader, on_result)


def _predict_in_threads(
    model: FPNFasterRCNN,
    files: _ImageFiles,
    threads: int,
    on_result: Callable[[ImageResult], None] | None,
) -> Iterator[ImageResult]:
    """:func:`_predict_in_processes` with threads of this process as the replicas, for a
    model that runs without the GIL and serves concurrent calls (an exported ONNX model: one
    ONNX Runtime session, optimised once, one copy of the weights; see
    ``ExportedDetector.runs_in_threads``)."""
    model.share_between_threads()  # ExportedDetector (runs_in_threads)
    replica = _DetectInWorker(files, model, threads=0)
    yield from _replica_results(files, _run_in_threads(replica, len(files), threads), on_result)


_Detected = tuple[_Item, "dict[str, Tensor] | None"]


def _run_in_threads(replica: _DetectInWorker, count: int, threads: int) -> Iterator[_Detected]:
    """``replica[0] .. replica[count - 1]`` run by ``threads`` threads, yielded in order; at
    most two items per thread are in flight."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="fpn-detect")
    try:
        pending: deque[Future[_Detected]] = deque()
        submitted = 0
        while submitted < count or pending:
            while submitted < count and len(pending) < 2 * threads:
                pending.append(pool.submit(replica.__getitem__, submitted))
                submitted += 1
            yield pending.popleft().result()
    finally:
        # Ctrl-C or a consumer that stops early: drop the queued images, let the running
        # ones (a graph run cannot be interrupted) finish.
        pool.shutdown(wait=True, cancel_futures=True)


def _replica_results(
    files: _ImageFiles,
    detected: Iterable[_Detected],
    on_result: Callable[[ImageResult], None] | None,
) -> Iterator[ImageResult]:
    """The :class:`ImageResult` of each image a replica read and detected, in order (``out``
    None: it could not, and ``item.error`` says why), reported to ``on_result`` as yielded."""
    empty = torch.zeros((0,))
    for item, out in detected:
        path = files.paths[item.position]
        if out is None:
            result = ImageResult(path, 0, 0, empty.reshape(0, 4), empty, empty.long(), error=item.error)
        else:
            result = ImageResult(
                path,
                item.size[1],
                item.size[0],
                out["boxes"].float(),
                out["scores"].float(),
                out["labels"],
                image=item.original,
                extra=_extra(out),
            )
        if on_result is not None:
            on_result(result)
        yield result
