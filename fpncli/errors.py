"""Exceptions that mean "the user gave us something we cannot use".

The CLI turns an :class:`FpnError` into one line on stderr and exit code 1; anything else
is a bug and keeps its traceback.
"""


class FpnError(Exception):
    """A user-facing error: bad file, bad value, missing download. The message is shown as is."""
