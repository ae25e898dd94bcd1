"""Which exact CPU path is fastest on this machine: a short measurement, cached.

The fastest float32 path differs from one CPU to the next (NNPACK's Winograd against
oneDNN's AVX-512 kernels, ONNX Runtime, OpenVINO; see docs/speed.md), so ``--backend auto``
measures the installed candidates once per machine and remembers the winner. The cache is
keyed by what decides the speed: the CPU's name, microarchitecture (family and model: two
"AMD EPYC" here with the same flags had different winners) and instruction-set flags, the
number of cores this process may use, and the libraries' versions. It lives in
``$FPN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fpncli``, else ``~/.cache/fpncli``
(``probe.json``); ``--reprobe`` measures again.

The probe runs each candidate as the run will: one single-threaded replica per core (threads
here; their work is in C++ kernels that release the GIL), all at once, so that what the
replicas contend for (memory bandwidth, the shared cache) is in the figure: alone on one
thread two paths measured within 3% of each other on an AVX-512 EPYC, while as two replicas
one ran 1.3x faster. Each replica runs one synthetic image of the run's size (seeded noise,
so no file is read) twice; the first pass pays the per-size set-up (NNPACK's and oneDNN's
buffers, graph shapes) and only the second is timed. It counts this process's CPU seconds
per image, which a busy machine disturbs far less than the wall clock.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fpncli.atomic import write_json
from fpncli.errors import FpnError
from fpncli.runtime.cpu import cpu_info, describe_cpu

CACHE_FILE = "probe.json"
# Part of the cache key: a probe that measures differently does not reuse older results
# (2: replicas at once, the second pass timed; 1 timed one image on one thread).
PROBE_METHOD = 2
# Environment variables that cap the instruction set PyTorch, oneDNN and MKL use: a run under
# a cap is a different machine to the probe (scripts/bench_detect.py uses them to approximate
# an AVX2-only CPU on an AVX-512 one).
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cache_dir() -> Path:
    """``$FPN_CACHE_DIR``, else the XDG user cache folder's ``fpncli``."""
    if os.environ.get("FPN_CACHE_DIR"):
        return Path(os.environ["FPN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fpncli"


# ONEDNN_MAX_CPU_ISA values that leave oneDNN (and OpenVINO's CPU plugin, built on it) no
# bfloat16 kernels: under ONEDNN_MAX_CPU_ISA=AVX2 on an AVX512-BF16 EPYC, OpenVINO refused to
# compile the bf16 graph ("Supported primitive descriptors list is empty for node: MaxPool").
_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); see :func:`bf16_cap`."""
    flags = set(cpu_info()["flags"])
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_cap() -> str | None:
    """``"ONEDNN_MAX_CPU_ISA=AVX2"`` when the environment caps the kernels below bfloat16, else
    None. oneDNN reads the older name ``DNNL_MAX_CPU_ISA`` when the new one is not set."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip()
        if value:
            return f"{name}={value}" if value.upper() in _ISAS_WITHOUT_BF16 else None
    return None


def isa_caps() -> dict[str, str]:
    """The :data:`ISA_CAPS` set in the environment, ``{name: value}``."""
    return {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}


def machine_key() -> str:
    """What the probe's result depends on: CPU, flags, instruction-set caps, cores, libraries."""
    import torch

    versions = [f"torch {torch.__version__}"]
    for name in ("onnxruntime", "openvino"):
        try:
            module = __import__(name)
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            pass
    info = cpu_info()
    caps = "".join(f" | {k}={v}" for k, v in isa_caps().items())
    return (
        f"{describe_cpu(info)} | {' '.join(info['flags'])}{caps} | {info['cores']} cores | "
        f"{', '.join(versions)} | probe {PROBE_METHOD}"
    )


def cached(key: str) -> dict[str, Any] | None:
    """The cached probe for ``key`` (``{"winner", "seconds": {path: s/image}, "when"}``), or None."""
    try:
        entries = json.loads((cache_dir() / CACHE_FILE).read_text(encoding="utf-8"))
        entry = entries.get(key) if isinstance(entries, dict) else None
        return entry if _well_formed(entry) else None
    except (OSError, ValueError, RecursionError, OverflowError):
        return None  # no cache yet, or a damaged one (nested too deep, numbers too large): probe again


def _timings(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str)
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and v >= 0
        for k, v in value.items()
    )


def _well_formed(entry: Any) -> bool:
    """Whether a cached entry has the shape :func:`remember` writes (a hand-edited or damaged
    one is probed again rather than trusted)."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("winner"), str)
        and _timings(entry.get("seconds"))
        and _timings(entry.get("builds", {}))
    )


def remember(key: str, entry: dict[str, Any]) -> None:
    """Store ``entry`` for ``key``; a cache that cannot be written only costs a probe next time."""
    path = cache_dir() / CACHE_FILE
    try:
        entries = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError, RecursionError):
        entries = {}
    entries[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, entries)
    except (OSError, FpnError, RecursionError, ValueError):  # FpnError: write_json's reason; the run goes on
        pass


def probe(
    candidates: dict[str, Callable[[int], list[Callable[[Any], Any]]]],
    height: int,
    width: int,
    replicas: int | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """``(CPU seconds per image, seconds to build)`` of each candidate, on one synthetic
    ``Tensor[3, height, width]`` float image in 0..1, ``replicas`` (default: the usable
    cores) single-threaded runs at once.

    Args:
        candidates: path name -> a function building that path's ``replicas`` runners
            ``run(image)`` (its time is the build cost, paid once per run: exporting a
            graph, compiling it).
    """
    import threading

    import torch

    replicas = replicas or cpu_info()["cores"]
    g = torch.Generator().manual_seed(0)
    image = torch.rand((3, height, width), generator=g)
    threads = torch.get_num_threads()
    seconds: dict[str, float] = {}
    builds: dict[str, float] = {}

    def together(runs: list[Callable[[Any], Any]]) -> None:
        workers = [threading.Thread(target=run, args=(image,)) for run in runs]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    try:
        torch.set_num_threads(1)  # as each replica runs
        for name, build in candidates.items():
            start = time.perf_counter()
            runs = build(replicas)
            builds[name] = round(time.perf_counter() - start, 3)
            together(runs)  # the first pass at this size sets up buffers and kernels
            start = time.process_time()
            together(runs)
            seconds[name] = round((time.process_time() - start) / len(runs), 3)
    finally:
        torch.set_num_threads(threads)
    return seconds, builds


def fastest(seconds: dict[str, float], builds: dict[str, float], images: int, cores: int) -> str:
    """The path that finishes ``images`` images first: its build, then the images shared
    by ``cores`` single-threaded replicas."""
    return min(seconds, key=lambda k: builds.get(k, 0.0) + seconds[k] * max(1, images) / max(1, cores))
