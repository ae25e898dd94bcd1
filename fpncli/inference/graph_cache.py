"""Exported graphs kept between runs, so the graph paths pay their export once per model.

The ONNX Runtime and OpenVINO paths (``--backend onnxruntime|openvino``, ``--precision
int8|bf16`` on OpenVINO) run the detector as an ONNX graph exported at the start of each run:
~6 s for an R50-FPN on one core, and for int8 also a calibration and quantization (~20-30 s
at 800 px). That set-up decided whether a graph path repaid itself on a short run. Here the
graph is stored after it is made and read back (~0.2 s) by the next run of the same model.

A graph is found again only when everything it was made from is the same: the model's
weights (a digest of its state dict), the export metadata (configuration, thresholds, class
names, source), the kind of graph (Winograd or direct convolutions, fp32 or int8), for int8
the calibration images (paths, sizes, modification times) and the pixel cap, the library
versions, and fpncli's own source code (so an edited checkout never reuses a graph that the
edit would change).

The graphs live in ``graphs/`` of the cache folder (:func:`fpncli.inference.probe.cache_dir`),
written atomically (two runs storing the same graph at once are safe), at most
``$FPN_GRAPH_CACHE_MB`` (default 2048) in all (checked each time a graph is stored), the
least recently used removed first;
``FPN_GRAPH_CACHE_MB=0`` turns the cache off. A cache that cannot be read or written only
costs an export.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fpncli.atomic import atomic_write, remove_stale_temporaries, write_json
from fpncli.errors import FpnError

DEFAULT_LIMIT_MB = 2048
FOLDER = "graphs"


def limit_bytes() -> int:
    """The cache's size cap from ``$FPN_GRAPH_CACHE_MB`` (0: off); a bad value is one line."""
    raw = os.environ.get("FPN_GRAPH_CACHE_MB", "").strip()
    if not raw:
        return DEFAULT_LIMIT_MB * 2**20
    try:
        megabytes = float(raw)
    except ValueError:
        megabytes = -1.0
    # nan fails the first test; 1e308 is finite in MiB but not in bytes.
    if not (megabytes >= 0 and math.isfinite(megabytes * 2**20)):
        raise FpnError(f"FPN_GRAPH_CACHE_MB={raw!r}: expected a size in MiB (0 turns the graph cache off)")
    return int(megabytes * 2**20)


def folder() -> Path:
    from fpncli.inference.probe import cache_dir

    return cache_dir() / FOLDER


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of fpncli's Python sources: what exports the graph."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def state_digest(model: Any) -> str:
    """A digest of ``model``'s state dict (names, dtypes, shapes, values); ~0.2 s for an R50-FPN."""
    import torch

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        if t.numel():  # bytes through a uint8 view: numpy has no bfloat16
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def files_fingerprint(paths: Sequence[Path]) -> list[list[Any]]:
    """``[[path, size, mtime_ns], ...]``: a changed calibration image is a different graph."""
    out: list[list[Any]] = []
    for path in paths:
        try:
            st = Path(path).stat()
            out.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(path), None, None])
    return out


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript"):
        try:
            versions[name] = str(getattr(__import__(name), "__version__", "?"))
        except ImportError:
            versions[name] = "-"
    return versions


def graph_key(state: str, meta: dict[str, Any], kind: dict[str, Any]) -> str:
    """The key of the graph a model whose :func:`state_digest` is ``state`` exports with
    ``meta`` as ``kind`` (e.g. ``{"winograd": False, "precision": "int8", "calibration":
    files_fingerprint(...)}``)."""
    parts = {
        "state": state,
        "meta": meta,
        "kind": kind,
        "versions": _versions(),
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


@dataclass
class Hit:
    """A stored graph: its bytes and how long it took to make (what reading it saved)."""

    data: bytes
    made_seconds: float


def lookup(key: str) -> Hit | None:
    """The stored graph for ``key``, or None (no cache, not stored, unreadable, damaged)."""
    if limit_bytes() == 0:
        return None
    path = folder() / f"{key}.onnx"
    try:
        data = path.read_bytes()
        info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if len(data) != int(info["bytes"]) or hashlib.sha256(data).hexdigest() != info["sha256"]:
            return None  # cut short or damaged: export again (and store it whole)
        hit = Hit(data, float(info.get("made_seconds", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # Most recently used. Without explicit times this needs write permission only (not
    # ownership); in a cache shared read-only it fails, and the graph is still a hit.
    with contextlib.suppress(OSError):
        os.utime(path)
    return hit


def made_seconds(key: str) -> float:
    """What making the graph for ``key`` cost (0 when it is not stored): the set-up a run saves."""
    if limit_bytes() == 0:
        return 0.0
    path = folder() / f"{key}.onnx"
    try:
        info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        return float(info.get("made_seconds", 0.0)) if path.stat().st_size == int(info["bytes"]) else 0.0
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def store(key: str, data: bytes, seconds: float) -> None:
    """Keep ``data`` under ``key``, then trim the cache to its cap; failures are silent."""
    limit = limit_bytes()
    if limit == 0 or len(data) > limit:
        return
    path = folder() / f"{key}.onnx"
    try:
        atomic_write(path, lambda f: f.write(data), binary=True)
        info = {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "made_seconds": round(seconds, 3),
        }
        write_json(path.with_suffix(".json"), info)
        trim(limit, keep=path)
    except (OSError, FpnError):
        pass


def trim(limit: int, keep: Path | None = None) -> None:
    """Remove the least recently used graphs until the stored ones fit in ``limit`` bytes
    (and the half-written temporaries of runs killed while storing)."""
    remove_stale_temporaries(folder(), any_name=True)
    entries = []
    for path in folder().glob("*.onnx"):
        try:
            st = path.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if path == keep:
            continue
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        total -= size


def cached_graph(key: str | None, make: Callable[[], bytes]) -> tuple[bytes, float | None]:
    """``(graph, seconds saved)``: the stored graph for ``key`` and what making it had cost,
    else ``make()``'s (stored for the next run) and None. ``key`` None: always ``make()``."""
    if key is not None:
        hit = lookup(key)
        if hit is not None:
            return hit.data, hit.made_seconds
    start = time.perf_counter()
    data = make()
    if key is not None:
        store(key, data, time.perf_counter() - start)
    return data, None
