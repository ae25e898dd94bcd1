"""What the exported graph's eager-equal NMS costs: `fpn export`'s ONNX graph as it is (the
class-wise and RPN NMS of ``fpncli.modeling.graph_nms``, equal to eager PyTorch's) against the
same graph with torchvision's traced ``batched_nms`` (the class shift only, as before), on ONNX
Runtime, with how many detections the two disagree on.

Same seeded R50-FPN weights as ``scripts/bench_detect.py`` (its ``make_weights``: a few
thousand candidates >= 0.05 reach the class-wise NMS, as with trained weights), the same COCO
val images, decoded once; arms alternate order each round.

    python scripts/bench_graph_nms.py            # 4 images at 800 px, 4 rounds, ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from bench_detect import DEFAULT_DATA, make_weights  # noqa: E402  (the scripts folder on the path first)


def graphs(weights: Path, size: int) -> dict[str, bytes]:
    """``{"eager-equal": graph, "shift only": graph}`` of the model at ``weights``."""
    from torchvision.ops import boxes as box_ops

    import fpncli.modeling.export as export
    from fpncli.modeling.weights import load_detector

    model = load_detector(str(weights), min_size=size, max_size=size * 1333 // 800).model.eval()
    out = {"eager-equal": export.onnx_bytes(model, {})}
    kept = export.batched_nms_as_eager, export.rpn_nms_as_eager
    try:  # the graph as fpn export wrote it before graph_nms
        export.batched_nms_as_eager = lambda b, s, i, iou, groups: box_ops.batched_nms(b, s, i, iou)  # type: ignore[assignment]
        export.rpn_nms_as_eager = lambda levels: contextlib.nullcontext()  # type: ignore[assignment]
        out["shift only"] = export.onnx_bytes(model, {})
    finally:
        export.batched_nms_as_eager, export.rpn_nms_as_eager = kept
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco-tiny (its val2017 images)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument(
        "--size", type=int, default=800, help="shorter side (longer capped at 1333/800 of it)"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from fpncli.runtime.cpu import cpu_info, cpu_line

    paths = sorted((args.data / "val2017").glob("*.jpg"))[: args.images]
    if not paths:
        print(f"no images in {args.data / 'val2017'}", file=sys.stderr)
        return 2
    print(cpu_line(cpu_info()))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "r50.pt"
        make_weights(weights, seed=0)
        built = graphs(weights, args.size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {
        name: ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        for name, data in built.items()
    }
    outputs: dict[str, list] = {}
    for name, session in sessions.items():  # warm up, and keep each arm's detections
        outputs[name] = [session.run(None, {"image": a}) for a in arrays]
    seconds = dict.fromkeys(sessions, 0.0)
    for r in range(args.rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for name in order:
            start = time.perf_counter()
            for a in arrays:
                sessions[name].run(None, {"image": a})
            seconds[name] += time.perf_counter() - start
    runs = args.rounds * len(arrays)
    for name, total in seconds.items():
        print(f"{name:12s} {total / runs:.3f} s/image")
    differ = 0
    for a, b in zip(outputs["eager-equal"], outputs["shift only"]):
        same = len(a[1]) == len(b[1]) and np.array_equal(a[2], b[2]) and np.allclose(a[0], b[0], atol=1e-3)
        differ += not same
    print(f"images whose detections differ between the two graphs: {differ} of {len(arrays)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
