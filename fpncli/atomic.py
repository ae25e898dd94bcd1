"""Atomic file writes: a temporary file beside the target, fsync, then rename.

A crash, kill or Ctrl-C mid-write leaves the previous file intact and no temporary behind.
Torch-free, so commands that only write JSON do not pay for importing it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    The temporary name is unique, so concurrent writers of the same target never collide.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically."""

    def dump(f: IO) -> None:
        json.dump(data, f, indent=indent)
        f.write("\n")

    return atomic_write(path, dump)
