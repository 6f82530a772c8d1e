"""The one place the runtime learns that the log's head moved.

Projections and subscribers wait here for "events up to position P are
committed". Two sources feed it: the engine's own group-commit writer after
each commit, and, for a store whose log other processes append to as well
(:attr:`~motet.storage.store.EventStore.shared`), :func:`serve_commit_watch`,
which waits in a worker thread on the store's ``wait_for_commit``.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque

import trio

from motet.storage.errors import StorageError
from motet.storage.store import EventStore

__all__ = ["HeadWatch", "serve_commit_watch"]

log = logging.getLogger("motet.actors")

_REMEMBERED_COMMITS = 4096
"""Commit times kept for lag estimates (see :meth:`HeadWatch.committed_at`)."""


class HeadWatch:
    """The log's head position as this process knows it, and a way to wait
    for it to move past a position."""

    __slots__ = ("_changed", "_heads", "_times", "head_position")

    def __init__(self, head_position: int) -> None:
        self.head_position = head_position
        self._changed = trio.Event()
        # Heads in increasing order and when they were first seen, so a
        # projection can tell how old its oldest unapplied event is without
        # reading it (a read a blocking store cannot serve on the trio thread).
        self._heads: deque[int] = deque(maxlen=_REMEMBERED_COMMITS)
        self._times: deque[float] = deque(maxlen=_REMEMBERED_COMMITS)

    def __repr__(self) -> str:
        return f"<HeadWatch head={self.head_position}>"

    def advance(self, head: int, committed_at: float | None = None) -> None:
        """Events up to ``head`` are committed (at ``committed_at``, wall
        clock; now when not given). A head at or behind the known one is
        ignored, so both sources may report the same commit."""
        if head <= self.head_position:
            return
        self.head_position = head
        self._heads.append(head)
        self._times.append(time.time() if committed_at is None else committed_at)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_beyond(self, position: int) -> None:
        """Wait until the head is past ``position``."""
        while self.head_position <= position:
            await self._changed.wait()

    def committed_at(self, position: int) -> float | None:
        """When the commit holding ``position`` was seen (wall clock), if it
        is among the last few thousand commits; ``None`` otherwise."""
        index = bisect.bisect_left(self._heads, position)
        if index == len(self._heads):
            return None
        return self._times[index]


async def serve_commit_watch(
    store: EventStore,
    watch: HeadWatch,
    *,
    timeout: float = 1.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed ``watch`` with commits other processes make to a shared ``store``,
    forever: ``store.wait_for_commit`` blocks in a worker thread until the
    head passes what ``watch`` knows, or ``timeout`` seconds pass.

    On cancellation the thread is abandoned and returns by itself within
    ``timeout`` (a thread blocked in the store cannot be interrupted).
    """
    limiter = trio.CapacityLimiter(1)
    task_status.started()
    while True:
        try:
            head = await trio.to_thread.run_sync(
                store.wait_for_commit,
                watch.head_position,
                timeout,
                limiter=limiter,
                abandon_on_cancel=True,
            )
        except StorageError as exc:
            # The store may come back (a network store reconnects): keep
            # watching instead of taking the engine down, but say so.
            log.warning("waiting for commits failed, retrying in %s s: %s", timeout, exc)
            await trio.sleep(timeout)
            continue
        watch.advance(head)
