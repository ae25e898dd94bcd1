"""What each AugFPN part costs: one training step (forward + backward) and one inference pass
of the tiny preset per ablation row, in this process's CPU time (which other jobs on a shared
machine disturb far less than wall-clock time), plus the parameters inference runs.

    python scripts/bench_augfpn.py                          # fpn, fpn+cs, fpn+rfa, fpn+soft, augfpn
    python scripts/bench_augfpn.py --rows fpn,augfpn --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def measure(row: str, steps: int, size: int, batch: int) -> dict:
    import torch

    from fpncli.analysis.ablation import parse_row
    from fpncli.config import preset_config
    from fpncli.modeling.detector import build_model

    neck, overrides = parse_row(row)
    names = ["a", "b", "c", "d"]
    cfg = preset_config("tiny", neck=neck, class_names=names, category_ids=[1, 2, 3, 4], **overrides)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    images = [torch.rand(3, size, size) for _ in range(batch)]
    boxes = torch.tensor([[5.0, 6.0, 60.0, 75.0], [100.0, 10.0, 148.0, 87.0], [30.0, 120.0, 200.0, 250.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 3, 2])} for _ in range(batch)]
    train_cpu = []
    for i in range(steps + 1):  # the first step warms up and is not counted
        start = time.process_time()
        losses = model(images, targets)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)
        if i:
            train_cpu.append(time.process_time() - start)
    model.drop_training_only().eval()
    infer_cpu = []
    with torch.inference_mode():
        for i in range(steps + 1):
            start = time.process_time()
            model(images[:1])
            if i:
                infer_cpu.append(time.process_time() - start)
    return {
        "row": row,
        "train_step_cpu_s": round(statistics.median(train_cpu), 3),
        "inference_cpu_s": round(statistics.median(infer_cpu), 3),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="fpn,fpn+cs,fpn+rfa,fpn+soft,augfpn")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="square training images (px)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = [measure(row, args.steps, args.size, args.batch) for row in args.rows.split(",")]
    base = results[0]
    for r in results:
        r["train_vs_first"] = round(r["train_step_cpu_s"] / base["train_step_cpu_s"], 2)
        r["inference_vs_first"] = round(r["inference_cpu_s"] / base["inference_cpu_s"], 2)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
