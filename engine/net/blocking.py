"""A blocking client of the line protocol, for code without trio.

::

    with connect("127.0.0.1", 7707) as client:
        ack = client.send(CreateUser(user_id="u1", ...))
        user = client.ask(GetUserById(user_id="u1"), after=ack.position)

It runs the async :class:`~motet.engine.net.client.Client` in a background
thread and raises the same exceptions; given the app (``connect(...,
app=app)``) it answers in the app's types, as that client does.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any, TypeVar

import trio

from motet.storage.errors import ConnectionLost
from motet.storage.personal import Forgotten
from motet.storage.records import Ack

from ..status import EngineStatus
from .client import Client, open_client
from .consumer import GroupEvent
from .protocol import DEFAULT_PORT, DeletionBody, WireEvent

__all__ = ["BlockingClient", "BlockingGroupEvent", "connect"]

T = TypeVar("T")


class _Call:
    __slots__ = ("function", "future")

    def __init__(self, function: Callable[[Client], Awaitable[Any]]) -> None:
        self.function = function
        self.future: Future[Any] = Future()


class BlockingClient:
    """A :class:`Client` for code without trio: each method blocks until its
    reply. Get one from :func:`connect`; close it (or use ``with``).

    It runs trio and one connection in a background thread; calls from any
    number of threads are passed to it through a queue and pipelined on that
    connection. Subscriptions are not offered: use the async client.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        token: str | None = None,
        ssl_context: Any = None,
        app: Any = None,
    ) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._token: trio.lowlevel.TrioToken | None = None
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run_thread,
            args=(ready, host, port, token, ssl_context, app),
            name=f"motet-client-{host}:{port}",
            daemon=True,
        )
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            raise

    def __repr__(self) -> str:
        return f"<BlockingClient {'closed' if self._closed else 'open'}>"

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the thread (waits for calls in flight)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._calls.put(None)
        self._thread.join()

    def send(
        self,
        command: Any,
        *,
        command_id: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Ack:
        """See :meth:`Client.send`."""
        return self._call(
            lambda c: c.send(
                command,
                command_id=command_id,
                expected_version=expected_version,
                correlation_id=correlation_id,
                causation_id=causation_id,
            )
        )

    def ask(
        self,
        query: Any,
        *,
        after: int | None = None,
        timeout: float | None = None,
        result_type: Any = None,
    ) -> Any:
        """See :meth:`Client.ask`."""
        return self._call(
            lambda c: c.ask(query, after=after, timeout=timeout, result_type=result_type)
        )

    def read_stream(
        self, stream: str, from_version: int = 0, limit: int | None = None
    ) -> list[WireEvent]:
        """See :meth:`Client.read_stream`."""
        return self._call(lambda c: c.read_stream(stream, from_version, limit))

    def delete_stream(self, stream: str, *, hard: bool = False) -> DeletionBody:
        """See :meth:`Client.delete_stream`."""
        return self._call(lambda c: c.delete_stream(stream, hard=hard))

    def read_log(
        self,
        from_position: int = 0,
        limit: int | None = None,
        *,
        category: str | None = None,
        types: list[str] | None = None,
    ) -> tuple[list[WireEvent], int]:
        """See :meth:`Client.read_log`."""
        return self._call(
            lambda c: c.read_log(from_position, limit, category=category, types=types)
        )

    @contextmanager
    def consume(
        self,
        group: str,
        *,
        category: str | None = None,
        types: list[str] | None = None,
        prefetch: int | None = None,
    ) -> Iterator[Iterator[BlockingGroupEvent]]:
        """Be a member of consumer group ``group`` for the block (see
        :meth:`Client.consume`)::

            with client.consume("mailer", category="User") as events:
                for event in events:
                    ...
                    event.ack()

        Leaving the block leaves the group; unacked events go to the others.
        """
        deliveries: queue.Queue[BlockingGroupEvent | BaseException] = queue.Queue()
        joined: Future[trio.CancelScope] = Future()

        async def membership(client: Client) -> None:
            with trio.CancelScope() as scope:
                try:
                    async with client.consume(
                        group, category=category, types=types, prefetch=prefetch
                    ) as events:
                        joined.set_result(scope)
                        async for event in events:
                            deliveries.put(BlockingGroupEvent(self, event))
                except Exception as exc:
                    if not joined.done():
                        joined.set_exception(exc)
                    deliveries.put(exc)
                    return
            deliveries.put(ConnectionLost("the membership ended"))

        call = _Call(membership)
        with self._lock:
            if self._closed:
                raise ConnectionLost("the client is closed")
            self._calls.put(call)
        scope = joined.result()

        def events() -> Iterator[BlockingGroupEvent]:
            while True:
                item = deliveries.get()
                if isinstance(item, BaseException):
                    raise item
                yield item

        try:
            yield events()
        finally:
            token = self._token
            if token is not None and not call.future.done():
                with suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(scope.cancel, trio_token=token)
                call.future.exception()

    def status(self) -> EngineStatus:
        """See :meth:`Client.status`."""
        return self._call(lambda c: c.status())

    def forget(self, subject: str) -> Forgotten:
        """See :meth:`Client.forget`."""
        return self._call(lambda c: c.forget(subject))

    def ping(self) -> float:
        """See :meth:`Client.ping`."""
        return self._call(lambda c: c.ping())

    def request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """See :meth:`Client.request`."""
        return self._call(lambda c: c.request(request))

    def _call(self, function: Callable[[Client], Awaitable[T]]) -> T:
        call = _Call(function)
        with self._lock:
            if self._closed:
                raise ConnectionLost("the client is closed")
            self._calls.put(call)
        result: T = call.future.result()
        return result

    def _run_thread(
        self,
        ready: Future[None],
        host: str,
        port: int,
        token: str | None,
        ssl_context: Any,
        app: Any,
    ) -> None:
        try:
            trio.run(self._serve, ready, host, port, token, ssl_context, app)
        except BaseException as exc:  # reported to the callers, never lost in a thread
            if not ready.done():
                ready.set_exception(exc)
        finally:
            self._fail_waiting()

    async def _serve(
        self,
        ready: Future[None],
        host: str,
        port: int,
        token: str | None,
        ssl_context: Any,
        app: Any,
    ) -> None:
        async with open_client(host, port, token=token, ssl_context=ssl_context, app=app) as client:
            # Lets a caller's thread end a consumer-group membership.
            self._token = trio.lowlevel.current_trio_token()
            ready.set_result(None)
            async with trio.open_nursery() as nursery:
                while True:
                    call = await trio.to_thread.run_sync(self._calls.get, abandon_on_cancel=True)
                    if call is None:
                        break
                    nursery.start_soon(self._run_call, client, call)

    @staticmethod
    async def _run_call(client: Client, call: _Call) -> None:
        try:
            result = await call.function(client)
        except Exception as exc:
            call.future.set_exception(exc)
        except BaseException:
            # Cancelled with the loop: the caller must not wait forever.
            call.future.set_exception(ConnectionLost("the client stopped"))
            raise
        else:
            call.future.set_result(result)

    def _fail_waiting(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            if call is not None:
                call.future.set_exception(ConnectionLost("the client is closed"))
            else:  # wakes a worker thread left waiting for calls, if any
                self._calls.put(None)
                return


class BlockingGroupEvent:
    """A :class:`~motet.engine.net.consumer.GroupEvent` for code without
    trio: the same fields, and :meth:`ack` and :meth:`nack` that block."""

    __slots__ = ("_client", "event")

    def __init__(self, client: BlockingClient, event: GroupEvent) -> None:
        self._client = client
        self.event = event

    def __repr__(self) -> str:
        return repr(self.event).replace("<GroupEvent", "<BlockingGroupEvent", 1)

    def __getattr__(self, name: str) -> Any:
        # position, stream, version, type, time, data, metadata, group
        return getattr(self.event, name)

    def ack(self) -> None:
        """See :meth:`GroupEvent.ack`."""
        self._client._call(lambda c: self.event.ack())

    def nack(self, error: str | None = None, *, retry_after: float = 0.0) -> None:
        """See :meth:`GroupEvent.nack`."""
        self._client._call(lambda c: self.event.nack(error, retry_after=retry_after))


def connect(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    token: str | None = None,
    ssl_context: Any = None,
    app: Any = None,
) -> BlockingClient:
    """Connect to a Motet server from code without trio; see
    :class:`BlockingClient`. Raises ``OSError`` when the server cannot be
    reached and :class:`~motet.engine.net.protocol.Unauthorized` for a wrong token.
    ``app`` (the server's :class:`motet.engine.App`) makes query results and
    event data the app's types, as in :class:`~motet.engine.net.client.Client`."""
    return BlockingClient(host, port, token=token, ssl_context=ssl_context, app=app)
