"""Benchmark `fpn detect` against the loop a typical user writes with torchvision.

Both arms get the same seeded random weights (torchvision's ``fasterrcnn_resnet50_fpn``,
saved once and loaded by each arm), the same images (``../shared/data/coco-tiny`` val) and
the same input size, and run in this one process, alternating, so that CPU contention from
other work hits both alike.

    (a) stock: ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)``, load the
        state dict, then per image: PIL open, ``to_tensor``, ``model([x])`` under
        ``torch.no_grad()``, keep scores >= --score-thr;
    (b) fpn detect: :func:`fpncli.inference.detect.run_detect` end to end with its defaults
        (model loading, BatchNorm folded into the convolutions, Winograd 3x3 convolutions,
        one single-threaded model replica per core decoding and detecting whole images,
        annotated images written).

    (c) exported (``--export onnx``, the default; ``torchscript``; ``none`` skips it): the
        same weights through ``fpn export`` (self-check included, timed apart; ONNX with its
        default Winograd 3x3 convolutions, ``fpncli.modeling.winograd_graph``), then
        ``run_detect`` with ``--weights model.onnx``: the same pipeline, its replicas threads
        sharing one ONNX Runtime session (1 intra-op thread per run, every graph
        optimisation: see ``fpncli.modeling.exported.onnx_session``; TorchScript replicas
        are worker processes; ``--export-winograd`` gives TorchScript fpn detect's folded
        BatchNorm and NNPACK convolutions). ``--export-workers 0`` runs one replica
        instead, whose session uses all of torch's threads.

It prints images/s for each, the ratio, the CPU seconds per image (this process and its
workers; steadier than wall time on a shared machine), the peak resident memory during each (process plus workers; pages shared after fork count once per process)
arm, and whether the two produce the same detections up to float rounding: one-to-one
matches with the same class, IoU >= 0.99 and scores within 0.005 (a detection may only be
missing on one side when its score is within 0.005 of the threshold); the largest box and
score differences are printed too. Any change in float arithmetic (Winograd, folded
BatchNorm, even another thread count) can flip a near-tied discrete choice (top-k, NMS) and
so swap a detection for its almost identical neighbour; the tolerance is for those.
``--ablation-images K`` then times each optimisation alone on K images. ``--flops`` counts
the model's arithmetic (``torch.utils.flop_counter``, untimed) and prints each arm's achieved
GFLOP/s, to set against the CPU's practical float32 peak, which it measures too (the faster
of a 4096x4096 matmul and a 256-channel 3x3 convolution, one single-threaded kernel per core,
all at once).

    python scripts/bench_detect.py                      # 8 images at 800 px, ~3 min on 2 cores
    python scripts/bench_detect.py --images 2 --size 320 --ablation-images 0   # smoke run

The random weights are made a little less degenerate than torchvision's init (BatchNorm
statistics randomised, so that folding them is a real test; a milder classifier with a
stronger background, so each image gets a handful of confident detections; the 91-way label
space's "N/A" placeholders never picked, as with the real COCO weights); both arms use them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fpncli.errors import FpnError  # noqa: E402  (the repository on the path first)

DEFAULT_DATA = Path(os.environ.get("FPN_COCO_TINY", ROOT.parent / "shared" / "data" / "coco-tiny"))


# ----------------------------------------------------------------------------- measuring


def _rss_kib(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


class PeakMemory:
    """Peak resident memory of this process plus its children (DataLoader workers), sampled."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = _rss_kib() + sum(_rss_kib(c) for c in _children(me))
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Timed:
    def __enter__(self) -> Timed:
        self.memory = PeakMemory().__enter__()
        self.cpu0, self.t0 = _cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = _cpu_seconds() - self.cpu0
        self.memory.__exit__()
        self.peak_mib = self.memory.peak_kib / 1024


# The detection loop's own wall and CPU seconds (after model loading and path preparation:
# export, quantization, probe) of the last arm run; whole-run times are measured around it.
LOOP: dict[str, Any] = {}


# ----------------------------------------------------------------------------- weights


