"""What each export format can hold: the formats ``fpn export`` writes and the model options
one of them cannot express, refused before any work (by ``fpn export``, and by the graph
paths of ``fpn detect``/``fpn eval``, which run the ONNX graph)."""

from __future__ import annotations

from typing import Any

FORMATS = ("onnx", "torchscript")
# Options a format cannot express: (config field, value) -> (those formats, reason). Every
# neck and RoI-pooling option of the registry exports today (tests/deploy/test_export.py keeps that
# true); an option that cannot is listed here and refused with its reason, before any work.
REFUSED: dict[tuple[str, Any], tuple[tuple[str, ...], str]] = {
    ("sac_deform", True): (
        ("onnx",),
        "ONNX has no operator for torchvision::deform_conv2d (TorchScript has)",
    ),
}


def refusal(cfg: Any, fmt: str) -> str | None:
    """Why a model of configuration ``cfg`` cannot be exported to ``fmt`` (``"sac_deform True
    cannot be exported to onnx: ..."``), or None when it can."""
    for (key, value), (formats, reason) in REFUSED.items():
        if getattr(cfg, key, None) == value and fmt in formats:
            return f"{key} {value} cannot be exported to {fmt}: {reason}"
    return None
