"""Output-path safety: checked before a command does any work or writes anything.

Every command names its outputs (files and folders) and its inputs; :func:`check_outputs`
refuses, with one line naming the path, an output that is one of the inputs (it would be
replaced), a folder where a file is expected or a file where a folder is expected, and a
place this user cannot write to.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fpncli.errors import FpnError

PathLike = str | os.PathLike


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve()


def _check_writable(path: Path, what: str) -> None:
    anchor = _existing_ancestor(path)
    if anchor != Path(os.path.abspath(path)) and not anchor.is_dir():
        raise FpnError(f"{path}: cannot create {what}: {anchor} is a file, not a folder")
    if anchor == Path(os.path.abspath(path)):
        # The output exists: its folder must take a new file (we replace it atomically).
        folder = anchor if anchor.is_dir() else anchor.parent
    else:
        folder = anchor
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FpnError(f"{path}: cannot write {what} here (permission denied for {folder})")


def check_outputs(
    *,
    files: Iterable[PathLike | None] = (),
    folders: Iterable[PathLike | None] = (),
    inputs: Iterable[PathLike | None] = (),
) -> None:
    """Refuse unusable output paths before any work (``None`` entries are ignored).

    Args:
        files: output files (written or replaced).
        folders: output folders (created when missing).
        inputs: files and folders the command reads; no output file may be one of them
            (an output folder may hold inputs: only the files written there matter).

    Raises:
        FpnError: one line naming the output and the problem.
    """
    ins = [Path(p) for p in inputs if p is not None]
    for folder in (Path(p) for p in folders if p is not None):
        if folder.exists() and not folder.is_dir():
            raise FpnError(f"{folder}: exists and is not a folder")
        _check_writable(folder, "the output folder")
    for file in (Path(p) for p in files if p is not None):
        if file.is_dir():
            raise FpnError(f"{file}: is a folder, expected a file path")
        for source in ins:
            if source.exists() and _same_file(file, source):
                raise FpnError(
                    f"{file}: is also an input of this command ({source}); "
                    f"writing it would destroy that input; choose another output path"
                )
        _check_writable(file, "the file")