def make_weights(path: Path, seed: int) -> None:
    """Seeded random torchvision Faster R-CNN R50-FPN weights (see the module docstring)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from fpncli.modeling.coco_classes import COCO_V1_CATEGORIES, UNUSED_CLASS

    torch.manual_seed(seed)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        cls = model.roi_heads.box_predictor.cls_score
        # Random features make every proposal look confident in some class; a milder
        # classifier and a stronger background logit leave a handful of detections >= 0.5
        # per image (and a few thousand candidates >= 0.05 before NMS), like trained weights.
        cls.weight.mul_(2 / 3)
        cls.bias.mul_(2 / 3)
        cls.bias[0] += 10.0
        for i, name in enumerate(COCO_V1_CATEGORIES):
            if name == UNUSED_CLASS:
                cls.weight[i].zero_()
                cls.bias[i] = -1e4  # exp(-1e4) == 0: never chosen, no effect on the others
    torch.save(model.state_dict(), path)


# ----------------------------------------------------------------------------- arms


def stock_loop(
    weights: Path,
    paths: list[Path],
    size: int,
    max_size: int,
    score_thr: float,
    grad_mode=torch.no_grad,
    device: str = "cpu",
) -> list[list[tuple[int, float, list[float]]]]:
    """What a typical user writes: torchvision's model, one image at a time (on ``device``)."""
    from PIL import Image
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.transforms.functional import to_tensor

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=size, max_size=max_size)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval().to(device)
    out = []
    LOOP.clear()
    LOOP.update(cpu0=_cpu_seconds(), t0=time.perf_counter())
    for p in paths:
        x = to_tensor(Image.open(p).convert("RGB")).to(device)
        with grad_mode():
            det = {k: v.cpu() for k, v in model([x])[0].items()}
        keep = det["scores"] >= score_thr
        out.append(
            list(zip(det["labels"][keep].tolist(), det["scores"][keep].tolist(), det["boxes"][keep].tolist()))
        )
    LOOP.update(wall=time.perf_counter() - LOOP["t0"], cpu=_cpu_seconds() - LOOP["cpu0"])
    return out


def fpn_detect(
    weights: Path,
    paths: list[Path],
    size: int,
    max_size: int,
    score_thr: float,
    out_dir: Path,
    draw: bool,
    device: str,
    workers: int | None = None,
    backend: str = "auto",
    precision: str = "fp32",
) -> list[list[tuple[int, float, list[float]]]]:
    from fpncli.inference.detect import DetectOptions, run_detect

    def progress(event: dict) -> None:
        if event["event"] == "start":
            LOOP.clear()
            LOOP.update(cpu0=_cpu_seconds(), t0=time.perf_counter(), path=event["path"])

    exported = weights.suffix in (".onnx", ".torchscript")
    summary = run_detect(
        [str(p) for p in paths],
        DetectOptions(
            weights=str(weights),
            out_dir=out_dir,
            score_thr=score_thr,
            # An exported file has its sizes inside (asking for others is an error).
            min_size=None if exported else size,
            max_size=None if exported else max_size,
            draw=draw,
            device=device,
            workers=workers,
            backend=backend,
            precision=precision,
        ),
        progress=progress,
    )
    LOOP.update(wall=time.perf_counter() - LOOP["t0"], cpu=_cpu_seconds() - LOOP["cpu0"])
    if summary.images_failed:
        raise SystemExit(f"fpn detect failed on {summary.images_failed} image(s): {summary.errors}")
    return [
        [(d["category_id"], d["score"], d["box"]) for d in rec["detections"]]
        for rec in summary.predictions["images"]
    ]


def count_flops(weights: Path, paths: list[Path], size: int, max_size: int) -> float:
    """The stock model's floating-point operations over ``paths`` (a multiply-add counts 2),
    by ``torch.utils.flop_counter`` on one untimed forward per distinct image size: the
    arithmetic every exact path must do, to set each arm's achieved GFLOP/s against."""
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.transforms.functional import to_tensor

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=size, max_size=max_size)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    per_size: dict[tuple[int, int], int] = {}
    total = 0
    for p in paths:
        image = Image.open(p).convert("RGB")
        if image.size not in per_size:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model([to_tensor(image)])
            per_size[image.size] = counter.get_total_flops()
        total += per_size[image.size]
    return float(total)


