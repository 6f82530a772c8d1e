"""A Python client for the TCP line protocol (see :mod:`motet.engine.net.protocol`).

Async, one connection, many requests in flight::

    async with open_client("127.0.0.1", 7707) as client:
        ack = await client.send(CreateUser(user_id="u1", ...))
        user = await client.ask(GetUserById(user_id="u1"), after=ack.position)

Commands and queries are the app's ``msgspec.Struct`` types, sent as
``{"type": tag, "data": fields}``. Query results come back as plain JSON
values (dicts, lists, numbers, strings), or as ``result_type`` when given.
Errors are raised as the embedded API raises them (``rejected`` →
:class:`CommandRejected`, ``conflict`` → :class:`Conflict`, ...; see
:data:`motet.engine.net.protocol.ERROR_CODES`); a lost connection raises
:class:`ConnectionLost`.

For scripts without trio, :func:`connect` returns a :class:`BlockingClient`
with the same methods, minus subscriptions.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Future
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Final, TypeVar

import msgspec
import trio

from motet.actors.errors import Overloaded
from motet.storage.codec import tag_of
from motet.storage.errors import MotetError
from motet.storage.records import Ack

from ..core import EngineStatus
from .protocol import (
    MAX_READ_LIMIT,
    AuthOp,
    CommandOp,
    ErrorBody,
    PingOp,
    QueryOp,
    ReadOp,
    Reply,
    StatusOp,
    SubscribeOp,
    UnsubscribeOp,
    WireEvent,
    error_from_reply,
)
from .server import DEFAULT_PORT

__all__ = ["BlockingClient", "Client", "ConnectionLost", "connect", "open_client"]

T = TypeVar("T")

_RECEIVE_SIZE: Final = 65_536
_MAX_BATCH: Final = 1 << 20
_OUTGOING: Final = 1_024


class ConnectionLost(MotetError):
    """The connection to the server is closed or broke, so the request got no
    answer. A command sent just before may still have committed: retry it
    with the same ``command_id`` to find out."""


class _Slot:
    """Where the reader puts the reply to one request."""

    __slots__ = ("done", "line", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Reply | None = None
        self.line = b""


class _AckResult(msgspec.Struct):
    stream: str
    version: int
    position: int


class _ReadResult(msgspec.Struct):
    events: list[WireEvent]
    next: int


class Client:
    """One connection to a Motet server; get one from :func:`open_client`.

    Every method may be called from many tasks at once: requests are
    pipelined and each reply is matched to its caller by id. Cancelling a
    call stops waiting for its reply, not the request: a command may still
    commit.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_line: int = 256 << 20,
        subscription_buffer: int = 10_000,
    ) -> None:
        self._stream = stream
        self._max_line = max_line
        self._subscription_buffer = subscription_buffer
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Slot] = {}
        self._subscriptions: dict[int, trio.MemorySendChannel[Reply]] = {}
        self._ended: dict[int, MotetError] = {}
        self._outgoing, self._to_write = trio.open_memory_channel[bytes](_OUTGOING)
        self._encoder = msgspec.json.Encoder()
        self._reply_decoder = msgspec.json.Decoder(Reply)
        self._untyped = msgspec.json.Decoder()
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
        self._lost: MotetError | None = None
        self._refusal: ErrorBody | None = None

    def __repr__(self) -> str:
        state = "closed" if self._lost is not None else "open"
        return (
            f"<Client {state} waiting={len(self._waiting)} "
            f"subscriptions={len(self._subscriptions)}>"
        )

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (every call then raises
        :class:`ConnectionLost`)."""
        return self._lost is not None

    # -- the API ------------------------------------------------------------------

    async def send(
        self, command: Any, *, command_id: str | None = None, expected_version: int | None = None
    ) -> Ack:
        """Run ``command`` on the server; return its Ack once committed.

        Raises what :meth:`engine.Engine.send` raises (:class:`CommandRejected`,
        :class:`Conflict`, :class:`Overloaded`, :class:`UnknownMessageType`,
        :class:`~motet.engine.net.protocol.InvalidMessage` for data that does not fit the
        type), and :class:`ConnectionLost`.
        """
        op = CommandOp(
            id=next(self._ids),
            type=tag_of(type(command)),
            data=msgspec.Raw(self._encoder.encode(command)),
            command_id=command_id,
            expected_version=expected_version,
        )
        ack = self._decode(await self._result(op), _AckResult)
        return Ack(ack.stream, ack.version, ack.position)

    async def ask(
        self,
        query: Any,
        *,
        after: int | None = None,
        timeout: float | None = None,
        result_type: Any = None,
    ) -> Any:
        """Answer ``query`` on the server (see :meth:`engine.Engine.ask`): a
        plain JSON value, or ``result_type`` (any type msgspec can decode,
        e.g. the query's result Struct) when given.

        ``after`` waits until the query's projection applied that position, for
        at most ``timeout`` seconds (the server's default: 5). Raises
        :class:`NotFound`, :class:`QueryTimeout`, :class:`UnknownMessageType`,
        :class:`~motet.engine.net.protocol.InvalidMessage` and :class:`ConnectionLost`.
        """
        op = QueryOp(
            id=next(self._ids),
            type=tag_of(type(query)),
            data=msgspec.Raw(self._encoder.encode(query)),
            after=after,
            timeout=timeout,
        )
        return self._decode(await self._result(op), result_type)

    async def read_stream(
        self, stream: str, from_version: int = 0, limit: int | None = None
    ) -> list[WireEvent]:
        """The events of ``stream`` with versions above ``from_version``, oldest
        first: at most ``limit``, or all of them (read page by page) when
        ``limit`` is None. Each event's ``data`` is a dict of its fields."""
        events: list[WireEvent] = []
        after = from_version
        while limit is None or len(events) < limit:
            page = MAX_READ_LIMIT if limit is None else min(limit - len(events), MAX_READ_LIMIT)
            op = ReadOp(id=next(self._ids), stream=stream, from_=after, limit=page)
            result = self._decode(await self._result(op), _ReadResult)
            events.extend(result.events)
            after = result.next
            if len(result.events) < page:
                break
        return events

    async def subscribe(self, from_position: int = 0) -> AsyncIterator[WireEvent]:
        """Yield every event with a position above ``from_position``: those
        already committed, then each new one (it never ends by itself).

        Use it with ``contextlib.aclosing`` so that leaving the loop ends the
        subscription on the server at once. Raises :class:`Overloaded` when
        this side or the server found the subscriber too slow (the message
        says the position to resubscribe from), and :class:`ConnectionLost`.
        """
        self._check_open()
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[Reply](self._subscription_buffer)
        self._subscriptions[request_id] = send
        try:
            await self._write(SubscribeOp(id=request_id, from_=from_position))
            async with receive:
                async for reply in receive:
                    if reply.event is not None:
                        yield reply.event
                    elif reply.error is not None:
                        raise error_from_reply(reply.error)
            ended = self._ended.pop(request_id, None) or self._lost
            raise ended or ConnectionLost("the subscription ended")
        finally:
            self._ended.pop(request_id, None)
            if self._subscriptions.pop(request_id, None) is not None:
                self._unsubscribe(request_id)

    async def status(self) -> EngineStatus:
        """The server engine's status (see :meth:`engine.Engine.status`)."""
        status: EngineStatus = self._decode(
            await self._result(StatusOp(id=next(self._ids))), EngineStatus
        )
        return status

    async def ping(self) -> float:
        """Ask the server for ``pong``; return the round trip in seconds."""
        started = time.perf_counter()
        await self._result(PingOp(id=next(self._ids)))
        return time.perf_counter() - started

    async def authenticate(self, token: str) -> None:
        """Send the server's token (``open_client(token=...)`` does it first);
        raises :class:`~motet.engine.net.protocol.Unauthorized` when it is wrong."""
        await self._result(AuthOp(id=next(self._ids), token=token))

    async def request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send one raw request (a dict as in DESIGN.md) and return the reply
        as a dict, ``{"ok": false, "error": ...}`` included: nothing is raised
        for an error reply. The reply's ``id`` is the request's. Subscriptions
        need :meth:`subscribe`; raises ``ValueError`` for one."""
        if request.get("op") == "subscribe":
            raise ValueError("use Client.subscribe() for subscriptions")
        body = dict(request)
        caller_id = body.get("id")
        request_id = next(self._ids)
        body["id"] = request_id
        slot = await self._call(request_id, body)
        reply: dict[str, Any] = self._untyped.decode(slot.line)
        reply["id"] = caller_id
        return reply

    # -- plumbing -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._lost is not None:
            raise self._lost

    async def _write(self, message: Any) -> None:
        line = self._encoder.encode(message) + b"\n"
        try:
            await self._outgoing.send(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._check_open()
            raise ConnectionLost("the connection is closed") from None

    def _unsubscribe(self, subscription: int) -> None:
        """Best effort, and without waiting: this runs while a subscription
        ends, possibly in an async generator's finalizer."""
        if self._lost is not None:
            return
        op = UnsubscribeOp(id=next(self._ids), subscription=subscription)
        # If it cannot be queued, the server ends it when the connection closes.
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            self._outgoing.send_nowait(self._encoder.encode(op) + b"\n")

    async def _call(self, request_id: int, message: Any) -> _Slot:
        self._check_open()
        slot = _Slot()
        self._waiting[request_id] = slot
        try:
            await self._write(message)
            await slot.done.wait()
        finally:
            self._waiting.pop(request_id, None)
        if slot.reply is None:
            self._check_open()
            raise ConnectionLost("the connection closed before the reply came")
        return slot

    async def _result(self, op: Any) -> msgspec.Raw:
        reply = (await self._call(op.id, op)).reply
        assert reply is not None
        if reply.error is not None:
            raise error_from_reply(reply.error)
        return reply.result

    def _decode(self, raw: msgspec.Raw, result_type: Any) -> Any:
        if result_type is None:
            return self._untyped.decode(raw)
        decoder = self._decoders.get(result_type)
        if decoder is None:
            decoder = self._decoders[result_type] = msgspec.json.Decoder(result_type)
        return decoder.decode(raw)

    async def _write_loop(self) -> None:
        try:
            async with self._to_write:
                async for line in self._to_write:
                    batch = [line]
                    size = len(line)
                    while size < _MAX_BATCH:
                        try:
                            more = self._to_write.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        batch.append(more)
                        size += len(more)
                    await self._stream.send_all(b"".join(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._close(ConnectionLost(f"the connection broke while sending: {_reason(exc)}"))

    async def _read_loop(self) -> None:
        reason: MotetError = ConnectionLost("the server closed the connection")
        try:
            buffer = bytearray()
            start = scanned = 0
            while True:
                end = buffer.find(b"\n", scanned)
                if end >= 0:
                    self._dispatch(bytes(buffer[start:end]))
                    start = scanned = end + 1
                    continue
                if len(buffer) - start > self._max_line:
                    reason = ConnectionLost(f"a reply is longer than {self._max_line} bytes")
                    return
                del buffer[:start]
                start = 0
                scanned = len(buffer)
                data = await self._stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    return
                buffer += data
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = ConnectionLost(f"the connection broke: {_reason(exc)}")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = ConnectionLost(f"the server sent a reply that is not Motet's: {exc}")
        finally:
            if self._refusal is not None:
                reason = error_from_reply(self._refusal)
            self._close(reason)

    def _dispatch(self, line: bytes) -> None:
        reply = self._reply_decoder.decode(line)
        request_id = reply.id
        if isinstance(request_id, int):
            subscription = self._subscriptions.get(request_id)
            if subscription is not None:
                self._deliver(request_id, subscription, reply)
                return
            slot = self._waiting.get(request_id)
            if slot is not None:
                slot.reply = reply
                slot.line = line
                slot.done.set()
                return
        if request_id is None and reply.error is not None:
            # Not an answer to any request: the server refused the connection
            # or cut it (e.g. a line too large); the next close explains it.
            self._refusal = reply.error

    def _deliver(
        self, request_id: int, channel: trio.MemorySendChannel[Reply], reply: Reply
    ) -> None:
        try:
            channel.send_nowait(reply)
        except trio.WouldBlock:
            # The reader must never wait for one slow consumer.
            self._subscriptions.pop(request_id, None)
            self._ended[request_id] = _too_slow(request_id, self._subscription_buffer)
            channel.close()
            self._unsubscribe(request_id)
            return
        if reply.event is None and reply.error is not None:
            self._subscriptions.pop(request_id, None)
            channel.close()

    def _close(self, reason: MotetError) -> None:
        """Fail every waiting call and subscription with ``reason``."""
        if self._lost is None:
            self._lost = reason
        self._outgoing.close()
        for slot in self._waiting.values():
            slot.done.set()
        for channel in self._subscriptions.values():
            channel.close()


def _reason(error: BaseException) -> str:
    """What broke a stream: trio's error, or the OS or TLS error behind it."""
    return str(error) or str(error.__cause__ or "") or type(error).__name__


def _too_slow(request_id: int, buffer: int) -> MotetError:
    return Overloaded(
        f"subscription {request_id} was too slow: {buffer} events were waiting to be "
        "consumed; resubscribe from the last position received"
    )


@asynccontextmanager
async def open_client(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    token: str | None = None,
    ssl_context: Any = None,
    max_line: int = 256 << 20,
    subscription_buffer: int = 10_000,
) -> AsyncIterator[Client]:
    """Connect to a Motet server and yield a :class:`Client`; the connection
    closes when the block ends.

    ``token`` is sent first when given (raises
    :class:`~motet.engine.net.protocol.Unauthorized` if wrong). ``ssl_context`` (an
    ``ssl.SSLContext``) speaks TLS, checking the certificate against
    ``host``. ``max_line`` bounds one reply line; ``subscription_buffer`` the
    events a subscription may have waiting for its consumer. Raises
    ``OSError`` when the server cannot be reached.
    """
    stream: trio.abc.Stream
    if ssl_context is None:
        stream = await trio.open_tcp_stream(host, port)
    else:
        tls = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ssl_context)
        try:
            # Now rather than at the first request, so that a certificate the
            # context does not trust fails here, as the ssl.SSLError it is.
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(tls)
            if isinstance(exc.__cause__, OSError):
                raise exc.__cause__ from None
            raise ConnectionLost(f"the TLS handshake failed: {_reason(exc)}") from exc
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        stream = tls
    try:
        client = Client(stream, max_line=max_line, subscription_buffer=subscription_buffer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read_loop)
            nursery.start_soon(client._write_loop)
            try:
                if token is not None:
                    await client.authenticate(token)
                yield client
            finally:
                client._close(ConnectionLost("the client is closed"))
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The reader and writer end only by cancellation, so the nursery's group
        # holds what the authentication or the caller's block raised: raise that
        # exception itself (e.g. Unauthorized, as documented), not a group of one.
        if len(group.exceptions) != 1:
            raise
        only = group.exceptions[0]
        raise only from only.__cause__
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await stream.aclose()


# --- The blocking client ----------------------------------------------------------


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
    ) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run_thread,
            args=(ready, host, port, token, ssl_context),
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
        self, command: Any, *, command_id: str | None = None, expected_version: int | None = None
    ) -> Ack:
        """See :meth:`Client.send`."""
        return self._call(
            lambda c: c.send(command, command_id=command_id, expected_version=expected_version)
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

    def status(self) -> EngineStatus:
        """See :meth:`Client.status`."""
        return self._call(lambda c: c.status())

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
        self, ready: Future[None], host: str, port: int, token: str | None, ssl_context: Any
    ) -> None:
        try:
            trio.run(self._serve, ready, host, port, token, ssl_context)
        except BaseException as exc:  # reported to the callers, never lost in a thread
            if not ready.done():
                ready.set_exception(exc)
        finally:
            self._fail_waiting()

    async def _serve(
        self, ready: Future[None], host: str, port: int, token: str | None, ssl_context: Any
    ) -> None:
        async with open_client(host, port, token=token, ssl_context=ssl_context) as client:
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


def connect(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    token: str | None = None,
    ssl_context: Any = None,
) -> BlockingClient:
    """Connect to a Motet server from code without trio; see
    :class:`BlockingClient`. Raises ``OSError`` when the server cannot be
    reached and :class:`~motet.engine.net.protocol.Unauthorized` for a wrong token."""
    return BlockingClient(host, port, token=token, ssl_context=ssl_context)
