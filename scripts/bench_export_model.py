"""The model alone, one thread: PyTorch as `fpn detect` runs it vs ONNX Runtime on `fpn export`'s
graph with and without Winograd 3x3 convolutions (CPU seconds per image, best of --rounds).

Same seeded R50-FPN weights as ``scripts/bench_detect.py`` (its ``make_weights``), the same
COCO val images, decoded once up front; no pipeline, no file I/O, no session creation in the
timings. Arms alternate order each round so that drift hits them alike.

    python scripts/bench_export_model.py                   # 4 images at 512 px, ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from bench_detect import DEFAULT_DATA, make_weights  # noqa: E402  (the scripts folder on the path first)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco-tiny (its val2017 images)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument(
        "--size",
        type=int,
        default=512,
        help="shorter side (longer capped at 1333/800 of it, as bench_detect.py)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from fpncli.modeling.export import onnx_bytes
    from fpncli.modeling.exported import onnx_session
    from fpncli.modeling.optimize import optimize_for_inference
    from fpncli.modeling.weights import load_detector

    torch.set_num_threads(1)
    paths = sorted((args.data / "val2017").glob("*.jpg"))[: args.images]
    if not paths:
        print(f"no images in {args.data / 'val2017'}", file=sys.stderr)
        return 2
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    tensors = [torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in arrays]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "r50.pt"
        make_weights(weights, args.seed)
        model = load_detector(
            str(weights), min_size=args.size, max_size=round(args.size * 1333 / 800)
        ).model.eval()
    winograd = onnx_session(onnx_bytes(model, {}, winograd=True), threads=1)
    direct = onnx_session(onnx_bytes(model, {}, winograd=False), threads=1)
    fast = optimize_for_inference(model, inplace=True)
    arms: dict[str, Callable[[], object]] = {
        "PyTorch as fpn detect runs it": lambda: [fast([t]) for t in tensors],
        "ONNX Runtime, Winograd graph": lambda: [winograd.run(None, {"image": a}) for a in arrays],
        "ONNX Runtime, direct convolutions": lambda: [direct.run(None, {"image": a}) for a in arrays],
    }
    best: dict[str, float] = {}
    print(f"{len(arrays)} images at {args.size} px, 1 thread, best of {args.rounds} rounds")
    with torch.inference_mode():
        for run in arms.values():
            run()  # warm-up
        for r in range(args.rounds):
            order = list(arms.items()) if r % 2 == 0 else list(reversed(arms.items()))
            for name, run in order:
                start = time.process_time()
                run()
                best[name] = min(best.get(name, float("inf")), (time.process_time() - start) / len(arrays))
    for name, seconds in best.items():
        print(f"{name:36s} {seconds:.2f} CPU s/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
