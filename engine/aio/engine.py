"""The engine for asyncio programs: the trio engine, run as a guest of the
asyncio loop, behind asyncio methods of the same names."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import outcome
import trio

from motet.actors.projection import ProjectionActor
from motet.storage.errors import EngineClosed
from motet.storage.personal import Forgotten
from motet.storage.records import RecordedEvent
from motet.storage.status import ProjectionStatus

from ..app import App
from ..core import Ack, EngineStatistics, EngineStatus
from ..core import Engine as TrioEngine
from ..core import open_engine as open_trio_engine
from .bridge import Calls, fail, resolve
from .guest import start_guest_run

__all__ = ["Engine", "ProjectionHandle", "open_engine"]

_READ_BATCH = 1000

T = TypeVar("T")


class ProjectionHandle:
    """One projection of an asyncio :class:`Engine`, to look at and control:
    the methods of the trio engine's projection, with ``rebuild``, ``save``
    and ``wait_for`` as asyncio coroutines."""

    def __init__(self, actor: ProjectionActor[Any], calls: Calls) -> None:
        self._actor = actor
        self._calls = calls

    def __repr__(self) -> str:
        return f"<ProjectionHandle of {self._actor!r}>"

    @property
    def name(self) -> str:
        """The projection's name."""
        return self._actor.name

    @property
    def model(self) -> Any:
        """The read model queries are answered from."""
        return self._actor.model

    @property
    def position(self) -> int:
        """The last log position applied."""
        return self._actor.position

    @property
    def error(self) -> str | None:
        """Why the projection stopped (a handler failed), or None."""
        return self._actor.error

    @property
    def failed_position(self) -> int | None:
        """The position of the event it stopped on, or None."""
        return self._actor.failed_position

    def status(self) -> ProjectionStatus:
        """Its state, position and lag (see ``Engine.status``)."""
        return self._actor.status()

    def lag(self) -> tuple[int, float]:
        """(events, seconds) behind the log's head."""
        return self._actor.lag()

    def pause(self) -> None:
        """Stop applying events until :meth:`resume`."""
        self._actor.pause()

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._actor.resume()

    def retry(self) -> None:
        """Try the failed event again (after the handler was fixed)."""
        self._actor.retry()

    def skip(self) -> None:
        """Give up on the failed event and go on after it."""
        self._actor.skip()

    async def rebuild(self) -> None:
        """Fold a new model from the start while the current one answers, then
        swap it in. Raises :class:`ProjectionFailed` (keeping the current
        model) when a handler fails. Cancelling it abandons the new model."""
        await self._calls.run(self._actor.rebuild, f"rebuilding projection {self.name!r}")

    async def save(self) -> None:
        """Save the model and its position now."""
        await self._calls.run(self._actor.save, f"saving projection {self.name!r}")

    async def wait_for(self, position: int) -> None:
        """Wait until the projection has applied ``position``; raises
        :class:`ProjectionFailed` when it is stopped before it."""
        await self._calls.run(
            partial(self._actor.wait_for, position), f"waiting for projection {self.name!r}"
        )


