"""An asyncio client for the TCP line protocol (see :mod:`motet.engine.net.protocol`).

The same API and errors as the trio client (:mod:`motet.engine.net.client`),
on asyncio streams::

    async with open_client("127.0.0.1", 7707) as client:
        ack = await client.send(CreateUser(user_id="u1", ...))
        user = await client.ask(GetUserById(user_id="u1"), after=ack.position)

One connection, many requests in flight from any number of tasks; each reply
is matched to its caller by id. Requests are encoded and replies decoded with
the protocol module's structs, so both clients speak exactly the same lines.
Given the app (``open_client(..., app=app)``), query results and event data
come back as the app's types, as from the trio client (see
:mod:`motet.engine.net.typed`); without it, as plain JSON values and dicts.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from typing import Any, Final

import msgspec

from motet.storage.codec import tag_of
from motet.storage.errors import ConnectionLost, MotetError, Overloaded
from motet.storage.personal import Forgotten
from motet.storage.records import Ack

from ..status import EngineStatus
from .consumer import GroupEvent
from .protocol import (
    DEFAULT_PORT,
    DEFAULT_PREFETCH,
    MAX_READ_LIMIT,
    AckBody,
    AuthOp,
    CommandOp,
    DeleteStreamOp,
    DeletionBody,
    ErrorBody,
    ForgetOp,
    JoinBody,
    JoinOp,
    LeaveOp,
    PingOp,
    QueryOp,
    ReadBody,
    ReadOp,
    Reply,
    StatusOp,
    SubscribeOp,
    UnsubscribeOp,
    WireEvent,
    error_from_reply,
)
from .typed import AppTypes

__all__ = ["Client", "ConnectionLost", "open_client"]

_HIGH_WATER: Final = 1 << 20


class _Subscription:
    """Where the reader puts one subscription's lines (at most ``capacity``)."""

    __slots__ = ("capacity", "end", "lines", "readable")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lines: deque[Reply] = deque()
        self.readable: asyncio.Future[None] | None = None
        self.end: MotetError | None = None

    def wake(self) -> None:
        readable, self.readable = self.readable, None
        if readable is not None and not readable.done():
            readable.set_result(None)


