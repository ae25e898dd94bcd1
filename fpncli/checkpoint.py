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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpncli.atomic import atomic_write
from fpncli.config import ModelConfig
from fpncli.errors import FpnError

# The header and the reading (a foreign file named for what it is) are fpncli.weight_files':
# it tells every kind of weights file apart.
from fpncli.weight_files import FORMAT, VERSION, check_version, is_checkpoint, load_file


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