class Engine:
    """A running Motet engine in an asyncio program; get one from
    :func:`open_engine`.

    It has the trio engine's methods as asyncio coroutines and raises the
    same exception classes. Cancelling a call (``task.cancel()``,
    ``asyncio.timeout``) stops the wait at once. A command handed to the
    engine is not undone by that: it is committed or not, as a whole; retry
    with the same ``command_id`` to find out which.
    """

    def __init__(self, engine: TrioEngine, calls: Calls, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._calls = calls
        self._loop = loop
        self._waiting: set[asyncio.Future[Any]] = set()
        self._closed: EngineClosed | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed is not None else "running"
        head = self._engine.head_position
        return f"<aio Engine {state} head={head} waiting={len(self._waiting)}>"

    @property
    def app(self) -> App:
        """The app the engine runs."""
        return self._engine.app

    @property
    def head_position(self) -> int:
        """Position of the last committed event."""
        return self._engine.head_position

    @property
    def metrics(self) -> Any:
        """The engine's metrics (``None`` with ``metrics=False``)."""
        return self._engine.metrics

    @property
    def metrics_port(self) -> int | None:
        """The port serving ``/metrics``, when ``metrics_port`` was given."""
        return self._engine.metrics_port

    @property
    def projections(self) -> Mapping[str, ProjectionHandle]:
        """Every projection by name."""
        return {name: self.projection(name) for name in self._engine.projections}

    def statistics(self) -> EngineStatistics:
        """Counters of the writer and the registry (see the trio engine's)."""
        return self._engine.statistics()

    def status(self) -> EngineStatus:
        """The head position, each projection's position, lag and state, the
        live actors, and the app's command and query types."""
        return self._engine.status()

    def projection(self, name: str) -> ProjectionHandle:
        """The projection called ``name``, to pause, resume, retry, skip or
        rebuild it. Raises ``KeyError`` naming the known projections."""
        return ProjectionHandle(self._engine.projection(name), self._calls)

    async def send(
        self,
        command: Any,
        *,
        command_id: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Ack:
        """Run ``command`` on its aggregate and return the :data:`Ack` once its
        events are committed; see ``motet.engine.Engine.send`` for the options.

        Raises :class:`CommandRejected`, :class:`Conflict`, :class:`Overloaded`,
        :class:`UnknownMessageType`, ``ValueError``, :class:`InternalError`,
        :class:`StorageError`, and :class:`EngineClosed` once the engine closes.
        Cancelling the call does not cancel the command: it may still commit.
        """
        self._check_open()
        future: asyncio.Future[Ack] = self._loop.create_future()
        # A synchronous trio call from the host thread: the command is routed,
        # decided and queued for the writer before this returns.
        self._engine.submit(
            command,
            partial(_settle, future),
            command_id=command_id,
            expected_version=expected_version,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        if future.done():  # an earlier run of the same command id
            return future.result()
        self._waiting.add(future)
        try:
            return await future
        finally:
            self._waiting.discard(future)

    async def ask(self, query: Any, *, after: int | None = None, timeout: float = 5.0) -> Any:
        """Answer ``query`` from its projection's read model, after that
        projection applied ``after`` (waiting up to ``timeout`` seconds); see
        ``motet.engine.Engine.ask``. Raises :class:`QueryTimeout`,
        :class:`ProjectionFailed`, :class:`NotFound`,
        :class:`UnknownMessageType` and ``ValueError``."""
        self._check_open()
        return await self._call(
            partial(self._engine.ask, query, after=after, timeout=timeout),
            f"the query {type(query).__name__}",
        )

    async def forget(self, subject: str, *, timeout: float = 10.0) -> Forgotten:
        """Erase the personal data of ``subject`` (crypto-shredding); see
        ``motet.engine.Engine.forget``. Raises ``ValueError`` for a subject
        that cannot be one and :class:`Unavailable` on a reader."""
        self._check_open()
        return await self._call(
            partial(self._engine.forget, subject, timeout=timeout),
            f"forgetting subject {subject!r}",
        )

    async def read_stream(
        self, stream: str, from_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        """The events of ``stream`` after ``from_version``, oldest first, at
        most ``limit``; an unknown stream gives ``[]``."""
        self._check_open()
        return await self._call(
            partial(self._engine.read_stream, stream, from_version, limit),
            f"reading stream {stream!r}",
        )

    async def subscribe(
        self, from_position: int = 0, *, batch_size: int = _READ_BATCH
    ) -> AsyncIterator[RecordedEvent]:
        """Yield every event after ``from_position`` in log order: those
        committed already, then each new one as it commits. Never ends by
        itself; stop iterating (``contextlib.aclosing`` ends it at once) or
        cancel. Raises :class:`EngineClosed` when the engine closes. At most
        ``batch_size`` events wait for a slow consumer."""
        self._check_open()
        pipe = self._calls.pipe(
            self._engine.subscribe(from_position, batch_size=batch_size), batch_size
        )
        try:
            while True:
                yield await pipe.get()
        finally:
            pipe.close()

    # -- plumbing ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    async def _call(self, function: Callable[[], Awaitable[T]], what: str) -> T:
        return await self._calls.run(function, what)

    def _close(self, reason: EngineClosed) -> None:
        """Take no more calls (the engine is closing or stopped)."""
        if self._closed is None:
            self._closed = reason

    def _stopped(self, reason: EngineClosed) -> None:
        """The trio run ended: nothing will answer the commands still waiting."""
        self._close(reason)
        for future in list(self._waiting):
            fail(future, reason)
        self._waiting.clear()


def _settle(future: asyncio.Future[Ack], ack: Ack | None, error: BaseException | None) -> None:
    # Engine.submit's on_done: runs in trio (or in send's own submit call), on
    # the loop's thread, and must not raise.
    if error is not None:
        fail(future, error)
    else:
        assert ack is not None
        resolve(future, ack)


async def _serve(
    ready: asyncio.Future[tuple[TrioEngine, trio.Nursery]],
    stop: trio.Event,
    scope: trio.CancelScope,
    path: Any,
    app: App,
    options: dict[str, Any],
) -> None:
    """The guest run: the trio engine and a nursery for the asyncio side's
    calls, until ``stop`` is set."""
    with scope:
        async with open_trio_engine(path, app, **options) as engine, trio.open_nursery() as calls:
            resolve(ready, (engine, calls))
            await stop.wait()
            # Queries, reads and subscriptions end with EngineClosed; the
            # trio engine then commits the commands it accepted.
            calls.cancel_scope.cancel()


async def _wait_uncancellable(done: asyncio.Future[outcome.Outcome[Any]]) -> bool:
    """Wait for the guest run to finish even if this task is cancelled (a trio
    run left unfinished breaks trio in this thread; the engine bounds its
    shutdown by ``shutdown_timeout``). Returns whether a cancellation came."""
    cancelled = False
    while not done.done():
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


@asynccontextmanager
async def open_engine(
    path: str | os.PathLike[str] | None, app: App, **options: Any
) -> AsyncIterator[Engine]:
    """Open the engine in an asyncio program: ``async with open_engine(path,
    app) as engine`` inside ``asyncio.run`` (or uvicorn, uvloop). ``path`` and
    the keyword options (``durability``, ``mailbox_size``, ``metrics_port``,
    ``shutdown_timeout``, ...) are passed as they are to
    :func:`motet.engine.open_engine`, and its errors come out unchanged
    (:class:`StoreFormatError`, ``ValueError``, ``OSError``).

    The runtime runs on trio, as a guest of the asyncio loop in the same
    thread (one such engine per event loop at a time; a second one raises
    ``RuntimeError``). On exit, new calls raise :class:`EngineClosed`,
    waiting queries and subscriptions end with it, accepted commands are
    committed, and the store closes. If the engine fails while the block
    runs, the block is cancelled and the failure is raised from it (as
    ``asyncio.TaskGroup`` does for a failing child).
    """
    loop = asyncio.get_running_loop()
    host = asyncio.current_task()
    ready: asyncio.Future[tuple[TrioEngine, trio.Nursery]] = loop.create_future()
    stop = trio.Event()
    scope = trio.CancelScope()
    done = start_guest_run(_serve, ready, stop, scope, path, app, dict(options))
    try:
        starting: list[asyncio.Future[Any]] = [ready, done]
        await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        scope.cancel()
        await _wait_uncancellable(done)
        raise
    if not ready.done():
        _unwrap(done.result())
        raise RuntimeError("the engine's trio run ended before it started")  # pragma: no cover
    trio_engine, nursery = ready.result()
    engine = Engine(trio_engine, Calls(nursery, loop), loop)
    body_running = True
    cancelled_body = False

    def stopped(_: asyncio.Future[outcome.Outcome[Any]]) -> None:
        nonlocal cancelled_body
        result = done.result()
        reason = EngineClosed("the engine stopped")
        if isinstance(result, outcome.Error):
            reason = EngineClosed(f"the engine failed: {result.error!r}")
            reason.__cause__ = result.error
        engine._stopped(reason)
        if body_running and isinstance(result, outcome.Error) and host is not None:
            cancelled_body = True
            host.cancel()

    done.add_done_callback(stopped)
    try:
        yield engine
    finally:
        body_running = False
        engine._close(EngineClosed("the engine is closing and takes no more requests"))
        if not done.done():
            stop.set()
        cancelled = await _wait_uncancellable(done)
        result = done.result()
        if cancelled_body and host is not None:
            host.uncancel()
        if isinstance(result, outcome.Error):
            error = result.error
            raise error from error.__cause__
        if cancelled:
            raise asyncio.CancelledError


def _unwrap(result: outcome.Outcome[Any]) -> None:
    if isinstance(result, outcome.Error):
        error = result.error
        raise error from error.__cause__