class Client:
    """One connection to a Motet server; get one from :func:`open_client`.

    Every method may be called from many tasks at once. Cancelling a call
    stops waiting for its reply, not the request: a command may still commit.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_line: int = 256 << 20,
        subscription_buffer: int = 10_000,
        app: Any = None,
    ) -> None:
        self._reader = reader
        self._types = AppTypes(app) if app is not None else None
        self._max_line = max_line
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._subscription_buffer = subscription_buffer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[Reply, bytes]]] = {}
        self._subscriptions: dict[int, _Subscription] = {}
        self._encoder = msgspec.json.Encoder()
        self._reply_decoder = msgspec.json.Decoder(Reply)
        self._untyped = msgspec.json.Decoder()
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
        self._lost: MotetError | None = None
        self._refusal: ErrorBody | None = None

    def __repr__(self) -> str:
        state = "closed" if self._lost is not None else "open"
        return (
            f"<aio Client {state} waiting={len(self._waiting)} "
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
        """Run ``command`` on the server; return its Ack once committed. Raises
        what the embedded engine raises (:class:`CommandRejected`,
        :class:`Conflict`, :class:`Overloaded`, ...) and :class:`ConnectionLost`."""
        op = CommandOp(
            id=next(self._ids),
            type=tag_of(type(command)),
            data=msgspec.Raw(self._encoder.encode(command)),
            command_id=command_id,
            expected_version=expected_version,
        )
        ack = self._decode(await self._result(op), AckBody)
        return Ack(ack.stream, ack.version, ack.position)

    async def ask(
        self,
        query: Any,
        *,
        after: int | None = None,
        timeout: float | None = None,
        result_type: Any = None,
    ) -> Any:
        """Answer ``query`` on the server: ``result_type`` when given, else,
        when the client has the app, the type the query's handler declares it
        returns, else a plain JSON value. ``after`` waits until the query's
        projection applied that position, for at most ``timeout`` seconds.
        Raises :class:`NotFound`, :class:`QueryTimeout`,
        :class:`UnknownMessageType`, :class:`InvalidMessage` and
        :class:`ConnectionLost`."""
        op = QueryOp(
            id=next(self._ids),
            type=tag_of(type(query)),
            data=msgspec.Raw(self._encoder.encode(query)),
            after=after,
            timeout=timeout,
        )
        if result_type is None and self._types is not None:
            result_type = self._types.result_of(type(query))
        return self._decode(await self._result(op), result_type)

    async def read_stream(
        self, stream: str, from_version: int = 0, limit: int | None = None
    ) -> list[WireEvent]:
        """The events of ``stream`` after ``from_version``, oldest first: at most
        ``limit``, or all of them (read page by page) when ``limit`` is None.
        Each event's ``data`` is the app's event type when the client has the
        app, else a dict of its fields."""
        events: list[WireEvent] = []
        after = from_version
        while limit is None or len(events) < limit:
            page = MAX_READ_LIMIT if limit is None else min(limit - len(events), MAX_READ_LIMIT)
            op = ReadOp(id=next(self._ids), stream=stream, from_=after, limit=page)
            result = self._decode(await self._result(op), ReadBody)
            events.extend(map(self._event, result.events))
            after = result.next
            if len(result.events) < page:
                break
        return events

    async def delete_stream(self, stream: str, *, hard: bool = False) -> DeletionBody:
        """Delete ``stream`` on the server (see :meth:`engine.Engine.delete_stream`);
        needs the full-access token, and for ``hard`` a server started with
        ``--allow-hard-delete`` (else :class:`Unauthorized`). Returns its
        deletion record."""
        op = DeleteStreamOp(id=next(self._ids), stream=stream, hard=hard)
        result: DeletionBody = self._decode(await self._result(op), DeletionBody)
        return result

    async def subscribe(self, from_position: int = 0) -> AsyncIterator[WireEvent]:
        """Yield every event after ``from_position``: those committed already,
        then each new one (it never ends by itself). Use it with
        ``contextlib.aclosing`` so that leaving the loop ends the subscription
        on the server at once. Raises :class:`Overloaded` when this side or the
        server found the subscriber too slow, and :class:`ConnectionLost`."""
        self._check_open()
        request_id = next(self._ids)
        subscription = _Subscription(self._subscription_buffer)
        self._subscriptions[request_id] = subscription
        try:
            await self._write(SubscribeOp(id=request_id, from_=from_position))
            while True:
                while not subscription.lines:
                    if subscription.end is not None:
                        raise subscription.end
                    subscription.readable = self._loop.create_future()
                    await subscription.readable
                reply = subscription.lines.popleft()
                if reply.event is not None:
                    yield self._event(reply.event)
                elif reply.error is not None:
                    raise error_from_reply(reply.error)
        finally:
            if self._subscriptions.pop(request_id, None) is not None:
                self._unsubscribe(request_id)

    async def read_log(
        self,
        from_position: int = 0,
        limit: int | None = None,
        *,
        category: str | None = None,
        types: list[str] | None = None,
    ) -> tuple[list[WireEvent], int]:
        """One page of the log's events that pass ``category``/``types``,
        and the last position looked at (see the trio client's ``read_log``)."""
        op = ReadOp(
            id=next(self._ids), from_=from_position, limit=limit, category=category, types=types
        )
        result = self._decode(await self._result(op), ReadBody)
        return [self._event(e) for e in result.events], result.next

    @asynccontextmanager
    async def consume(
        self,
        group: str,
        *,
        category: str | None = None,
        types: list[str] | None = None,
        prefetch: int | None = None,
    ) -> AsyncIterator[AsyncIterator[GroupEvent]]:
        """Be a member of consumer group ``group`` for the block; iterate
        for events and ``await event.ack()`` (or ``nack``) each one. The same
        behaviour and errors as the trio client's ``consume``."""
        self._check_open()
        request_id = next(self._ids)
        capacity = (DEFAULT_PREFETCH if prefetch is None else prefetch) + 2
        subscription = _Subscription(capacity)
        self._subscriptions[request_id] = subscription
        joined = False
        try:
            await self._write(
                JoinOp(
                    id=request_id, group=group, category=category, types=types, prefetch=prefetch
                )
            )
            reply = await self._next_line(subscription)
            if reply.error is not None:
                raise error_from_reply(reply.error)
            self._decode(reply.result, JoinBody)
            joined = True
            async with aclosing(self._deliveries(group, subscription)) as deliveries:
                yield deliveries
        finally:
            self._subscriptions.pop(request_id, None)
            if joined and self._lost is None:
                with suppress(MotetError, asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self._result(LeaveOp(id=next(self._ids), group=group)), 5
                    )

    async def _next_line(self, subscription: _Subscription) -> Reply:
        while not subscription.lines:
            if subscription.end is not None:
                raise subscription.end
            subscription.readable = self._loop.create_future()
            await subscription.readable
        return subscription.lines.popleft()

    async def _deliveries(
        self, group: str, subscription: _Subscription
    ) -> AsyncGenerator[GroupEvent, None]:
        ids = self._ids.__next__
        while True:
            reply = await self._next_line(subscription)
            if reply.event is not None:
                yield GroupEvent(group, self._event(reply.event), self._result, ids)
            elif reply.error is not None:
                raise error_from_reply(reply.error)

    async def status(self) -> EngineStatus:
        """The server engine's status."""
        status: EngineStatus = self._decode(
            await self._result(StatusOp(id=next(self._ids))), EngineStatus
        )
        return status

    async def forget(self, subject: str) -> Forgotten:
        """Erase the personal data of ``subject`` on the server (see
        :meth:`engine.Engine.forget`); needs the full-access token. Raises
        :class:`~motet.engine.net.protocol.InvalidMessage` for a subject that
        cannot be one and :class:`Unauthorized` for a client token."""
        forgotten: Forgotten = self._decode(
            await self._result(ForgetOp(id=next(self._ids), subject=subject)), Forgotten
        )
        return forgotten

    async def ping(self) -> float:
        """Ask the server for ``pong``; return the round trip in seconds."""
        started = time.perf_counter()
        await self._result(PingOp(id=next(self._ids)))
        return time.perf_counter() - started

    async def authenticate(self, token: str) -> None:
        """Send the server's token (``open_client(token=...)`` does it first);
        raises :class:`Unauthorized` when it is wrong."""
        await self._result(AuthOp(id=next(self._ids), token=token))

    async def request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send one raw request (a dict) and return the reply as a dict, error
        replies included (nothing is raised for them). The reply's ``id`` is
        the request's. Raises ``ValueError`` for a subscription."""
        if request.get("op") == "subscribe":
            raise ValueError("use Client.subscribe() for subscriptions")
        body = dict(request)
        caller_id = body.get("id")
        request_id = next(self._ids)
        body["id"] = request_id
        _, line = await self._call(request_id, body)
        reply: dict[str, Any] = self._untyped.decode(line)
        reply["id"] = caller_id
        return reply

    # -- plumbing -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._lost is not None:
            raise self._lost

    async def _write(self, message: Any) -> None:
        self._check_open()
        self._writer.write(self._encoder.encode(message) + b"\n")
        transport = self._writer.transport
        if transport.get_write_buffer_size() > _HIGH_WATER:
            try:
                await self._writer.drain()
            except OSError as exc:
                self._close(ConnectionLost(f"the connection broke while sending: {exc}"))
                self._check_open()

    def _unsubscribe(self, subscription: int) -> None:
        """Best effort, without waiting: this may run in a generator's finalizer."""
        if self._lost is not None:
            return
        op = UnsubscribeOp(id=next(self._ids), subscription=subscription)
        with suppress(OSError, RuntimeError):
            self._writer.write(self._encoder.encode(op) + b"\n")

    async def _call(self, request_id: int, message: Any) -> tuple[Reply, bytes]:
        self._check_open()
        future: asyncio.Future[tuple[Reply, bytes]] = self._loop.create_future()
        self._waiting[request_id] = future
        try:
            await self._write(message)
            return await future
        finally:
            self._waiting.pop(request_id, None)

    async def _result(self, op: Any) -> msgspec.Raw:
        reply, _ = await self._call(op.id, op)
        if reply.error is not None:
            raise error_from_reply(reply.error)
        return reply.result

    def _event(self, event: WireEvent) -> WireEvent:
        return event if self._types is None else self._types.event(event)

    def _decode(self, raw: msgspec.Raw, result_type: Any) -> Any:
        if result_type is None:
            return self._untyped.decode(raw)
        decoder = self._decoders.get(result_type)
        if decoder is None:
            decoder = self._decoders[result_type] = msgspec.json.Decoder(result_type)
        return decoder.decode(raw)

    async def _read_loop(self) -> None:
        reason: MotetError = ConnectionLost("the server closed the connection")
        try:
            while True:
                try:
                    line = await self._reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    reason = ConnectionLost(f"a reply is longer than {self._max_line} bytes")
                    return
                self._dispatch(line[:-1])
        except OSError as exc:
            reason = ConnectionLost(f"the connection broke: {exc}")
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
            future = self._waiting.get(request_id)
            if future is not None:
                if not future.done():
                    future.set_result((reply, line))
                return
        if request_id is None and reply.error is not None:
            # Not an answer to any request: the server refused the connection
            # or cut it (e.g. a line too large); the close explains it.
            self._refusal = reply.error

    def _deliver(self, request_id: int, subscription: _Subscription, reply: Reply) -> None:
        if len(subscription.lines) >= subscription.capacity:
            # The reader must never wait for one slow consumer.
            self._subscriptions.pop(request_id, None)
            subscription.end = Overloaded(
                f"subscription {request_id} was too slow: {subscription.capacity} events were "
                "waiting to be consumed; resubscribe from the last position received"
            )
            subscription.wake()
            self._unsubscribe(request_id)
            return
        subscription.lines.append(reply)
        if reply.event is None and reply.error is not None:
            self._subscriptions.pop(request_id, None)
        subscription.wake()

    def _close(self, reason: MotetError) -> None:
        """Fail every waiting call and subscription with ``reason``."""
        if self._lost is None:
            self._lost = reason
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(self._lost)
        for subscription in self._subscriptions.values():
            if subscription.end is None:
                subscription.end = self._lost
            subscription.wake()


@asynccontextmanager
async def open_client(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    token: str | None = None,
    ssl_context: Any = None,
    max_line: int = 256 << 20,
    subscription_buffer: int = 10_000,
    app: Any = None,
) -> AsyncIterator[Client]:
    """Connect to a Motet server and yield a :class:`Client`; the connection
    closes when the block ends.

    ``token`` is sent first when given (raises :class:`Unauthorized` if
    wrong). ``ssl_context`` speaks TLS, checking the certificate against
    ``host``. ``max_line`` bounds one reply line; ``subscription_buffer`` the
    events a subscription may have waiting for its consumer. ``app`` (the
    server's :class:`motet.engine.App`) makes results and event data the
    app's types. Raises
    ``OSError`` when the server cannot be reached (``ssl.SSLError`` for a
    certificate the context does not trust).
    """
    reader, writer = await asyncio.open_connection(
        host,
        port,
        ssl=ssl_context,
        server_hostname=host if ssl_context is not None else None,
        limit=max_line + 1,
    )
    client = Client(
        reader, writer, max_line=max_line, subscription_buffer=subscription_buffer, app=app
    )
    reading = asyncio.create_task(client._read_loop(), name=f"motet client {host}:{port}")
    try:
        if token is not None:
            await client.authenticate(token)
        yield client
    finally:
        client._close(ConnectionLost("the client is closed"))
        reading.cancel()
        # wait, not await: the reader's CancelledError is not this task's.
        await asyncio.wait([reading])
        writer.close()
        # OSError includes TimeoutError: a peer that does not finish the close.
        with suppress(OSError):
            await asyncio.wait_for(writer.wait_closed(), 1)
