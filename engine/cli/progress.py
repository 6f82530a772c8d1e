"""A progress line on stderr for long commands (``motet export``, ``import``).

On a terminal it redraws one line in place with the count, the share done
and the rate; anywhere else (a pipe, a log file) it stays silent until the
command prints its own summary, so logs get one line, not thousands.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressLine"]

_REDRAW_SECONDS = 0.2


class ProgressLine:
    """Shows ``<doing> N events  P%  R events/s`` on ``stream`` when it is a
    terminal (and not ``quiet``); call it with (events done, fraction done or
    ``None``), then :meth:`close`."""

    def __init__(self, doing: str, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.doing = doing
        self.shown = not quiet and self.stream.isatty()
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._width = 0

    def __repr__(self) -> str:
        return f"<ProgressLine {self.doing!r} shown={self.shown}>"

    def __call__(self, events: int, fraction: float | None) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        if now - self._drawn_at < _REDRAW_SECONDS and (fraction is None or fraction < 1):
            return
        self._drawn_at = now
        rate = events / max(now - self.started, 1e-9)
        share = "" if fraction is None else f"  {fraction:4.0%}"
        text = f"{self.doing} {events:,} events{share}  {rate:,.0f} events/s"
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def rate(self, events: int) -> float:
        """Events per second since this line was made."""
        return events / max(time.monotonic() - self.started, 1e-9)

    def close(self) -> None:
        """Clear the line, so the command's summary starts on a clean line."""
        if self.shown and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