def _kernel_worker(barrier: Any, queue: Any, kernel: str, n: int, repeats: int) -> None:
    torch.set_num_threads(1)
    with torch.no_grad():
        if kernel == "matmul":
            a, b = torch.randn(n, n), torch.randn(n, n)
            flops = 2 * n**3

            def run() -> None:
                a @ b

        else:  # conv3x3: the FPN's and RPN's 3x3 convolutions, 256 channels, on an n x n map
            c = 256
            x = torch.randn(1, c, n, n).to(memory_format=torch.channels_last)
            conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
            flops = 2 * c * c * 9 * n * n

            def run() -> None:
                conv(x)

        run()  # warm-up: first-call set-up and page faults
        barrier.wait()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        queue.put(flops * repeats / (time.perf_counter() - start))


# kernel -> (its size argument, what it runs on): the two most compute-bound float32 kernels
# PyTorch has. Both are measured because which is faster depends on the CPU: torch's matmul
# calls MKL, whose sgemm ran at 95 GFLOP/s per core on an AMD EPYC (Zen 5) where oneDNN's
# convolution ran at 226.
PEAK_KERNELS = {
    "matmul": (4096, f"4096x4096 matmul, {'MKL' if torch.backends.mkl.is_available() else 'BLAS'}"),
    "conv3x3": (256, "3x3 convolution, oneDNN"),
}


def peak_rates(cores: int, repeats: int = 4, sizes: dict[str, int] | None = None) -> dict[str, float]:
    """The CPU's practical float32 peak in FLOP/s, per kernel of :data:`PEAK_KERNELS`: one
    single-threaded kernel per core, all at once in separate processes (as fpn detect's
    replicas run), summed. No float32 path runs the detector's arithmetic faster than the
    faster of the two; this measures turbo clocks that nominal figures miss. ``sizes``
    overrides the kernels' sizes (matmul side, convolution map side)."""
    import multiprocessing as mp

    if cores < 1:
        raise ValueError(f"peak_rates needs at least one core, not {cores}")
    # spawn, not fork: a forked child of a process whose OpenMP pool has started can hang.
    ctx = mp.get_context("spawn")
    rates: dict[str, float] = {}
    for kernel, (size, _) in PEAK_KERNELS.items():
        n = (sizes or {}).get(kernel, size)
        barrier, queue = ctx.Barrier(cores), ctx.Queue()
        procs = [
            ctx.Process(target=_kernel_worker, args=(barrier, queue, kernel, n, repeats))
            for _ in range(cores)
        ]
        for proc in procs:
            proc.start()
        try:
            # A worker that died would leave the others at the barrier and this wait forever.
            rates[kernel] = float(sum(queue.get(timeout=600) for _ in procs))
        finally:
            for proc in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
    return rates


# ----------------------------------------------------------------------------- equality


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)


def compare(ref: list, got: list, score_thr: float, tol: float = 5e-3) -> dict:
    """Match detections one to one; see the module docstring for the rule."""
    matched = missing = extra = 0
    max_box = max_score = 0.0
    unmatched: list[str] = []
    for index, (r_img, g_img) in enumerate(zip(ref, got, strict=True)):
        free = list(range(len(g_img)))
        for label, score, box in r_img:
            best = None
            for j in free:
                gl, gs, gb = g_img[j]
                if (
                    gl == label
                    and abs(gs - score) <= tol
                    and (_iou(box, gb) >= 0.99 or max(abs(u - v) for u, v in zip(box, gb)) <= 0.5)
                ):
                    best = j
                    break
            if best is None:
                if score - score_thr > tol:
                    missing += 1
                    unmatched.append(f"image {index}: only in the stock loop: {label} {score:.4f} {box}")
                continue
            free.remove(best)
            matched += 1
            max_box = max(max_box, max(abs(u - v) for u, v in zip(box, g_img[best][2])))
            max_score = max(max_score, abs(score - g_img[best][1]))
        for j in free:
            if g_img[j][1] - score_thr > tol:
                extra += 1
                unmatched.append(f"image {index}: only in fpn detect: {g_img[j]}")
    return {
        "equal": missing == 0 and extra == 0,
        "matched": matched,
        "missing": missing,
        "extra": extra,
        "unmatched": unmatched[:10],
        "max_box_diff_px": round(max_box, 4),
        "max_score_diff": round(max_score, 5),
    }


# ----------------------------------------------------------------------------- ablation


