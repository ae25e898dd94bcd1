"""Finding the inputs of a run: files, folders and glob patterns, without our own outputs.

Folders and patterns skip exactly the files an earlier run listed in the output folder's
ledger (:func:`fpncli.outputs.read_ledger`): every other file, whatever its name, is the
user's and is an input. A file named on the command line is always an input.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from fpncli.data.images import IMAGE_EXTENSIONS, is_image_file
from fpncli.data.video import VIDEO_EXTENSIONS, is_video_file
from fpncli.errors import FpnError
from fpncli.outputs import read_ledger

_GLOB_CHARS = set("*?[")


def expand_sources(
    sources: Sequence[str | os.PathLike],
    recursive: bool = False,
    exclude: Path | None = None,
    videos: bool = False,
) -> list[Path]:
    """Image paths from files, folders and glob patterns, in a stable order, without repeats.

    ``videos``: folders and patterns also give video files (``data/video.py``'s extensions).

    A file is taken as given (whatever its extension: reading it will say if it is no
    image); a folder gives its files with an image extension (``--recursive``: also in
    sub-folders), sorted; a glob pattern gives its sorted matches (``**`` only with
    ``recursive``). Inside folders and patterns, the files that ``exclude`` (the output
    folder) lists in its ledger as an earlier run's outputs are skipped.

    Raises:
        FpnError: a source that does not exist or matches no image.
    """
    if not sources:
        raise FpnError("no SOURCE given: pass image files, folders or glob patterns")
    ours = read_ledger(exclude) if exclude is not None else set()
    seen: set[Path] = set()
    out: list[Path] = []

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)

    for source in sources:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_dir():
            found = _folder_inputs(path, recursive, ours, videos)
            if not found:
                hint = "" if recursive else " (use --recursive to look in sub-folders)"
                kinds = "images or videos" if videos else "images"
                extensions = IMAGE_EXTENSIONS + (VIDEO_EXTENSIONS if videos else ())
                raise FpnError(f"{text}: folder has no {kinds} ({', '.join(extensions)}){hint}")
        elif path.exists() or path.is_symlink():
            found = [path]
        elif _GLOB_CHARS & set(text):
            found = []
            for match in sorted(glob.glob(os.path.expanduser(text), recursive=recursive)):
                m = Path(match)
                if m.is_dir():
                    found.extend(_folder_inputs(m, recursive, ours, videos))
                elif _is_input(m, videos) and m.resolve() not in ours:
                    found.append(m)
            if not found:
                raise FpnError(f"{text}: pattern matches no images")
        else:
            raise FpnError(f"{text}: no such file or folder")
        for p in found:
            add(p)
    return out


def _is_input(path: Path, videos: bool) -> bool:
    return is_image_file(path) or (videos and is_video_file(path))


def _folder_inputs(folder: Path, recursive: bool, ours: set[Path], videos: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return [
        p
        for p in sorted(folder.glob(pattern))
        if _is_input(p, videos) and not p.is_dir() and p.resolve() not in ours
    ]
