"""How a command of the ``motet`` command line ends early.

A user mistake is one line on stderr and a non-zero exit status, never a
traceback: :data:`USAGE` (2) for a bad command line, :data:`FAILURE` (1) for
everything else.
"""

from __future__ import annotations

from typing import NoReturn

__all__ = ["FAILURE", "USAGE", "Exit", "fail"]

USAGE = 2
"""Exit status of a command line that cannot be understood or is inconsistent."""

FAILURE = 1
"""Exit status of a command that was understood but did not succeed."""


class Exit(Exception):
    """Ends the command with ``status``, writing ``message`` (if any) to stderr.

    Raised instead of ``SystemExit`` so that :func:`motet.engine.cli.main` can
    return the status to its caller, a test or the console script.
    """

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.message = message


def fail(message: str, status: int = FAILURE) -> NoReturn:
    """End the command with ``status`` and the one line ``motet: error: <message>``."""
    raise Exit(status, f"motet: error: {message}\n")
