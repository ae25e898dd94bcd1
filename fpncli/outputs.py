"""Output-path safety: checked before a command does any work or writes anything.

Every command names its outputs (files and folders) and its inputs; :func:`check_outputs`
refuses, with one line naming the path, an output that is one of the inputs (it would be
replaced), a folder where a file is expected or a file where a folder is expected, and a
place this user cannot write to.

Files named after the inputs (annotated copies) are chosen by :func:`safe_targets`, which
never picks an input or a file that the folder's ledger (:func:`record_outputs`) does not
list as written by this tool.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
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


# --------------------------------------------------------------------------- derived names

# A command that writes files named after its inputs (fpn detect's annotated images and
# videos) lists them in this file in its output folder, before it writes them. That list,
# and nothing else, says which files there are ours: a later run may replace them and skips
# them when it looks for inputs; every other file is the user's and is never replaced.
LEDGER_NAME = ".fpn-outputs.json"


def _fingerprint(path: Path) -> list[int] | None:
    """``[size, mtime_ns]`` of a file, or None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _ledger_entries(folder: Path) -> dict[Path, list[int] | None]:
    """The ledger of ``folder``: resolved path -> the fingerprint recorded once the file was
    written (None: listed, not yet written or the run was killed)."""
    import json

    try:
        files = json.loads((folder / LEDGER_NAME).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if isinstance(files, list):  # a ledger of names only
        files = dict.fromkeys(files)
    if not isinstance(files, dict):
        return {}
    root = Path(os.path.abspath(folder)).resolve()
    out: dict[Path, list[int] | None] = {}
    for name, mark in files.items():
        if isinstance(name, str) and not os.path.isabs(name):
            out[(root / name).resolve()] = mark if isinstance(mark, list) else None
    return out


def _unchanged(path: Path, mark: list[int] | None) -> bool:
    """Whether a ledger entry still stands for the file fpncli wrote (or is to write)."""
    return mark is None or not path.exists() or _fingerprint(path) == mark


def read_ledger(folder: PathLike) -> set[Path]:
    """The files of ``folder`` an earlier run wrote and nobody has replaced since (resolved
    paths): listed in its ledger, with the size and modification time recorded after the
    write (or none recorded, when that run was stopped). Empty when there is no ledger or it
    cannot be read: then nothing there counts as ours."""
    return {path for path, mark in _ledger_entries(Path(folder)).items() if _unchanged(path, mark)}


def record_outputs(folder: PathLike, files: Iterable[PathLike], written: bool = False) -> None:
    """Add ``files`` (inside ``folder``) to ``folder``'s ledger, atomically; entries whose
    files are gone are dropped. Call it before writing those files, and with ``written``
    after: each file's size and modification time are then recorded, so that a file
    someone puts at that name later is not taken for ours."""
    from fpncli.atomic import write_json

    folder = Path(folder)
    root = Path(os.path.abspath(folder)).resolve()
    entries = {p: m for p, m in _ledger_entries(folder).items() if p.exists() and _unchanged(p, m)}
    for f in files:
        path = Path(os.path.abspath(f)).resolve()
        entries[path] = _fingerprint(path) if written else entries.get(path)
    listed = {p.relative_to(root).as_posix(): m for p, m in sorted(entries.items()) if root in p.parents}
    write_json(folder / LEDGER_NAME, {"written_by": "fpncli", "files": listed})


def _derived_name(path: Path, n: int) -> Path:
    return path.with_name(f"{path.stem}_det{'' if n == 1 else n}{path.suffix}")


def safe_targets(
    wanted: Sequence[PathLike], inputs: Iterable[PathLike], owned: Iterable[PathLike] = ()
) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """Output paths that replace no input and no file this tool did not write.

    Each wanted path is kept when it is free: not an input of the run, not another output
    of the run, and either absent or listed in ``owned`` (an earlier run's ledger). Else it
    becomes ``<stem>_det<suffix>``, ``<stem>_det2<suffix>``, ... (the first free one), so a
    rerun picks the same names.

    Returns:
        The targets, in the order wanted, and ``(wanted, chosen)`` for each renamed one.
    """
    blocked = {Path(os.path.abspath(p)).resolve() for p in inputs}
    ours = {Path(os.path.abspath(p)).resolve() for p in owned}
    targets: list[Path] = []
    renamed: list[tuple[Path, Path]] = []
    for want in (Path(p) for p in wanted):
        candidate, n = want, 0
        while True:
            key = Path(os.path.abspath(candidate)).resolve()
            taken = key in blocked or ((candidate.exists() or candidate.is_symlink()) and key not in ours)
            if not taken:
                break
            n += 1
            candidate = _derived_name(want, n)
        blocked.add(key)
        targets.append(candidate)
        if candidate != want:
            renamed.append((want, candidate))
    return targets, renamed
