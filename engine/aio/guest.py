"""Trio in guest mode on the running asyncio loop.

The Motet runtime is written for trio. An asyncio program cannot call
``trio.run`` (it would block the loop), so the engine runs as a trio *guest*
of the asyncio loop: trio's scheduler runs as callbacks on the loop's thread
and only trio's wait for I/O moves to a worker thread. Trio has no high-level
API for this, which is why this is the one module of the asyncio face that
uses ``trio.lowlevel``.

Because both loops then share one thread, asyncio code may call trio's
synchronous functions (``CancelScope.cancel``, ``Event.set``,
``Nursery.start_soon``, ``Engine.submit``) directly, and trio code may resolve
asyncio futures directly: trio's guest-mode documentation promises both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import trio

__all__ = ["start_guest_run"]


def start_guest_run(
    async_fn: Callable[..., Awaitable[Any]], *args: Any
) -> asyncio.Future[outcome.Outcome[Any]]:
    """Start ``async_fn(*args)`` as a trio run hosted by the running asyncio
    loop; return a future that gets the run's outcome once it has finished.

    The caller must await that future before the loop stops: a guest run cut
    off in the middle leaves trio unusable in that thread. Raises
    ``RuntimeError`` when this thread already runs trio (a trio program, or
    another asyncio engine that is still open).
    """
    loop = asyncio.get_running_loop()
    if trio.lowlevel.in_trio_run():
        raise RuntimeError(
            "this thread already runs trio (another motet.engine.aio engine is open on "
            "this event loop, or this is a trio program: use motet.engine.open_engine)"
        )
    done: asyncio.Future[outcome.Outcome[Any]] = loop.create_future()

    def finished(result: outcome.Outcome[Any]) -> None:
        # Called from the last guest tick, on the loop's thread.
        if not done.done():
            done.set_result(result)

    trio.lowlevel.start_guest_run(
        async_fn,
        *args,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=finished,
        # asyncio owns signal.set_wakeup_fd (for its signal handlers); trio
        # handles no signals of its own in the engine.
        host_uses_signal_set_wakeup_fd=True,
    )
    return done
