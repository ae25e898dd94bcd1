"""Atomic file writes: a temporary file beside the target, fsync, then rename.

A crash, kill or Ctrl-C mid-write leaves the previous file intact. A temporary file left by a
killed process (kill -9 cannot be caught) is removed by the next write of the same target.
Files get the permissions an ordinary write would give (the umask, or the replaced file's
mode), not ``mkstemp``'s 0600. A failed write (full disk, no permission) is one
:class:`FpnError` naming the file. Torch-free, so commands that only write JSON do not pay
for importing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fpncli.errors import FpnError, first_line
from fpncli.runtime.interrupts import deferred_interrupt

_umask_lock = threading.Lock()
# A pid-less temporary (written by fpncli before temporaries carried their writer's pid)
# older than this is stale.
_LEGACY_STALE_SECONDS = 3600


def current_umask() -> int:
    """The process umask (reading it means setting it, hence the lock)."""
    with _umask_lock:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(path: str | os.PathLike, any_name: bool = False) -> list[Path]:
    """Delete temporaries of ``path`` whose writer process is gone (killed mid-write).

    ``any_name``: ``path`` is a folder; clean the temporaries of every file in it (one listing
    for a run that writes thousands of files, instead of one per file).
    """
    path = Path(path)
    folder, prefix = (path, ".") if any_name else (path.parent, f".{path.name}.")
    removed: list[Path] = []
    try:
        candidates = [e for e in os.scandir(folder) if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for entry in candidates:
        tmp = Path(entry.path)
        if any_name:
            # .<name>.<pid>-<random>.tmp: the pid is the last dot-separated part before "-".
            middle = entry.name[: -len(".tmp")].rsplit(".", 1)[-1]
        else:
            middle = entry.name[len(prefix) : -len(".tmp")]
        pid_text = middle.split("-", 1)[0]
        try:
            if pid_text.isdigit() and "-" in middle:
                stale = int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
            elif any_name:
                continue  # not one of ours
            else:
                stale = time.time() - entry.stat().st_mtime > _LEGACY_STALE_SECONDS
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


def write_error(path: str | os.PathLike, exc: BaseException) -> FpnError:
    """One line for a failed write of ``path`` (full disk, permission, read-only ...)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
    else:  # torch.save reports a failed write as a RuntimeError
        reason = first_line(exc)
        try:
            import shutil

            free = shutil.disk_usage(Path(path).parent).free
            if free < 1 << 20:
                reason = f"no space left on device ({reason})"
        except OSError:
            pass
    return FpnError(f"{path}: cannot write ({reason})")


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO], object], binary: bool = False, clean_stale: bool = True
) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    The temporary name is unique (it carries this process's id, so a later write can tell a
    dead writer's leftover from a live one's), so concurrent writers never collide.
    ``clean_stale``: first remove such leftovers of ``path`` (a folder listing; a caller
    writing many files in one folder cleans it once with :func:`remove_stale_temporaries`).

    Raises:
        FpnError: the file cannot be written (the previous file stays as it was).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise FpnError(f"{path}: is a folder, expected a file path")
        if clean_stale:
            remove_stale_temporaries(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            mode = 0o666 & ~current_umask()
    except OSError as exc:
        raise write_error(path, exc) from None
    recording: _Recording | None = None
    tmp = ""
    f: IO | None = None
    try:
        # Ctrl-C is held until the temporary's name is known here and a file object owns its
        # descriptor, so the cleanup below can always remove the one and close the other.
        with deferred_interrupt():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
            f = os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8")
        with f:
            os.fchmod(f.fileno(), mode)
            recording = _Recording(f)
            # _Recording passes every call through to the real file; it only notes write errors.
            write(recording)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if f is not None:
            # Open only when Ctrl-C came before its block (closing then is a no-op).
            with contextlib.suppress(OSError):
                f.close()
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        # torch.save turns a failed write (full disk) into an unspecific RuntimeError
        # ("unexpected pos ..."): report the operating system's reason it swallowed.
        cause = recording.error if recording is not None and recording.error is not None else exc
        if isinstance(cause, OSError) or (isinstance(exc, RuntimeError) and "writ" in str(exc).lower()):
            raise write_error(path, cause) from None
        raise
    return path


class _Recording:
    """A file object that remembers the OSError of a failed write (see :func:`atomic_write`)."""

    def __init__(self, f: IO) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically."""

    def dump(f: IO) -> None:
        json.dump(data, f, indent=indent)
        f.write("\n")

    return atomic_write(path, dump)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text))
