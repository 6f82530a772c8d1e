"""Where store calls run: on the trio thread, or in a worker thread.

A store says in its contract whether its calls may block
(:attr:`~motet.storage.store.EventStore.blocking`). LMDB and in-memory
stores answer reads from memory (LMDB's are mmap'd), so running them inline
saves a thread round trip that costs more than the read; a network store
(PostgreSQL) waits on a socket, which must never stall the event loop. Every
runtime read goes through :class:`StoreCalls` so that choice is made once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from motet.storage.store import EventStore

__all__ = ["StoreCalls"]

T = TypeVar("T")

_READ_THREADS = 8
"""Worker threads reading from a blocking store at once (one connection each, at most)."""


class StoreCalls:
    """Runs calls to ``store`` the way its ``blocking`` attribute asks.

    Writes do not come here: they always run in a worker thread under the
    writer's own limiter (one writer at a time).
    """

    __slots__ = ("_limiter", "blocking", "store")

    def __init__(self, store: EventStore, *, threads: int = _READ_THREADS) -> None:
        self.store = store
        self.blocking = bool(getattr(store, "blocking", False))
        self._limiter = trio.CapacityLimiter(threads)

    def __repr__(self) -> str:
        where = "in worker threads" if self.blocking else "inline"
        return f"<StoreCalls {where} store={self.store!r}>"

    async def run(self, call: Callable[..., T], *args: Any, offload: bool = False) -> T:
        """``call(*args)``: inline for a non-blocking store, unless ``offload``
        asks for a worker thread anyway (big reads whose decoding would hold
        up the event loop); always in a worker thread for a blocking store.

        Cancelling waits for a call already running in a thread to finish
        (trio's default): the store is never left mid-call.
        """
        if self.blocking or offload:
            return await trio.to_thread.run_sync(call, *args, limiter=self._limiter)
        return call(*args)
