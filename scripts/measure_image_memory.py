"""Peak memory of one large image through `fpn detect`'s per-image path (decode, normalise,
resize, forward) on the CPU: ``python scripts/measure_image_memory.py 10000 tiny``.

Run once per size and preset (peak RSS only grows within a process). The figures are in the
README ("Files, errors and limits").
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", type=int, help="square image side in pixels")
    parser.add_argument("preset", nargs="?", default="tiny", help="tiny or default")
    args = parser.parse_args()
    side = args.side
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img_{side}.png"
        # A horizontal ramp: compresses well, like the 650 KB 15000x15000 PNG of issue 10.
        row = (np.arange(side, dtype=np.uint32) % 256).astype(np.uint8)
        Image.fromarray(np.tile(row[None, :, None], (side, 1, 3))).save(path, compress_level=1)
        del row

        import torch

        from fpncli.config import preset_config
        from fpncli.inference.predict import predict_images
        from fpncli.modeling.detector import build_model

        torch.set_num_threads(1)
        model = build_model(preset_config(args.preset, class_names=["a"], category_ids=[1])).eval()
        # ru_maxrss is in KiB on Linux; the PNG was written before the model, with less memory.
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        t0 = time.perf_counter()
        result = next(iter(predict_images(model, [path], max_pixels=side * side)))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"{args.preset} {side}x{side} ({side * side / 1e6:.0f} MP): peak RSS {peak:.2f} GiB "
        f"(before the image: {base:.2f} GiB), {time.perf_counter() - t0:.0f} s, error={result.error}"
    )


if __name__ == "__main__":
    main()
