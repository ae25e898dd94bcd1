"""Which CPU this is: its name, its microarchitecture and the instruction sets that decide
which kernels run. Every speed figure names them, and ``--backend auto``'s probe cache is
keyed by them. Torch-free.

The name alone does not tell CPUs apart: two machines here both call themselves "AMD EPYC",
with the same AVX-512 flags, yet one is CPU family 26 (Zen 5), where OpenVINO's float32
kernels were the fastest exact path, and the other one where NNPACK's Winograd was. The
family and model numbers (x86) or the implementer and part numbers (Arm) do tell them apart.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The flags that decide which kernels PyTorch, oneDNN, ONNX Runtime and OpenVINO pick.
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimd",
)
# /proc/cpuinfo fields that name the microarchitecture: x86, then Arm.
_IDENTITY_FIELDS = (
    ("cpu family", "family"),
    ("model", "model"),
    ("stepping", "stepping"),
    ("CPU implementer", "implementer"),
    ("CPU part", "part"),
    ("CPU variant", "variant"),
)


def cpu_info(cpuinfo: str | None = None, allowed: set[int] | None = None) -> dict[str, Any]:
    """``{"model": name, "id": microarchitecture, "flags": [those of CPU_FLAGS present],
    "cores": usable}`` from ``cpuinfo`` (the text of ``/proc/cpuinfo``; read when None).

    ``id`` is ``"family 26 model 2 stepping 1"`` on x86, ``"implementer 0x41 part 0xd0c
    variant 0x1"`` on Arm, ``""`` where the system does not say. Only the processors this
    process may run on count (``allowed``: their numbers; default its CPU affinity): on an
    Arm big.LITTLE chip pinned to its big cores, the id is theirs; where the allowed cores
    differ, their ids are joined with " + ". Name and flags are the first allowed one's."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    affinity = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if allowed is None:
        allowed = affinity
    blocks = [_fields(block) for block in cpuinfo.split("\n\n") if block.strip()]
    processors = [b for b in blocks if "processor" in b]
    if allowed is not None:
        mine = [b for b in processors if b["processor"].isdigit() and int(b["processor"]) in allowed]
        processors = mine or processors  # numbers that do not match: take every processor
    # Fields outside the processors' blocks (Arm's "Hardware", the model of older kernels).
    shared = {k: v for b in blocks if "processor" not in b for k, v in b.items()}
    first = {**shared, **(processors[0] if processors else {})}
    # x86's "model" is a number inside each processor's block; a board's "Model" line (Arm)
    # stands outside them.
    model = first.get("model name") or first.get("hardware") or shared.get("model") or ""
    flags = set((first.get("flags") or first.get("features") or "").split())
    ids: list[str] = []
    for block in processors or [first]:
        identity = " ".join(
            f"{short} {block[field.lower()]}" for field, short in _IDENTITY_FIELDS if block.get(field.lower())
        )
        if identity and identity not in ids:
            ids.append(identity)
    cores = len(affinity) if affinity else os.cpu_count() or 1
    return {
        "model": model or platform.processor() or platform.machine() or "unknown CPU",
        "id": " + ".join(ids),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "cores": cores,
    }


def _fields(block: str) -> dict[str, str]:
    """One processor's ``/proc/cpuinfo`` lines as ``{lowercased key: value}`` (first wins)."""
    fields: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def describe_cpu(info: dict[str, Any]) -> str:
    """``AMD EPYC (family 26 model 2 stepping 1)``: the name, and the microarchitecture when known."""
    return info["model"] + (f" ({info['id']})" if info.get("id") else "")


def cpu_line(info: dict[str, Any]) -> str:
    """``CPU: AMD EPYC (family 26 ...); flags: avx2 avx512f; 2 usable cores``: the first line
    of every benchmark's output."""
    return f"CPU: {describe_cpu(info)}; flags: {' '.join(info['flags']) or '-'}; {info['cores']} usable cores"
