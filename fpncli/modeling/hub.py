"""Published weight files (torchvision's COCO_V1 detector, ImageNet ResNets) through the torch hub
download cache: where each is kept, downloading it once, and recognising the COCO_V1 file."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

import torch

from fpncli.errors import FpnError

COCO_WEIGHTS_URL = "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


def is_coco_v1_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is torchvision's COCO_V1 file itself (its SHA-256 starts with the
    digits in its published name), e.g. passed as a path instead of ``--weights coco``."""
    match = re.search(r"-([a-f0-9]{6,})\.", os.path.basename(urlparse(COCO_WEIGHTS_URL).path))
    assert match is not None  # the URL above carries the hash prefix
    expected = match.group(1)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest().startswith(expected)


def hub_cache_path(url: str) -> Path:
    """Where ``torch.hub`` keeps the file of ``url`` (``$TORCH_HOME/hub/checkpoints/<name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def download_cached(url: str) -> Path:
    """The hub-cache path of ``url``, downloading it first when it is not there.

    Offline, this raises one :class:`FpnError` that names the URL and the exact path where
    the file can be placed by hand.
    """
    path = hub_cache_path(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # torchvision's file names carry the first hex digits of their SHA-256.
    match = re.search(r"-([a-f0-9]{6,})\.", path.name)
    try:
        torch.hub.download_url_to_file(
            url, str(path), hash_prefix=match.group(1) if match else None, progress=True
        )
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FpnError(
            f"cannot download {url} ({reason}); if this machine is offline, "
            f"download it elsewhere and place it at {path}"
        ) from None
    return path
