"""Self-describing, safe, atomically written checkpoints.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(path, weights_only=True)``: no pickled Python objects, so an untrusted file
cannot run code. Layout::

    {"format": "fpncli-checkpoint", "version": 1,
     "model_config": ModelConfig.to_dict(),       # classes and category ids included
     "state_dict": {name: Tensor},
     "train_state": {...}}                        # optional: optimizer, scheduler, RNG, ...
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpncli.atomic import atomic_write
from fpncli.config import ModelConfig
from fpncli.errors import FpnError

FORMAT = "fpncli-checkpoint"
VERSION = 1


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (:func:`fpncli.atomic.atomic_write`): a crash or
    kill mid-write leaves the previous file at ``path`` untouched."""
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]  # checked just above
        else:
            return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, train_state: dict | None = None) -> Path:
    """Write ``model`` (an :class:`~fpncli.modeling.detector.FPNFasterRCNN`) and optional
    training state to ``path`` atomically."""
    model = unwrap(model)
    cfg: ModelConfig = model.config  # type: ignore[assignment]  # an FPNFasterRCNN's config
    config = cfg.to_dict()  # resolved when the model was built: rebuilds the same modules
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if train_state is not None:
        payload["train_state"] = train_state
    return atomic_torch_save(payload, path)


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
    # torch.save writes a zip archive (legacy files: a pickle, protocol 2+).
    looks_like_torch = head[:4] == b"PK\x03\x04" or zipfile.is_zipfile(path) or head[:1] == b"\x80"
    if looks_like_torch and isinstance(exc, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        return (
            f"not a safe weights file: it holds pickled Python objects{what}, which fpncli never "
            "loads (loading them can run code); save a state_dict or an fpncli checkpoint instead"
        )
    if looks_like_torch:
        return "not a readable PyTorch weights file: truncated or corrupt"
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
    from fpncli.modeling.exported import onnx_metadata

    try:
        onnx_metadata(path)
    except FpnError:  # not ONNX either (or no onnx package): the generic message stands
        return None
    return "an ONNX model; name it .onnx to run it (fpn detect --weights model.onnx)"


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


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check an fpncli checkpoint; a corrupt or foreign file is an :class:`FpnError`."""
    obj = load_file(path)
    if not is_checkpoint(obj):
        raise FpnError(f"{path}: not an fpncli checkpoint (no '{FORMAT}' header)")
    check_version(obj, path)
    for key in ("model_config", "state_dict"):
        if key not in obj:
            raise FpnError(f"{path}: checkpoint has no {key!r}")
    return obj
