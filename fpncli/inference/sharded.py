"""`fpn detect` and `fpn eval` over several processes, GPUs and machines (torchrun).

``torchrun --nproc_per_node=N [--nnodes ...] -m fpncli detect|eval ...`` starts N
processes per machine; each runs the same command. :func:`predict_sharded` is the one
place that knows about it:

* the ordered input list is split by striding: rank ``r`` of ``W`` takes images ``r, r + W,
  r + 2W, ...`` (each image exactly once, no padding duplicates), and runs the normal
  pipeline (:func:`~fpncli.inference.predict.predict_images`) on them;
* ranks other than 0 send their results (no pixels) to rank 0 in chunks as they come;
* rank 0 yields every result in the single-process order, so whatever consumes them writes
  exactly what a single process writes, while the run goes on. The other ranks yield
  nothing. Striding keeps that cheap: rank 0 needs one result of each rank per round, so
  results wait briefly in small bounded queues instead of a whole shard being held back.

Results travel over gloo (CPU), also on GPU machines: they are small CPU objects, and gloo
reports a peer that died ("connection closed") at once. Rank 0 receives from each rank in a
thread of its own, so a failure names the rank. A rank that dies makes rank 0 stop with an
:class:`FpnError` naming it, after yielding every result that had arrived in order (so the
caller's outputs keep what was finished). A rank that hangs is reported after the
process-group timeout (``FPN_DIST_TIMEOUT`` seconds, default 1800).

Without torchrun (``WORLD_SIZE`` unset or 1) :func:`predict_sharded` is
:func:`~fpncli.inference.predict.predict_images` plus the ``on_local`` hook.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from fpncli.errors import FpnError, OtherRankFailed, first_line

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.modeling.detector import FPNFasterRCNN

# Results per message (a rank also sends a partial chunk after _SEND_SECONDS, so rank 0's
# progress never waits long on a slow rank).
_CHUNK = 32
_SEND_SECONDS = 1.0
# Chunks rank 0 holds per rank before that rank's sends wait (bounds rank 0's memory).
_QUEUE_CHUNKS = 8
# Rank 0 computes at most this many of its own results ahead while waiting for others.
_OWN_AHEAD = 256
_SIZE_TAG, _DATA_TAG = 71, 72

_group: Any = None  # the gloo process group results travel over (made once per process)


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process from torchrun's environment; ``(0, 1)`` without it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that prints and writes files."""
    return world()[0] == 0


def local_world_size() -> int:
    """Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cpu_cores() -> int:
    """The CPU cores this process may use: its share of the machine's among torchrun's
    processes there (all of them in a single process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // local_world_size())


def inference_device(spec: str = "auto") -> torch.device:
    """The device of this process: :func:`~fpncli.device.resolve_device`, and under torchrun a
    bare ``cuda`` becomes ``cuda:<local rank>`` (ranks take GPUs round-robin when there are
    more ranks than GPUs: inference has no collective on the GPU, so they may share one)."""
    from fpncli.device import resolve_device

    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None and world()[1] > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
    return device


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("FPN_DIST_TIMEOUT", "1800")))


def _result_group() -> Any:
    """A gloo group over all ranks: the default one when it is ours or already gloo, else a
    new gloo group beside the caller's (e.g. NCCL) one. Collective on first use."""
    global _group
    if _group is not None:
        return _group
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=_timeout())
        atexit.register(_destroy)
        _group = dist.group.WORLD
    elif "gloo" in str(dist.get_backend()):
        _group = dist.group.WORLD
    else:
        _group = dist.new_group(backend="gloo", timeout=_timeout())
    return _group


def _destroy() -> None:
    global _group
    # Ours is the last reference besides torch's: dropped, the group's gloo threads end in
    # destroy_process_group, not in the interpreter's shutdown (an abort; see distributed.cleanup).
    _group = None
    if dist.is_initialized():
        dist.destroy_process_group()


