"""What an exported file says about itself: the metadata ``fpn export`` stores in it (the
model configuration, classes, input and output layout) and the self-check's report, added
once the check has passed."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.modeling.detector import FPNFasterRCNN


def export_metadata(model: FPNFasterRCNN, fmt: str, source: str) -> dict[str, Any]:
    import torch

    from fpncli import __version__
    from fpncli.modeling.exported import EXPORT_VERSION

    cfg = model.config
    return {
        "version": EXPORT_VERSION,
        "format": fmt,
        "fpncli": __version__,
        "torch": torch.__version__,
        "source": source,
        "model_config": cfg.to_dict(),
        "class_names": list(cfg.class_names),
        "category_ids": list(cfg.category_ids),
        "input": "image: uint8[H, W, 3] RGB, any size",
        "outputs": "boxes: float32[N, 4] xyxy in the input's pixels; scores: float32[N] decreasing; "
        "labels: int64[N] in 1..K (class_names[label - 1], category_ids[label - 1])",
    }


def stored_metadata(data: bytes, fmt: str) -> str:
    """The metadata JSON inside exported bytes."""
    from fpncli.weight_files import ONNX_METADATA_KEY, TORCHSCRIPT_METADATA

    if fmt == "onnx":
        import onnx

        proto = onnx.load_from_string(data)
        return {p.key: p.value for p in proto.metadata_props}[ONNX_METADATA_KEY]
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        name = next(n for n in z.namelist() if n.endswith("/extra/" + TORCHSCRIPT_METADATA))
        return z.read(name).decode("utf-8")


def with_report(data: bytes, fmt: str, report: dict[str, Any], extra: dict[str, Any] | None = None) -> bytes:
    """``data`` with the self-check's report added to its metadata (``self_check``): the
    graph is unchanged (ONNX: the metadata property rewritten; TorchScript: the archive saved
    again with the new extra file)."""
    from fpncli.weight_files import ONNX_METADATA_KEY, TORCHSCRIPT_METADATA

    meta = json.loads(stored_metadata(data, fmt))
    meta["self_check"] = report
    meta.update(extra or {})  # e.g. {"precision": "int8"}
    if fmt == "onnx":
        import onnx

        proto = onnx.load_from_string(data)
        for prop in proto.metadata_props:
            if prop.key == ONNX_METADATA_KEY:
                prop.value = json.dumps(meta)
        return proto.SerializeToString()
    import warnings

    import torch

    torch._nnpack_available()  # a --winograd file needs NNPACK initialised to load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        buffer = io.BytesIO()
        torch.jit.save(module, buffer, _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
    return buffer.getvalue()
