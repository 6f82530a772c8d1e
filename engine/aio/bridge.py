"""Calls from asyncio tasks into the engine's trio run, and their answers back.

Both loops share one thread (see :mod:`.guest`), so nothing here locks: an
asyncio task starts a trio task with ``Nursery.start_soon`` and waits on an
asyncio future; the trio task resolves that future when it is done.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Generic, TypeVar

import trio

from motet.storage.errors import EngineClosed

__all__ = ["Calls", "EventPipe"]

T = TypeVar("T")


def _closed(what: str) -> EngineClosed:
    return EngineClosed(f"the engine closed before {what} finished")


def resolve(future: asyncio.Future[T], value: T) -> None:
    """Give ``future`` its result unless its waiter gave up (cancelled it)."""
    if not future.done():
        future.set_result(value)


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    """Give ``future`` its exception unless its waiter gave up."""
    if not future.done():
        future.set_exception(error)


class Calls:
    """Runs trio async functions for asyncio tasks, in a nursery of the engine's
    trio run (so every such task has an owner, and ends when the engine closes)."""

    def __init__(self, nursery: trio.Nursery, loop: asyncio.AbstractEventLoop) -> None:
        self._nursery = nursery
        self._loop = loop

    def __repr__(self) -> str:
        return f"<Calls running={len(self._nursery.child_tasks)}>"

    async def run(self, function: Callable[[], Awaitable[T]], what: str) -> T:
        """Await ``function()`` in a trio task and return or raise what it does.

        Cancelling the asyncio caller cancels the trio task (and stops the
        wait at once; the trio task ends on its own). When the engine closes
        first, raises :class:`EngineClosed`."""
        future: asyncio.Future[T] = self._loop.create_future()
        scope = trio.CancelScope()
        self._nursery.start_soon(self._serve, future, scope, function, what, name=what)
        try:
            return await future
        except asyncio.CancelledError:
            scope.cancel()
            raise

    @staticmethod
    async def _serve(
        future: asyncio.Future[T],
        scope: trio.CancelScope,
        function: Callable[[], Awaitable[T]],
        what: str,
    ) -> None:
        try:
            with scope:
                resolve(future, await function())
        except trio.Cancelled:
            fail(future, _closed(what))
            raise
        except Exception as exc:
            # The caller's error, raised in the caller's task.
            fail(future, exc)

    def pipe(self, events: AsyncIterator[T], capacity: int) -> EventPipe[T]:
        """Start a trio task that iterates ``events`` into a new
        :class:`EventPipe`, which an asyncio task reads."""
        pipe = EventPipe[T](self._loop, capacity)
        self._nursery.start_soon(pipe._fill, events, name="subscription")
        return pipe


class EventPipe(Generic[T]):
    """Items from one trio task to one asyncio task. At most ``capacity`` wait
    to be read: the trio side waits for room, so a slow reader slows its
    producer instead of growing memory."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._loop = loop
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._readable: asyncio.Future[None] | None = None
        self._writable: trio.Event | None = None
        self._end: BaseException | None = None
        self._scope = trio.CancelScope()

    def __repr__(self) -> str:
        state = "ended" if self._end is not None else "open"
        return f"<EventPipe {state} waiting={len(self._items)} capacity={self._capacity}>"

    async def get(self) -> T:
        """The next item (asyncio side); raises what ended the producer."""
        while not self._items:
            if self._end is not None:
                raise self._end
            self._readable = self._loop.create_future()
            await self._readable
        item = self._items.popleft()
        if self._writable is not None:
            self._writable.set()
            self._writable = None
        return item

    def close(self) -> None:
        """Stop the producer (asyncio side): the reader is done."""
        self._scope.cancel()

    async def _fill(self, events: AsyncIterator[T]) -> None:
        try:
            with self._scope:
                async with aclosing(events):  # type: ignore[type-var]
                    async for item in events:
                        while len(self._items) >= self._capacity:
                            self._writable = trio.Event()
                            await self._writable.wait()
                        self._items.append(item)
                        self._wake_reader()
            self._end_with(_closed("the subscription"))
        except trio.Cancelled:
            self._end_with(_closed("the subscription"))
            raise
        except Exception as exc:
            self._end_with(exc)

    def _end_with(self, error: BaseException) -> None:
        if self._end is None:
            self._end = error
        self._wake_reader()

    def _wake_reader(self) -> None:
        readable, self._readable = self._readable, None
        if readable is not None:
            resolve(readable, None)
