"""One error type for everything a user can fix.

The CLI renders an :class:`AlignDistilError` as a single line plus a remedy and exits with
code 2; every other exception is a bug and keeps its traceback (``ALIGNDISTIL_DEBUG=1`` shows
tracebacks for user errors too).
"""

from __future__ import annotations


class AlignDistilError(Exception):
    """A problem with the user's input or environment that the user can fix.

    Args:
        message: what is wrong, one line.
        hint: how to fix it, one line (rendered after the message).
    """

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
