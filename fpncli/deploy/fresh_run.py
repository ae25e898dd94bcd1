"""Running an exported file as a user will: loaded from disk in a fresh Python process.

The self-check must not pass because of state the exporting process happens to have (a
TorchScript file with NNPACK convolutions used to work only after something in the process
had initialised NNPACK). So the file about to be written is saved to a temporary path and
run here, in a new interpreter, through the loader ``fpn detect --weights FILE`` uses; the
detections come back as tensors.

Run as ``python -m fpncli.deploy.fresh_run MODEL IMAGES RESULTS``: IMAGES holds a list of
``Tensor[H, W, 3]`` uint8, RESULTS gets per image ``[boxes, scores, labels]`` or the
error's first line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fpncli.errors import FpnError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

# A fresh process imports torch and loads the model: a minute is plenty for the check set
# of an R50-FPN on a slow 2-core machine, ten keeps a stuck process from hanging the export.
_TIMEOUT = 600


def run_fresh(model_file: Path, images: Sequence[Tensor]) -> list[tuple[Tensor, Tensor, Tensor] | str]:
    """The exported file's detections for ``images`` (``Tensor[H, W, 3]`` uint8), computed in
    a fresh process: per image ``(boxes [N, 4] xyxy px, scores [N], labels [N])``, or the
    error that image raised (one line).

    Raises:
        FpnError: the file does not load, or the process fails, in a fresh process.
    """
    import torch

    with tempfile.TemporaryDirectory(prefix="fpn-export-check-") as tmp:
        images_file, results_file = Path(tmp) / "images.pt", Path(tmp) / "results.pt"
        torch.save([img.contiguous() for img in images], images_file)
        cmd = [
            sys.executable,
            "-m",
            "fpncli.deploy.fresh_run",
            str(model_file),
            str(images_file),
            str(results_file),
        ]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_TIMEOUT, env=os.environ.copy()
            )
        except subprocess.TimeoutExpired:
            raise FpnError(
                f"self-check failed: the exported model ran over {_TIMEOUT} s in a fresh process"
            ) from None
        if done.returncode != 0 or not results_file.is_file():
            lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit code {done.returncode}"
            raise FpnError(
                f"self-check failed: the exported model does not run in a fresh process ({reason})"
            )
        results = torch.load(results_file, weights_only=True)
    return [r if isinstance(r, str) else (r[0], r[1], r[2]) for r in results]


def _main(model_file: str, images_file: str, results_file: str) -> None:
    import torch

    from fpncli.modeling.exported import load_exported

    model = load_exported(model_file)
    results: list[object] = []
    for image in torch.load(images_file, weights_only=True):
        try:
            out = model.detect(image)
            results.append([out["boxes"], out["scores"], out["labels"]])
        except Exception as exc:  # each image's error is reported by the parent, in one line
            results.append(first_line(exc))
    torch.save(results, results_file)


if __name__ == "__main__":
    _main(*sys.argv[1:4])