def predict_sharded(
    model: FPNFasterRCNN,
    paths: Sequence[str | os.PathLike],
    *,
    on_local: Callable[[Any], None] | None = None,
    on_result: Callable[[Any], None] | None = None,
    **kwargs: Any,
) -> Iterator[Any]:
    """:func:`~fpncli.inference.predict.predict_images` over all torchrun processes.

    Every rank calls it with the same ``paths`` (checked) and options. Rank 0 yields one
    :class:`~fpncli.inference.predict.ImageResult` per path in input order (``image`` is None
    for images of other ranks; they never travel); the other ranks yield nothing. In a
    single process it is ``predict_images``.

    Args:
        model, paths, kwargs: as for ``predict_images`` (``device`` is this rank's device).
        on_local: called on the rank that ran an image with its result (``image`` set when
            ``keep_images``), before it travels: e.g. draw the annotated picture where the
            pixels are.
        on_result: called on rank 0 with each yielded result.

    Raises:
        FpnError: the ranks were given different inputs, or a rank died or stopped answering
            (on rank 0, after yielding the results that had arrived in order).
    """
    from fpncli.inference.predict import predict_images

    rank, size = world()
    files = [Path(p) for p in paths]
    if size <= 1:
        for result in predict_images(model, files, **kwargs):
            if on_local is not None:
                on_local(result)
            if on_result is not None:
                on_result(result)
            yield result
        return
    group = _result_group()
    _check_same_inputs(files, group, rank, size)
    own = predict_images(model, files[rank::size], **kwargs)
    if rank == 0:
        yield from _Gatherer(files, size, group).run(own, on_local, on_result)
    else:
        _send_all(own, rank, size, group, on_local)


def _check_same_inputs(paths: list[Path], group: Any, rank: int, size: int) -> None:
    digest = hashlib.sha1("\n".join(map(str, paths)).encode()).hexdigest()
    seen: list[Any] = [None] * size
    dist.all_gather_object(seen, (len(paths), digest), group=group)
    if any(s != seen[0] for s in seen):
        counts = ", ".join(f"rank {r}: {n}" for r, (n, _) in enumerate(seen))
        raise FpnError(
            f"the {size} processes were given different inputs ({counts} images): on several "
            "machines the images must be at the same paths on each (e.g. a shared file system)"
        )


# --------------------------------------------------------------------------- other ranks


def _pack(result: Any, index: int) -> tuple:
    """What travels of a result: its input index, size, detections (numpy) and error."""
    return (
        index,
        result.width,
        result.height,
        result.boxes.numpy(),
        result.scores.numpy(),
        result.labels.numpy(),
        result.error,
        {k: v.numpy() for k, v in result.extra.items()},
    )


