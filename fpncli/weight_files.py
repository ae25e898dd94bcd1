"""What kind of file a ``--weights`` value names, and reading one safely: the one place that
tells ``coco`` and ``none``, an fpncli checkpoint, a torchvision state dict, a ResNet state
dict, ``fpn export``'s ONNX and TorchScript files and foreign files apart.

Everything that reads weights asks here (:mod:`fpncli.checkpoint`, :mod:`fpncli.modeling.weights`,
:mod:`fpncli.modeling.exported`, the commands) and this module imports none of them, so a
``--weights`` value is told apart once, below its readers, without an import cycle.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch

from fpncli.errors import FpnError, first_line

# An fpncli checkpoint is a dict with this header (the layout: fpncli.checkpoint).
FORMAT = "fpncli-checkpoint"
VERSION = 1
# fpn export's files (fpncli.modeling.export writes them): TorchScript keeps the metadata in
# an extra file of its zip archive under this name.
TORCHSCRIPT_METADATA = "fpncli_export.json"
# ONNX keeps it in metadata_props under this key (plus a few plain keys for other tools).
ONNX_METADATA_KEY = "fpncli_export"
ONNX_INSTALL_HINT = 'pip install "fpncli[onnx]" (or: pip install onnx onnxruntime)'

WeightsKind = Literal["coco", "none", "onnx", "torchscript", "file"]
ContentsKind = Literal["checkpoint", "torchvision", "backbone"]


def weights_kind(weights: str) -> WeightsKind:
    """``coco``, ``none``, ``onnx`` / ``torchscript`` (an exported model, see
    :func:`exported_format`) or ``file``: anything else, a path that :func:`load_file` reads
    and :func:`contents_kind` tells apart."""
    if weights in ("coco", "none"):
        return weights  # type: ignore[return-value]  # narrowed by the test just above
    fmt = exported_format(weights)
    return fmt if fmt is not None else "file"  # type: ignore[return-value]  # onnx or torchscript


def exported_format(path: str | os.PathLike) -> str | None:
    """``onnx`` (a ``.onnx`` file), ``torchscript`` (a TorchScript archive written by
    ``fpn export``) or None (anything else: a checkpoint, a state dict, no such file)."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return "onnx"
    try:
        if p.is_file() and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                if any(n.endswith("/extra/" + TORCHSCRIPT_METADATA) for n in z.namelist()):
                    return "torchscript"
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def contents_kind(obj: Any) -> ContentsKind | None:
    """What :func:`load_file` returned: an fpncli ``checkpoint``, a ``torchvision`` Faster
    R-CNN state dict (``backbone.body.*`` names), a ``backbone`` (ResNet) state dict, or None
    (nothing fpncli can load as a detector)."""
    if is_checkpoint(obj):
        return "checkpoint"
    if isinstance(obj, dict) and any(k.startswith("backbone.body.") for k in obj):
        return "torchvision"
    if isinstance(obj, dict) and "layer1.0.conv1.weight" in obj:
        return "backbone"
    return None


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def check_version(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint written by a newer fpncli (its layout may mean something else)."""
    version = obj.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise FpnError(f"{path}: checkpoint version {version!r} is not a number")
    if version > VERSION:
        raise FpnError(
            f"{path}: checkpoint version {version} is newer than this fpncli "
            f"understands ({VERSION}); upgrade fpncli"
        )


def load_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear error per failure."""
    path = Path(path)
    if not path.exists():
        raise FpnError(f"{path}: no such file")
    if path.is_dir():
        raise FpnError(f"{path}: is a folder, expected a weights file")
    if path.stat().st_size == 0:
        raise FpnError(f"{path}: file is empty")
    try:
        with warnings.catch_warnings():
            # torch.load warns before failing on a TorchScript archive; the error below says it.
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            # ... and about a plain pickle's protocol: the error below says what it is.
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for garbage (IndexError, EOFError, ...)
        # Never pass torch's own advice on: it suggests weights_only=False, i.e. unpickling.
        raise FpnError(f"{path}: {_foreign_kind(path) or _unreadable_reason(path, exc)}") from None


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """What a file torch.load refused is not, in our words (for :func:`load_file`)."""
    import re

    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    # torch.save writes a zip archive; before PyTorch 1.6 it wrote a plain pickle stream.
    archive = head[:4] == b"PK\x03\x04" or zipfile.is_zipfile(path)
    if archive and isinstance(exc, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        return (
            f"not a safe weights file: it holds pickled Python objects{what}, which fpncli never "
            "loads (loading them can run code); save a state_dict or an fpncli checkpoint instead"
        )
    if archive:
        return "not a readable PyTorch weights file: truncated or corrupt"
    if head[:1] == b"\x80":  # a pickle stream: pickle.dump's, or a truncated legacy torch.save
        return (
            "not a readable PyTorch weights file: a Python pickle (pickle.dump's, or a damaged "
            "pre-1.6 torch.save file), which fpncli never loads (loading one can run code)"
        )
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a readable PyTorch weights file: unrecognised binary data"
    if text.isprintable() or all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"not a readable PyTorch weights file: it is a text file (starts {first!r})"
    return "not a readable PyTorch weights file: unrecognised data"


def _foreign_kind(path: Path) -> str | None:
    """What a file torch.load refused is, when it is a model of another kind: a TorchScript
    archive without fpn export's metadata, or an ONNX model under another suffix."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist()):
                    return (
                        "a TorchScript archive without fpn export's metadata (fpncli_export.json); "
                        "export the fpncli checkpoint again, or pass the checkpoint itself"
                    )
            return None
        with open(path, "rb") as f:
            head = f.read(1)
    except (OSError, zipfile.BadZipFile):
        return None
    if head != b"\x08":  # an ONNX ModelProto starts with its ir_version field
        return None
    try:
        onnx_metadata(path)
    except FpnError:  # not ONNX either (or no onnx package): the generic message stands
        return None
    return "an ONNX model; name it .onnx to run it (fpn detect --weights model.onnx)"


def onnx_metadata(path: str | os.PathLike) -> str | None:
    """The JSON ``fpn export`` stored in an ONNX file's ``metadata_props``, or None when the
    file has none; a file that is not a readable ONNX graph is an :class:`FpnError`. Read
    through the onnx package, without the weights' external data."""
    try:
        import onnx
    except ImportError:
        raise FpnError(f"reading ONNX models needs the onnx package: {ONNX_INSTALL_HINT}") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own types for garbage
        raise FpnError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    if not len(proto.graph.node):
        raise FpnError(f"{path}: not a readable ONNX model (no graph)")
    return {p.key: p.value for p in proto.metadata_props}.get(ONNX_METADATA_KEY)