def ablation(weights: Path, paths: list[Path], size: int, max_size: int, rounds: int) -> list[dict]:
    """Each optimisation alone, on the same images, arms alternating within each round."""
    from fpncli.inference.predict import predict_images
    from fpncli.modeling.optimize import fold_batchnorm, use_channels_last, use_winograd
    from fpncli.modeling.weights import load_detector

    base = load_detector(str(weights), min_size=size, max_size=max_size).model

    def variant(fold: bool, channels_last: bool = False, winograd: bool = False):
        m = copy.deepcopy(base)
        if fold:
            fold_batchnorm(m)
        if winograd:
            use_winograd(m)
        if channels_last:
            use_channels_last(m)
        return m

    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    images = [to_tensor(Image.open(p).convert("RGB")) for p in paths]

    def model_loop(model, grad_mode):
        def run():
            for x in images:
                with grad_mode():
                    model([x])

        return run

    def pipeline(model, processes=0):
        def run():
            for _ in predict_images(model, paths, batch_size=1, workers=0, cpu_processes=processes):
                pass

        return run

    full = variant(True, winograd=True)
    processes = min(4, os.cpu_count() or 1)
    arms = {
        "model([x]) loop, no_grad (stock)": model_loop(base, torch.no_grad),
        "model([x]) loop, inference_mode": model_loop(base, torch.inference_mode),
        "pipeline, no rewrites": pipeline(base),
        "pipeline + BN folded": pipeline(variant(True)),
        "pipeline + channels_last": pipeline(variant(False, channels_last=True)),
        "pipeline + Winograd 3x3": pipeline(variant(False, winograd=True)),
        "pipeline + BN folded + Winograd": pipeline(full),
        f"  ... in {processes} replica processes": pipeline(full, processes),
    }
    with torch.inference_mode():
        pipeline(full)()  # warm-up: oneDNN builds its kernels on first use
    times = {k: [] for k in arms}
    cpus = {k: [] for k in arms}
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            with Timed() as t:
                arms[name]()
            times[name].append(t.wall / len(paths))
            cpus[name].append(t.cpu / len(paths))
    ref = min(times["model([x]) loop, no_grad (stock)"])
    ref_cpu = min(cpus["model([x]) loop, no_grad (stock)"])
    return [
        {
            "arm": k,
            "s_per_image": round(min(v), 3),
            "speedup": round(ref / min(v), 2),
            "cpu_s_per_image": round(min(cpus[k]), 3),
            "cpu_speedup": round(ref_cpu / min(cpus[k]), 2),
        }
        for k, v in times.items()
    ]


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="COCO folder with val2017/ (or a synthetic set with val/)",
    )
    parser.add_argument("--images", type=int, default=8, help="how many val images")
    parser.add_argument("--size", type=int, default=800, help="shorter side (max side = size * 1333 / 800)")
    parser.add_argument("--score-thr", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per arm (best is kept)")
    parser.add_argument("--ablation-images", type=int, default=2, help="images per ablation arm (0: skip)")
    parser.add_argument("--no-draw", action="store_true", help="fpn detect without annotated images")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both arms)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for both arms (default: torch's choice); on a busy machine 1 "
        "avoids waiting on descheduled threads at every op",
    )
    parser.add_argument(
        "--export",
        default="onnx",
        choices=("onnx", "torchscript", "none"),
        help="also time fpn detect on the weights exported to this format (fpn export)",
    )
    parser.add_argument(
        "--export-workers",
        type=int,
        default=None,
        help="--workers for the exported arm (default: fpn detect's)",
    )
    parser.add_argument(
        "--export-winograd",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fpn export --winograd/--no-winograd (default: fpn export's, on for onnx, off for torchscript)",
    )
    parser.add_argument(
        "--paths",
        default="torch,winograd,onnxruntime,openvino,bf16,int8",
        help="more fpn detect arms besides its default (--backend auto): backends (exact, compared for "
        "equal detections) and precisions bf16/int8 (compared by matched fraction); those not "
        "available here are skipped",
    )
    parser.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure --backend auto's candidates first (cached), as on a machine that has run once",
    )
    parser.add_argument(
        "--flops",
        action="store_true",
        help="count the model's arithmetic per image (one untimed forward per image size) and "
        "print each arm's achieved GFLOP/s in the detection loop",
    )
    parser.add_argument(
        "--graph-cache",
        action="store_true",
        help="keep the graph paths' exported graphs between rounds (fpn detect's graph cache, in a "
        "temporary folder): the probe stores them, so the whole-run figures are those of a model "
        "run before; off by default, each arm exports as on a model's first run",
    )
    parser.add_argument("--json-out", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.data / "val2017" if (args.data / "val2017").is_dir() else args.data / "val"  # coco / synth
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".png"))[: args.images]
    if not paths:
        raise SystemExit(f"no images in {folder}")
    max_size = round(args.size * 1333 / 800)
    command = "python scripts/bench_detect.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"$ {command}")
    from fpncli.inference.probe import isa_caps
    from fpncli.runtime.cpu import cpu_info, cpu_line

    cpu = cpu_info()
    print(cpu_line(cpu))
    # An AVX2-only CPU can be approximated on an AVX-512 one by capping the libraries' kernels.
    capped = isa_caps()
    if capped:
        print("kernels capped by the environment: " + " ".join(f"{k}={v}" for k, v in capped.items()))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"{len(paths)} val images from {folder} at {args.size} px (max {max_size}); score >= {args.score_thr}"
    )
    results: dict = {
        "command": command,
        "cpu": cpu,
        "images": len(paths),
        "size": args.size,
        "isa_caps": capped,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.graph_cache:
            # Its own cache folder, probe included (the probe runs again below anyway).
            os.environ["FPN_CACHE_DIR"] = str(Path(tmp) / "cache")
            if os.environ.get("FPN_GRAPH_CACHE_MB", "").strip() in ("", "0"):
                os.environ["FPN_GRAPH_CACHE_MB"] = "2048"
        else:
            os.environ["FPN_GRAPH_CACHE_MB"] = "0"
        print(f"graph cache: {'on (the probe stores the graphs)' if args.graph_cache else 'off'}")
        weights = Path(tmp) / "fasterrcnn_r50_fpn_random.pt"
        make_weights(weights, args.seed)
        arms = {
            "stock torchvision loop": lambda: stock_loop(
                weights, paths, args.size, max_size, args.score_thr, device=args.device
            ),
            "fpn detect": lambda: fpn_detect(
                weights,
                paths,
                args.size,
                max_size,
                args.score_thr,
                Path(tmp) / "out",
                not args.no_draw,
                args.device,
            ),
        }
        from fpncli.inference.backends import installed
        from fpncli.inference.probe import has_native_bf16
        from fpncli.inference.settings import BACKENDS

        for spec in [p for p in args.paths.split(",") if p and p != "auto"]:
            backend, precision = (spec, "fp32") if spec in BACKENDS else ("auto", spec)
            if (backend != "auto" and not installed(backend)) or (
                precision == "bf16" and not has_native_bf16()
            ):
                print(f"skipped: {spec} (not available on this machine)")
                continue
            arms[f"fpn detect {spec}"] = lambda b=backend, p=precision, n=spec: fpn_detect(
                weights,
                paths,
                args.size,
                max_size,
                args.score_thr,
                Path(tmp) / f"out_{n}",
                not args.no_draw,
                args.device,
                backend=b,
                precision=p,
            )
        if args.export != "none":
            from fpncli.deploy.export import ExportOptions, run_export

            exported = Path(tmp) / f"model.{args.export}"
            with Timed() as t:
                done = run_export(
                    ExportOptions(
                        str(weights),
                        args.export,
                        exported,
                        min_size=args.size,
                        max_size=max_size,
                        winograd=args.export_winograd,
                    )
                )
            print(
                f"fpn export --format {args.export}: {t.wall:.1f} s (graph {done.export_seconds:.1f} s, "
                f"self-check on {len(done.images)} images {done.check_seconds:.1f} s; max box diff "
                f"{done.box_diff:.2g} px, score diff {done.score_diff:.2g})",
                flush=True,
            )
            arms[f"fpn detect ({args.export})"] = lambda: fpn_detect(
                exported,
                paths,
                args.size,
                max_size,
                args.score_thr,
                Path(tmp) / "out_exported",
                not args.no_draw,
                "cpu",
                workers=args.export_workers,
            )
        if args.probe:
            # --backend auto as on a machine that has measured once: probe now (untimed, cached
            # in $FPN_CACHE_DIR), so the "fpn detect" arm runs the probe's winner.
            from fpncli.inference.detect import DetectOptions, run_detect

            with Timed() as t:
                run_detect(
                    [str(paths[0])],
                    DetectOptions(
                        weights=str(weights),
                        out_dir=Path(tmp) / "probe",
                        score_thr=args.score_thr,  # as the arms: the same graph, for the graph cache
                        min_size=args.size,
                        max_size=max_size,
                        draw=False,
                        reprobe=True,
                    ),
                    progress=lambda e: print(f"probe: {e['path']}") if e["event"] == "start" else None,
                )
            print(f"probe (and one image): {t.wall:.1f} s", flush=True)
        flops = peak = 0.0
        if args.flops:
            flops = count_flops(weights, paths, args.size, max_size)
            results["gflop_per_image"] = round(flops / len(paths) / 1e9, 1)
            print(f"arithmetic: {flops / len(paths) / 1e9:.0f} GFLOP per image (torch.utils.flop_counter)")
            rates = peak_rates(cpu["cores"])
            peak = max(rates.values())
            for kernel, rate in rates.items():
                results[f"{kernel}_gflop_per_s"] = round(rate / 1e9, 1)
            results["peak_gflop_per_s"] = round(peak / 1e9, 1)
            each = ", ".join(f"{PEAK_KERNELS[k][1]} {r / 1e9:.0f}" for k, r in rates.items())
            print(
                f"float32 peak: {peak / 1e9:.0f} GFLOP/s, the faster of ({each}; one "
                f"single-threaded kernel per core, all at once)"
            )
        best: dict[str, Timed] = {}
        loops: dict[str, dict[str, Any]] = {}
        outputs: dict[str, list] = {}
        failed: dict[str, str] = {}
        for r in range(args.rounds):
            for name in list(arms) if r % 2 == 0 else list(reversed(arms)):
                if name in failed:
                    continue
                try:
                    with Timed() as t:
                        outputs[name] = arms[name]()
                except (FpnError, SystemExit) as exc:  # SystemExit: fpn_detect's failed images
                    if name in ("stock torchvision loop", "fpn detect"):
                        raise  # the comparison everything else is set against
                    # One path failing here (a library refusing this CPU) keeps the others'
                    # figures; one that ran in an earlier round is dropped whole.
                    failed[name] = str(exc)
                    for done in (best, loops, outputs):
                        done.pop(name, None)
                    print(f"  round {r + 1}: {name}: failed: {exc}", flush=True)
                    continue
                print(
                    f"  round {r + 1}: {name}: {t.wall:.1f} s ({len(paths) / t.wall:.3f} images/s); "
                    f"detection loop {LOOP['wall']:.1f} s wall, {LOOP['cpu']:.1f} s CPU"
                    + (f"; path: {LOOP['path']}" if "path" in LOOP else ""),
                    flush=True,
                )
                if name not in best or t.wall < best[name].wall:
                    best[name] = t
                if name not in loops or LOOP["wall"] < loops[name]["wall"]:
                    loops[name] = dict(LOOP)
        same = compare(outputs["stock torchvision loop"], outputs["fpn detect"], args.score_thr)
        stock, fpn = best["stock torchvision loop"], best["fpn detect"]
        print()
        print(f"{'arm':<26}{'images/s':>10}{'s/image':>10}{'CPU s/image':>13}{'peak RSS MiB':>14}")
        for name, t in best.items():
            print(
                f"{name:<26}{len(paths) / t.wall:>10.3f}{t.wall / len(paths):>10.2f}"
                f"{t.cpu / len(paths):>13.2f}{t.peak_mib:>14.0f}"
            )
        ratio, cpu_ratio = stock.wall / fpn.wall, stock.cpu / fpn.cpu
        print(f"speed-up (wall): {ratio:.2f}x   speed-up (CPU time): {cpu_ratio:.2f}x")
        print(
            f"same detections: {'yes' if same['equal'] else 'NO'} ({same['matched']} matched, "
            f"{same['missing']} missing, {same['extra']} extra; max |box diff| {same['max_box_diff_px']} px, "
            f"max |score diff| {same['max_score_diff']})"
        )
        for line in same["unmatched"]:
            print(f"  {line}")
        print(
            f"\ndetection loop only (after loading and preparing the model: export, quantization), "
            f"best of {args.rounds} rounds:"
        )
        print(
            f"{'arm':<28}{'s/image':>9}{'speed-up':>10}{'CPU s/image':>13}{'CPU speed-up':>14}"
            + (f"{'GFLOP/s':>9}" if flops else "")
            + "  outputs vs stock"
        )
        base = loops["stock torchvision loop"]
        per_arm = {}
        for name, loop in loops.items():
            check = compare(outputs["stock torchvision loop"], outputs[name], args.score_thr)
            reduced = any(p in name for p in ("bf16", "int8"))
            found = check["matched"] + check["missing"]
            verdict = (
                f"{check['matched']}/{found} stock detections matched"
                if reduced
                else (
                    "same"
                    if check["equal"]
                    else f"DIFFERENT ({check['missing']} missing, {check['extra']} extra)"
                )
            )
            per_arm[name] = {
                "s_per_image": round(loop["wall"] / len(paths), 3),
                "cpu_s_per_image": round(loop["cpu"] / len(paths), 3),
                "speedup_wall": round(base["wall"] / loop["wall"], 3),
                "speedup_cpu": round(base["cpu"] / loop["cpu"], 3),
                "path": loop.get("path"),
                "outputs": verdict,
            }
            # Achieved rate of the exact arithmetic; reduced-precision arms do the same
            # operations, just cheaper ones.
            rate = f"{flops / loop['wall'] / 1e9:>9.0f}" if flops else ""
            if flops:
                per_arm[name]["gflop_per_s"] = round(flops / loop["wall"] / 1e9, 1)
            print(
                f"{name:<28}{loop['wall'] / len(paths):>9.2f}{base['wall'] / loop['wall']:>9.2f}x"
                f"{loop['cpu'] / len(paths):>13.2f}{base['cpu'] / loop['cpu']:>13.2f}x{rate}  {verdict}"
            )
        for name, reason in failed.items():
            print(f"{name:<28}failed: {reason}")
        results["loop"] = per_arm
        results["failed"] = failed
        if flops:
            need = 2 * flops / base["wall"]
            print(
                f"2x the stock loop needs {need / 1e9:.0f} GFLOP/s of float32 arithmetic: "
                f"{100 * need / peak:.0f} % of the float32 peak"
            )
        exported_same = None
        if args.export != "none" and f"fpn detect ({args.export})" not in failed:
            name = f"fpn detect ({args.export})"
            exported_same = compare(outputs["fpn detect"], outputs[name], args.score_thr)
            print(
                f"{name} vs fpn detect: {fpn.wall / best[name].wall:.2f}x the speed (wall), "
                f"{fpn.cpu / best[name].cpu:.2f}x (CPU time); same detections: "
                f"{'yes' if exported_same['equal'] else 'NO'} ({exported_same['matched']} matched, "
                f"{exported_same['missing']} missing, {exported_same['extra']} extra; max |box diff| "
                f"{exported_same['max_box_diff_px']} px, max |score diff| {exported_same['max_score_diff']})"
            )
            for line in exported_same["unmatched"]:
                print(f"  {line}")
        results.update(
            {
                "arms": {
                    name: {
                        "images_per_s": round(len(paths) / t.wall, 4),
                        "s_per_image": round(t.wall / len(paths), 3),
                        "cpu_s_per_image": round(t.cpu / len(paths), 3),
                        "peak_rss_mib": round(t.peak_mib),
                    }
                    for name, t in best.items()
                },
                "speedup_wall": round(ratio, 3),
                "speedup_cpu": round(cpu_ratio, 3),
                "equality": same,
                "exported_equality": exported_same,
            }
        )
        if args.ablation_images > 0:
            print(
                f"\nablation ({args.ablation_images} images per arm, best of {args.rounds} rounds, "
                f"model only, no decoding):"
            )
            rows = ablation(weights, paths[: args.ablation_images], args.size, max_size, args.rounds)
            print(f"{'arm':<36}{'s/image':>9}{'speed-up':>10}{'CPU s/image':>13}{'CPU speed-up':>14}")
            for row in rows:
                print(
                    f"{row['arm']:<36}{row['s_per_image']:>9.2f}{row['speedup']:>9.2f}x"
                    f"{row['cpu_s_per_image']:>13.2f}{row['cpu_speedup']:>13.2f}x"
                )
            results["ablation"] = rows
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0 if same["equal"] and (exported_same is None or exported_same["equal"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
