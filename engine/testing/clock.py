"""A clock the domain reads and a test sets.

``decide`` must be a pure function of its arguments, except for what it
stamps into the events it returns (the time of an order, say). Call
:func:`now` there instead of ``time.time()``: in production it *is*
``time.time()``; under :func:`use_clock` (the ``clock`` pytest fixture) it
answers the test's :class:`Clock`, so the expected events can be written
out exactly. The clock is held in a context variable: install it before the
engine opens (the ``motet_engine`` fixture depends on ``clock`` for that),
and every task the engine starts afterwards reads it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["DEFAULT_START", "Clock", "now", "use_clock"]

DEFAULT_START = 1_700_000_000.0
"""Where a new :class:`Clock` starts: 2023-11-14 22:13:20 UTC, in Unix seconds."""

_current: ContextVar[Clock | None] = ContextVar("motet_clock", default=None)


class Clock:
    """A clock that stands still until the test moves it.

    Calling it (or :meth:`now`) returns its time in Unix seconds, so it can
    also be passed wherever a ``time.time``-like function is expected.
    """

    def __init__(self, start: float = DEFAULT_START) -> None:
        self._time = float(start)

    def __repr__(self) -> str:
        return f"<Clock at {self._time!r}>"

    def __call__(self) -> float:
        return self._time

    def now(self) -> float:
        """The clock's time, in Unix seconds."""
        return self._time

    def set(self, when: float) -> None:
        """Move the clock to ``when`` (Unix seconds; it may go backwards)."""
        self._time = float(when)

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` ahead (``>= 0``) and return its new time.

        Raises ``ValueError`` for a negative or NaN step.
        """
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._time += seconds
        return self._time


def now() -> float:
    """The current time in Unix seconds: the installed :class:`Clock`'s under
    :func:`use_clock`, otherwise ``time.time()``."""
    clock = _current.get()
    return time.time() if clock is None else clock()


@contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Make :func:`now` answer ``clock`` in this context (and in the tasks
    started from it) until the block ends."""
    token = _current.set(clock)
    try:
        yield clock
    finally:
        _current.reset(token)
