"""Hold Ctrl-C (and SIGTERM, which :func:`~fpncli.cli.common.sigterm_as_sigint` turns into it)
for the few milliseconds in which several outputs must change together."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block whole: a SIGINT that arrives inside it is acted on when it ends.

    Why: a video frame's record in ``predictions.json`` and its frame in the annotated video
    are one unit; an interrupt between the two left a JSON that counts a frame the video lacks.
    The handler that was installed (Python's default raises :class:`KeyboardInterrupt`) runs
    at the end of the block, once. Only the main thread can set handlers; elsewhere this does
    nothing."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # None: a handler set outside Python, which could not be put back
        return
    received: list[FrameType | None] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if not received or previous == signal.SIG_IGN:
        return
    if callable(previous):
        previous(signal.SIGINT, received[0])
    else:  # SIG_DFL: what Ctrl-C does by default
        raise KeyboardInterrupt


def workers_ignore_sigterm(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: loader workers ignore SIGTERM; the main process,
    which stops on it as on Ctrl-C, shuts them down.

    Why: a SIGTERM to the whole process group (systemd's default, ``kill -TERM -PGID``) killed
    the workers too, and torch then raised "DataLoader worker ... is killed by signal" inside
    the loader's shutdown: a traceback after the run had stopped cleanly. Exiting at once
    (status 0) instead left multiprocessing's resource sharer a traceback of its own; if the
    main process dies, torch's watchdog ends the workers within seconds. (Ctrl-C reaches
    them too; torch's workers already ignore it.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
