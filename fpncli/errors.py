"""Exceptions that mean "the user gave us something we cannot use".

The CLI turns an :class:`FpnError` into one line on stderr and exit code 1; anything else
is a bug and keeps its traceback.
"""


class FpnError(Exception):
    """A user-facing error: bad file, bad value, missing download. The message is shown as is."""


class OtherRankFailed(FpnError):
    """Under torchrun: this process stops because another one did (its connection closed,
    torchrun stopped the run). The other process's own error is the one worth printing."""


def first_line(exc: BaseException, empty: str | None = None) -> str:
    """The first line of ``exc``'s message, for one-line errors; ``empty`` (default: the
    exception's type name) when the message is blank."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if empty is None else empty
