"""What DetectoRS costs against the FPN: parameters, inference time per image and peak memory.

Each row runs in its own Python process (so one row's allocations never count for another):
it builds the seeded, randomly initialised detector, then

- memory: the resident set size (RSS) sampled every 2 ms by a thread during the first
  inference pass (one image) and during one training step (forward + backward, batch of 2),
  minus the RSS just before (the C allocator trimmed first, large blocks mmap'd, so the
  increase is new live memory: activations, and gradients in training); on CUDA,
  ``torch.cuda.max_memory_allocated`` instead;
- time: the median of ``--images`` one-image inference passes (after 2 warm-up passes).

Usage (the figures in README.md's DetectoRS section)::

    python scripts/bench_detectors.py --preset tiny --size 256 --images 10
    python scripts/bench_detectors.py --preset default --size 512 --images 3 --rows fpn,rfp,sac,rfp+sac

Rows: ``fpn``, ``rfp``, ``sac``, ``sac-deform``, ``rfp+sac``, ``rfp+sac-deform``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

ROWS: dict[str, dict[str, Any]] = {
    "fpn": {},
    "rfp": {"neck": "rfp"},
    "sac": {"sac": True},
    "sac-deform": {"sac": True, "sac_deform": True},
    "rfp+sac": {"neck": "rfp", "sac": True},
    "rfp+sac-deform": {"neck": "rfp", "sac": True, "sac_deform": True},
}


def _trim() -> None:
    """Give the C allocator's free memory back to the system (glibc), so that an RSS increase
    measures new live memory, not memory freed earlier (e.g. while building the model)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Highest RSS seen (sampled by a thread) while the block runs, minus the RSS before it."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        _trim()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def grown(self) -> int:
        return self.peak - self.base


def worker(row: str, preset: str, size: int, images: int, threads: int, device: str) -> dict[str, Any]:
    import torch

    from fpncli.config import preset_config
    from fpncli.modeling.detector import build_model, count_parameters

    torch.set_num_threads(threads)
    cfg = preset_config(
        preset, min_size=size, max_size=size, class_names=["a", "b", "c"], category_ids=[1, 2, 3], **ROWS[row]
    )
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    # A 4:3 image, resized by the model to `size` on its shorter side (and capped at `size`).
    pics = [torch.rand(3, 3 * size // 4, size, generator=gen).to(device) for _ in range(images + 2)]
    out: dict[str, Any] = {"row": row, "parameters": count_parameters(model)}
    cuda = device.startswith("cuda")
    with torch.inference_mode():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            model([pics[0]])
            out["inference_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            with PeakRSS() as peak:
                model([pics[0]])
            out["inference_peak_mib"] = peak.grown / 2**20
        times = []
        for i, pic in enumerate(pics):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model([pic])
            if cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    out["seconds_per_image"] = statistics.median(times)
    model.train()
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]], device=device),
            "labels": torch.tensor([1], device=device),
        }
    ] * 2
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sum(model(pics[:2], targets).values()).backward()
        out["train_step_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        with PeakRSS() as peak:
            sum(model(pics[:2], targets).values()).backward()
        out["train_step_peak_mib"] = peak.grown / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=256, help="shorter (and longer) image side cap, px")
    parser.add_argument("--images", type=int, default=10, help="timed one-image passes per row")
    parser.add_argument("--rows", default="fpn,rfp,sac,sac-deform,rfp+sac")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.preset, args.size, args.images, args.threads, args.device)))
        return
    rows = []
    for row in args.rows.split(","):
        if row not in ROWS:
            sys.exit(f"error: unknown row {row!r}; choose from {', '.join(ROWS)}")
        cmd = [sys.executable, __file__, "--worker", row, *sys.argv[1:]]
        # A fixed mmap threshold: large tensors are always mapped, and unmapped when freed.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            sys.exit(f"error: row {row} failed:\n{done.stderr.strip()}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{row}: done", file=sys.stderr)
    base = next((r for r in rows if r["row"] == "fpn"), rows[0])
    print(f"preset {args.preset}, images {args.size} px, {args.threads} thread(s), {args.device}")
    print(
        "| row | params (M) | x FPN | ms / image | x FPN | inference peak (MiB) | train-step peak (MiB) | x FPN |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['row']} | {r['parameters'] / 1e6:.2f} | {r['parameters'] / base['parameters']:.2f} | "
            f"{1000 * r['seconds_per_image']:.0f} | {r['seconds_per_image'] / base['seconds_per_image']:.2f} | "
            f"{r['inference_peak_mib']:.0f} | {r['train_step_peak_mib']:.0f} | "
            f"{r['train_step_peak_mib'] / max(base['train_step_peak_mib'], 1e-9):.2f} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