def _send_all(
    own: Iterator[Any], rank: int, size: int, group: Any, on_local: Callable[[Any], None] | None
) -> None:
    chunk: list[tuple] = []
    pending: list[Any] = []  # works and buffers of the chunk in flight
    last = time.monotonic()

    def send() -> None:
        nonlocal pending, last
        wait(pending)
        payload = torch.frombuffer(
            bytearray(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8
        )
        length = torch.tensor([payload.numel()], dtype=torch.int64)
        pending = [
            dist.isend(length, 0, group=group, tag=_SIZE_TAG),
            dist.isend(payload, 0, group=group, tag=_DATA_TAG),
            length,
            payload,
        ]
        chunk.clear()
        last = time.monotonic()

    def wait(works: list[Any]) -> None:
        try:
            for w in works[:2]:
                w.wait()
        except RuntimeError as exc:
            raise OtherRankFailed(
                f"rank {rank}: rank 0 stopped, results can no longer be sent ({_short(exc)})"
            ) from None

    for k, result in enumerate(own):
        if on_local is not None:
            on_local(result)
        chunk.append(_pack(result, rank + k * size))
        if len(chunk) >= _CHUNK or time.monotonic() - last >= _SEND_SECONDS:
            send()
    if chunk:
        send()
    wait(pending)  # a send completes once rank 0 has taken it: nothing is lost by exiting


def _short(exc: BaseException) -> str:
    text = first_line(exc)
    if "] " in text:  # gloo prefixes its source location: "[.../pair.cc:561] Connection closed ..."
        text = text.split("] ", 1)[1]
    return text.split(". This is typically")[0][:200]


# --------------------------------------------------------------------------- rank 0


class _RankStopped(Exception):
    pass


class _Gatherer:
    """Rank 0: receives each rank's results in a thread, yields all in input order."""

    def __init__(self, paths: list[Path], size: int, group: Any) -> None:
        self.paths, self.size, self.group = paths, size, group
        self.queues: dict[int, queue.Queue] = {r: queue.Queue(maxsize=_QUEUE_CHUNKS) for r in range(1, size)}
        self.failed: dict[int, str] = {}
        self.stop = threading.Event()

    def _owed(self, rank: int) -> int:
        return len(range(rank, len(self.paths), self.size))

    def _receive(self, rank: int) -> None:
        got = 0
        try:
            while got < self._owed(rank):
                length = torch.zeros(1, dtype=torch.int64)
                dist.recv(length, rank, group=self.group, tag=_SIZE_TAG)
                payload = torch.empty(int(length.item()), dtype=torch.uint8)
                dist.recv(payload, rank, group=self.group, tag=_DATA_TAG)
                chunk = pickle.loads(payload.numpy().tobytes())
                got += len(chunk)
                self._put(rank, chunk)
        except Exception as exc:  # the peer died or timed out: name it
            self.failed[rank] = _short(exc)
            self._put(rank, None)

    def _put(self, rank: int, item: list[tuple] | None) -> None:
        # A full queue holds back this rank's sends (bounded memory on rank 0).
        while not self.stop.is_set():
            try:
                self.queues[rank].put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _message(self, wait: float = 0.0) -> str:
        """Why the run stops: the ranks whose connection failed (waiting up to ``wait`` s for
        the receiving threads to notice, as torchrun may stop rank 0 first)."""
        deadline = time.monotonic() + wait
        while not self.failed and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.failed:
            return (
                "stopped by torchrun: another process of the run ended (torchrun's report names it); "
                "the results received so far are kept"
            )
        r, why = min(self.failed.items())
        others = sorted(set(self.failed) - {r})
        also = f" (also rank {', '.join(map(str, others))})" if others else ""
        return (
            f"rank {r} of {self.size} stopped before sending all its results{also}: {why}; "
            "the results received so far are kept"
        )

    def run(
        self,
        own: Iterator[Any],
        on_local: Callable[[Any], None] | None,
        on_result: Callable[[Any], None] | None,
    ) -> Iterator[Any]:
        from fpncli.inference.predict import ImageResult

        threads = [threading.Thread(target=self._receive, args=(r,), daemon=True) for r in self.queues]
        for t in threads:
            t.start()
        mine: list[Any] = []  # own results computed ahead
        own_left = True
        received: dict[int, list[tuple]] = {r: [] for r in self.queues}  # unpacked chunk per rank

        def next_own() -> bool:
            nonlocal own_left
            if not own_left:
                return False
            try:
                result = next(own)
            except StopIteration:
                own_left = False
                return False
            if on_local is not None:
                on_local(result)
            result.image = None
            mine.append(result)
            return True

        def take(rank: int, block: bool) -> tuple | None:
            if not received[rank]:
                try:
                    chunk = self.queues[rank].get(timeout=0.2) if block else self.queues[rank].get_nowait()
                except queue.Empty:
                    return None
                if chunk is None:
                    raise _RankStopped
                received[rank] = chunk[::-1]
            return received[rank].pop()

        previous = signal.getsignal(signal.SIGTERM) if _in_main_thread() else None

        def on_sigterm(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the caller flush its outputs
            raise OtherRankFailed(self._message(wait=2.0))

        if previous is not None:
            signal.signal(signal.SIGTERM, on_sigterm)
        finished = False
        try:
            for i in range(len(self.paths)):
                owner = i % self.size
                if owner == 0:
                    if not mine:
                        next_own()
                    result = mine.pop(0)
                else:
                    while True:
                        try:
                            packed = take(owner, block=False)
                            if packed is None:
                                # Compute ahead rather than wait, while that is bounded.
                                if len(mine) < _OWN_AHEAD and next_own():
                                    continue
                                packed = take(owner, block=True)
                        except _RankStopped:
                            raise OtherRankFailed(self._message()) from None
                        if packed is not None:
                            break
                    index, width, height, boxes, scores, labels, error, extra = packed
                    assert index == i, (index, i)
                    result = ImageResult(
                        self.paths[i],
                        width,
                        height,
                        torch.from_numpy(boxes),
                        torch.from_numpy(scores),
                        torch.from_numpy(labels),
                        error=error,
                        extra={k: torch.from_numpy(v) for k, v in extra.items()},
                    )
                if on_result is not None:
                    on_result(result)
                yield result
            finished = True
        finally:
            self.stop.set()
            if previous is not None and _in_main_thread():
                # After a failure torchrun stops the other processes and this one: ignore that,
                # so that the caller can still write what it has and exit with its message.
                signal.signal(signal.SIGTERM, previous if finished else signal.SIG_IGN)
            for t in threads:
                t.join(timeout=0.1)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
