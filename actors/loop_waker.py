"""Wake the event loop from a worker thread that must not wait for it.

``TrioToken.run_sync_soon`` wakes the event loop's thread through a socket,
and the calling thread needs the interpreter lock again once the write
returns. The writer's worker thread calls it just before LMDB flushes a
commit, so that a projection applies the previous commit during the flush;
but the woken event loop often takes the lock first and runs that
projection (a millisecond or two of Python), and the commit waits for it:
the very delay the hook is there to avoid. A :class:`LoopWaker` hands the
call to another thread instead: the worker thread only queues it (no
system call, no waiting) and goes on into the flush, which releases the
lock, and the waker thread wakes the loop then.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

import trio

__all__ = ["LoopWaker"]


class LoopWaker:
    """Runs callables on a trio run's thread on behalf of other threads,
    through a thread of trio's thread cache that it holds until :meth:`close`
    (then the thread goes back to the cache)."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._calls: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self.stopped = threading.Event()
        trio.lowlevel.start_thread_soon(self._run, lambda _: self.stopped.set())

    def call_soon(self, call: Callable[[], object]) -> None:
        """Have ``call`` run on the event loop's thread soon; from any thread,
        without blocking or releasing the interpreter lock."""
        self._calls.put(call)

    def close(self) -> None:
        """End the waker thread once the calls queued so far are handed over."""
        self._calls.put(None)

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            # RunFinishedError: the run is ending, nobody waits any more.
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(call)
