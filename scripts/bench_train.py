"""Training throughput: `fpn train`'s engine vs a torchvision reference-style loop.

Same model (R50-FPN, torchvision's ``fasterrcnn_resnet50_fpn`` architecture, random init,
trainable BatchNorm), same data (a synthetic COCO-layout set), same batch, SGD with the same
hyper-parameters. Each side runs in its own process (clean peak-memory figures); the first
``--warmup`` iterations are not timed.

The reference loop is what torchvision's ``references/detection/train.py`` does: decode and
convert to float in DataLoader workers, ``model(images, targets)``, ``sum(losses)``,
backward, step (``torch.autocast`` fp16 + GradScaler with ``--amp``).
``fpn train`` adds uint8 transfer (4x less data through the loader and to the GPU),
aspect-ratio grouped batches, channels_last and bf16 AMP on CUDA.

    python scripts/bench_train.py                       # CPU, 256 px, batch 2
    python scripts/bench_train.py --device cuda --amp --size 800 --batch-size 8 --iters 50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args) -> dict:
    from fpncli.training.config import TrainConfig
    from fpncli.training.train import train

    out = Path(tempfile.mkdtemp(prefix="bench_fpn_")) / "run"
    cfg = TrainConfig(
        data=args.data,
        preset="default",
        out=str(out),
        iters=args.warmup + args.iters,
        batch_size=args.batch_size,
        lr=0.02 * args.batch_size / 16,
        backbone_weights="none",
        model={"min_size": args.size, "max_size": int(args.size * 1333 / 800)},
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        eval_every=-1,
        log_every=1,
        clip_grad=None,
        warmup_iters=0,
        seed=0,
    )
    train(cfg)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # iter_time: data wait + step of that iteration, as the reference loop measures it.
    train_recs = [r for r in recs if r["type"] == "train"][args.warmup :]
    timed = [r["iter_time"] for r in train_recs]
    cpu = [r["iter_cpu_time"] for r in train_recs]
    return {
        "images_per_s": args.batch_size * len(timed) / sum(timed),
        "peak_memory_mb": _peak_mb(args.device),
        "cpu_s_per_image": sum(cpu) / (args.batch_size * len(cpu)),
    }


def run_reference(args) -> dict:
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.transforms.functional import to_tensor

    from fpncli.data.coco import load_coco

    ann = sorted(Path(args.data, "annotations").glob("instances_train*.json"))[0]
    coco = load_coco(ann)
    images_dir = Path(args.data) / ann.stem.removeprefix("instances_")
    ids = sorted(coco.images)

    class Coco(Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            rec = coco.images[ids[i]]
            img = to_tensor(Image.open(images_dir / rec["file_name"]).convert("RGB"))  # float in the worker
            anns = [a for a in coco.annotations[ids[i]] if not a.get("iscrowd")]
            boxes = torch.tensor(
                [
                    [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                    for a in anns
                ],
                dtype=torch.float32,
            ).reshape(-1, 4)
            labels = torch.tensor(
                [coco.categories.id_to_label[a["category_id"]] for a in anns], dtype=torch.int64
            )
            return img, {"boxes": boxes, "labels": labels}

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = (
        fasterrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=len(coco.categories) + 1,
            min_size=args.size,
            max_size=int(args.size * 1333 / 800),
        )
        .to(device)
        .train()
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.02 * args.batch_size / 16, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if args.amp else None
    loader = DataLoader(
        Coco(),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        collate_fn=lambda b: tuple(zip(*b)),
        drop_last=True,
    )
    times, cpu, it = [], [], 0
    while it < args.warmup + args.iters:
        t_data, c_data = time.perf_counter(), time.process_time()
        for images, targets in loader:
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with torch.autocast("cuda", enabled=args.amp):
                loss = sum(model(images, targets).values())
            opt.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t_data)
            cpu.append(time.process_time() - c_data)
            it += 1
            if it >= args.warmup + args.iters:
                break
            t_data, c_data = time.perf_counter(), time.process_time()
    timed, cpu = times[args.warmup :], cpu[args.warmup :]
    return {
        "images_per_s": args.batch_size * len(timed) / sum(timed),
        "peak_memory_mb": _peak_mb(args.device),
        "cpu_s_per_image": sum(cpu) / (args.batch_size * len(cpu)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="COCO-layout root (default: a fresh synthetic set)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--size", type=int, default=256, help="shorter image side")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--iters", type=int, default=8, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads per side (default: torch's)")
    p.add_argument("--json-out", help="also write the figures here (JSON)")
    p.add_argument("--only", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        result = (run_ours if args.only == "ours" else run_reference)(args)
        print("RESULT " + json.dumps(result))
        return
    if args.data is None:
        from fpncli.data.synth import synthesize

        args.data = str(Path(tempfile.mkdtemp(prefix="bench_data_")))
        n = max(64, args.batch_size * (args.warmup + args.iters))
        synthesize(args.data, train=n, val=0, seed=0)
    results = {}
    for side in ("reference", "ours"):
        cmd = [sys.executable, __file__, "--only", side, *sys.argv[1:], "--data", args.data]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        line = [out for out in proc.stdout.splitlines() if out.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            sys.exit(f"{side} failed:\n{proc.stderr[-2000:]}")
        results[side] = json.loads(line[0][len("RESULT ") :])
    ours, ref = results["ours"], results["reference"]
    print(f"command: python scripts/bench_train.py {' '.join(sys.argv[1:])}")
    print(
        f"model R50-FPN, shorter side {args.size} px, batch {args.batch_size}, device {args.device}"
        f"{' AMP' if args.amp else ''}, {args.iters} timed iterations after {args.warmup}"
    )
    # CPU seconds per image (this process only; with --workers 0 it includes decoding) is
    # the figure to trust on a shared machine, where other jobs inflate wall-clock time.
    print(f"{'':28s}{'images/s':>10s}{'CPU s/img':>11s}{'peak MB':>10s}")
    for name, r in (("torchvision reference loop", ref), ("fpn train", ours)):
        print(f"{name:28s}{r['images_per_s']:10.2f}{r['cpu_s_per_image']:11.2f}{r['peak_memory_mb']:10.0f}")
    print(
        f"speed ratio (fpn train / reference): {ours['images_per_s'] / ref['images_per_s']:.2f}x wall-clock, "
        f"{ref['cpu_s_per_image'] / ours['cpu_s_per_image']:.2f}x by CPU time"
    )
    if args.json_out:
        ratio = ours["images_per_s"] / ref["images_per_s"]
        Path(args.json_out).write_text(json.dumps({"reference": ref, "ours": ours, "speedup_wall": ratio}))


if __name__ == "__main__":
    main()
