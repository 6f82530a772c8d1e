"""Accepting connections: trio's serve loop, with accept failures that say
what happened once instead of ten times a second.

``trio.serve_listeners`` retries an ``accept(2)`` that fails for want of
resources (``EMFILE``, ``ENFILE``, ``ENOMEM``, ``ENOBUFS``) every 0.1 s and
logs each failure with a traceback: a server out of file descriptors writes
ten tracebacks a second until one is freed. :func:`serve_listeners` retries
as often (the waiting connections stay in the kernel's backlog, so none is
lost), but :class:`AcceptFailures` logs one line per :data:`LOG_INTERVAL` at
most, with the count of the failures it did not log, and one line when
accepting works again.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

__all__ = [
    "ACCEPT_CAPACITY_ERRNOS",
    "LOG_INTERVAL",
    "RETRY_DELAY",
    "AcceptFailures",
    "open_listeners",
    "serve_listeners",
]

ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""``accept(2)`` errors that mean the process or the system is out of
resources for now: retried, never raised."""

RETRY_DELAY: Final = 0.1
"""Seconds between accepts while they fail for want of resources."""

LOG_INTERVAL: Final = 10.0
"""Seconds between two log lines about failing accepts, at least."""

Handler = Callable[[Any], Awaitable[object]]


class AcceptFailures:
    """Counts and logs the failed accepts of one server (see the module docstring)."""

    def __init__(self, log: logging.Logger, server: str, *, interval: float = LOG_INTERVAL) -> None:
        self.total = 0
        self._log = log
        self._server = server
        self._interval = interval
        self._unlogged = 0
        self._failing = 0  # failures since the last accept that worked
        self._logged_at: float | None = None

    def __repr__(self) -> str:
        return f"<AcceptFailures {self._server} total={self.total} failing={self._failing}>"

    def failed(self, error: OSError) -> None:
        """Count ``error``; log it unless a line was logged in the last interval."""
        self.total += 1
        self._failing += 1
        self._unlogged += 1
        now = trio.current_time()
        if self._logged_at is not None and now - self._logged_at < self._interval:
            return
        code = errno.errorcode.get(error.errno or 0, str(error.errno))
        since = ""
        if self._unlogged > 1:
            since = f"; {self._unlogged - 1} more failed since the last such line"
        self._log.error(
            "cannot accept connections on the %s: %s (%s)%s; retrying every %g s, "
            "new connections wait in the backlog (logged at most once per %g s)",
            self._server,
            code,
            os.strerror(error.errno or 0),
            since,
            RETRY_DELAY,
            self._interval,
        )
        self._unlogged = 0
        self._logged_at = now

    def accepted(self) -> None:
        """An accept worked: after failures, say so once."""
        if self._failing:
            self._log.warning(
                "accepting connections on the %s again, after %d failed accept(s)",
                self._server,
                self._failing,
            )
            self._failing = 0
            self._unlogged = 0


async def open_listeners(
    host: str | None, port: int, ssl_context: Any = None
) -> list[trio.abc.Listener[Any]]:
    """The TCP listeners of ``host:port`` (every address it resolves to),
    speaking TLS with ``ssl_context``. Raises ``OSError`` when they cannot be bound."""
    if ssl_context is None:
        return list(await trio.open_tcp_listeners(port, host=host))
    return list(await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host))


async def serve_listeners(
    handler: Handler,
    listeners: list[trio.abc.Listener[Any]],
    *,
    handler_nursery: trio.Nursery,
    failures: AcceptFailures,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``listeners`` until cancelled, running
    ``handler(stream)`` for each in ``handler_nursery`` (the stream is closed
    when the handler returns), as ``trio.serve_listeners`` does; accept
    failures for want of resources go to ``failures`` and are retried,
    others are raised. Closes the listeners when it ends."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, handler_nursery, failures)
        task_status.started(listeners)


async def _accept_loop(
    listener: trio.abc.Listener[Any],
    handler: Handler,
    handler_nursery: trio.Nursery,
    failures: AcceptFailures,
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                failures.failed(exc)
                await trio.sleep(RETRY_DELAY)
            else:
                failures.accepted()
                handler_nursery.start_soon(_run_handler, handler, stream)


async def _run_handler(handler: Handler, stream: trio.abc.AsyncResource) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)
