"""What every command shares: the error boundary, consoles, the option types used by
several commands (declared once, so their names, help and checks agree everywhere).

Commands import torch lazily (inside the function), so ``fpn --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from fpncli.cli.display import make_console
from fpncli.errors import FpnError, OtherRankFailed, first_line

# Wrapped to a terminal; unwrapped and colourless in a log (see display.py).
console = make_console()
err_console = make_console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

# ---------------------------------------------------------------- shared option types
# The default stays at each command (``device: DeviceOption = "auto"``).
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")]
BackendOption = Annotated[
    str, typer.Option(help="COCO evaluation backend: auto, pycocotools or faster-coco-eval.")
]
# --weights wherever a trained model is loaded: one shape (an option), one help text.
WEIGHTS_HELP = (
    "The model: coco (torchvision's COCO_V1 weights), a checkpoint from fpn train, a torchvision "
    "state dict, or a file from fpn export (.onnx, TorchScript; detect and eval run these); "
    "none: random weights (info, inspect-levels)."
)
WeightsOption = Annotated[str, typer.Option("--weights", help=WEIGHTS_HELP, show_default=False)]
OptionalWeightsOption = Annotated[
    str | None, typer.Option("--weights", help=WEIGHTS_HELP, show_default=False)
]
# A default of "none" (info, inspect-levels) is shown.
ModelWeightsOption = Annotated[str, typer.Option("--weights", help=WEIGHTS_HELP)]
MinSizeOption = Annotated[
    int | None, typer.Option(help="Resize the shorter image side to this many pixels (default: the model's).")
]
MaxSizeOption = Annotated[
    int | None, typer.Option(help="Cap the longer image side at this many pixels (default: the model's).")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout instead of tables.")
]

# Sliced inference and test-time augmentation (fpn detect, fpn eval; see inference/augment.py).
SliceOption = Annotated[
    int | None,
    typer.Option(
        "--slice",
        help="Sliced inference: also detect in SIZE x SIZE pixel tiles, each at the model's input "
        "scale, merged with the whole-image pass (small objects in large images).",
        show_default=False,
    ),
]
SliceOverlapOption = Annotated[
    float | None,
    typer.Option(help="With --slice: tile overlap, a fraction of SIZE in [0, 1) (default 0.2)."),
]
TTAOption = Annotated[
    str | None,
    typer.Option(
        help="Test-time augmentation, comma-separated: flip (also mirrored), scales=S1:S2... "
        "(shorter sides in pixels, or factors of the model's below 16), e.g. flip,scales=0.8:1:1.2.",
        show_default=False,
    ),
]


class _State:
    debug = False
    commands = 0  # commands run by this process (torchrun's ranks count alike)


state = _State()


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def fail(message: str, code: int = 1, *, consequence: bool = False) -> typer.Exit:
    """Print ``error: message`` on stderr (one line) and return the Exit to raise.

    Under torchrun the run prints one error line, on rank 0, naming the rank that raised it
    (``error (rank 1): ...``; see :mod:`fpncli.runtime.rank_errors`); ``consequence``: the
    error only says that another rank stopped.
    """
    label = "error"
    if _under_torchrun():
        from fpncli.runtime.rank_errors import rank_error

        line = rank_error(message, state.commands, consequence)
        if line is None:
            return typer.Exit(code)  # another rank prints the run's error
        label, message = line
    # The message quotes user input (file names like "shot[1].jpg"): never read it as markup.
    err_console.print(f"[bold red]{label}:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def os_error_message(exc: OSError) -> str:
    """``path: reason`` for an operating-system error (full disk, permission, read-only)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {reason}" if where is not None else reason


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM does what Ctrl-C does at that moment (containers, schedulers and ``timeout``
    stop jobs with SIGTERM): whatever SIGINT handler is installed then runs, so a run keeps
    its outputs valid and finished (training saves, detection writes its JSON and closes
    its video). Only the main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIG_DFL or SIG_IGN set by someone else: behave as Ctrl-C would by default
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handle_errors(fn: F) -> F:
    """Command decorator: a user mistake (:class:`FpnError`) or an operating-system error
    (full disk, no permission: :class:`OSError`) becomes one line on stderr and exit code 1;
    Ctrl-C, or SIGTERM (:func:`sigterm_as_sigint`), exits 130 without a traceback.
    ``fpn --debug`` re-raises instead."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state.commands += 1
        try:
            with sigterm_as_sigint():
                return fn(*args, **kwargs)
        except FpnError as exc:
            if state.debug:
                raise
            raise fail(str(exc), consequence=isinstance(exc, OtherRankFailed)) from None
        except OSError as exc:
            # The environment, not a bug: a full disk, a read-only or foreign folder.
            if state.debug:
                raise
            raise fail(os_error_message(exc)) from None
        except KeyboardInterrupt:
            if state.debug:
                raise
            if _under_torchrun() and _other_rank_failed():
                raise typer.Exit(1) from None  # torchrun stopped this rank: another one failed
            err_console.print("interrupted", style="yellow")
            raise typer.Exit(130) from None
        except RuntimeError as exc:
            # Under torchrun, a collective that fails because another rank stopped (gloo:
            # "Connection closed by peer"): that rank's error is the run's, printed once.
            if state.debug or not _under_torchrun() or not _peer_gone(exc):
                raise
            raise fail(first_line(exc), consequence=True) from None

    return wrapper  # type: ignore[return-value]


def _peer_gone(exc: RuntimeError) -> bool:
    """A distributed runtime error saying a peer process went away (gloo / c10d wording)."""
    text = str(exc).lower()
    return any(words in text for words in ("connection closed", "connection reset", "broken pipe"))


def _other_rank_failed() -> bool:
    from fpncli.runtime.rank_errors import other_rank_failed

    return other_rank_failed(state.commands)
