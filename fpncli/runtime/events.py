"""The one shape of progress reporting: every engine function takes ``progress``, a callable
that receives event dicts ``{"event": NAME, ...}``, and never prints.

The CLI turns events into rich output; tests and scripts can record them. Names in use:
``start``, ``step`` (``message``), ``iter``/``tick``/``eval``/``checkpoint`` (training),
``image`` (one input done), ``warning`` (``message``), ``end``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
ProgressFn = Callable[[Event], None]


def emitter(progress: ProgressFn | None) -> ProgressFn:
    """``progress``, or a no-op when it is None."""
    return progress if progress is not None else _ignore


def _ignore(event: Event) -> None:
    pass


def step(progress: ProgressFn | None, message: str, **fields: Any) -> None:
    """Report a step of the work (``{"event": "step", "message": ...}``)."""
    if progress is not None:
        progress({"event": "step", "message": message, **fields})
