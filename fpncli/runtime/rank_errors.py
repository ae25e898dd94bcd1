"""One error line per torchrun run, printed by rank 0 and naming the rank that raised it.

Under torchrun every process runs the same command, so a bad option or file fails on every
rank, and a failure on one rank makes the others fail in turn (a closed connection, torchrun
stopping them). Each rank posts its error to torchrun's key-value store (the one the
processes met at); rank 0 collects them for a moment and prints the first original one,
``error (rank 1): ...`` (``ranks 0, 1`` when they agree), and the others print nothing.
A rank whose error rank 0 does not take in time (rank 0 busy elsewhere) prints it itself;
an atomic claim in the store makes sure only one line is ever printed.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from typing import Any

# Rank 0 waits this long for the other ranks' errors (they usually fail together).
GATHER_SECONDS = 1.0
# Another rank waits this long for rank 0 to print its error before printing it itself.
HANDOVER_SECONDS = 3.0
_POLL = 0.05


def _store() -> Any:
    from torch.distributed import TCPStore

    return TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=10),
        wait_for_workers=False,
    )


def rank_error(message: str, command: int, consequence: bool = False) -> tuple[str, str] | None:
    """See :func:`_rank_error`; torchrun's SIGTERM (it stops the other processes once one has
    failed) is ignored meanwhile: this process is already on its way out with the error."""
    if threading.current_thread() is not threading.main_thread():
        return _rank_error(message, command, consequence)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return _rank_error(message, command, consequence)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rank_error(message: str, command: int, consequence: bool) -> tuple[str, str] | None:
    """How this torchrun rank reports its error ``message``: ``(label, message)`` to print
    (label like ``error (rank 1)``), or None when another rank prints the run's error.

    ``command`` numbers the commands this process ran (the same sequence on every rank);
    ``consequence``: the error only says that another rank stopped (an
    :class:`~fpncli.errors.OtherRankFailed` or a broken connection): it is printed only
    when no rank posted an original error.
    """
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"fpncli/error/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{command}"
    try:
        store = _store()
        store.set(f"{prefix}/{rank}", ("1" if consequence else "0") + message)
    except Exception:  # no store to meet at (not torchrun's): every rank says its own
        return f"error (rank {rank})", message
    if rank != 0:
        if _wait_for(store, f"{prefix}/printed", HANDOVER_SECONDS):
            return None
        return _claim(store, prefix, rank, {rank: (False, message)})
    errors = {0: (consequence, message)}
    deadline = time.monotonic() + GATHER_SECONDS
    while len(errors) < world and time.monotonic() < deadline:
        for r in range(1, world):
            if r not in errors and store.check([f"{prefix}/{r}"]):
                value = store.get(f"{prefix}/{r}").decode("utf-8", "replace")
                errors[r] = (value[:1] == "1", value[1:])
        if len(errors) < world:
            time.sleep(_POLL)
    return _claim(store, prefix, 0, errors)


def _wait_for(store: Any, key: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if store.check([key]):
            return True
        time.sleep(_POLL)
    return False


def _claim(store: Any, prefix: str, rank: int, errors: dict[int, tuple[bool, str]]) -> tuple[str, str] | None:
    """The line to print if this rank is the first to claim the run's error line, else None."""
    if store.compare_set(f"{prefix}/printed", "", str(rank)).decode() != str(rank):
        return None
    original = {r: m for r, (c, m) in errors.items() if not c} or {r: m for r, (_, m) in errors.items()}
    first = min(original)
    same = [r for r in sorted(original) if original[r] == original[first]]
    label = f"error (rank {first})" if len(same) == 1 else f"error (ranks {', '.join(map(str, same))})"
    return label, original[first]


def other_rank_failed(command: int) -> bool:
    """Whether another rank posted an error for ``command`` (torchrun then stops this one)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"fpncli/error/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{command}"
    try:
        store = _store()
        return any(store.check([f"{prefix}/{r}"]) for r in range(world) if r != rank)
    except Exception:
        return False
