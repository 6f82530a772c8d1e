"""A Python client for the TCP line protocol (see :mod:`motet.engine.net.protocol`).

Async, one connection, many requests in flight::

    async with open_client("127.0.0.1", 7707) as client:
        ack = await client.send(CreateUser(user_id="u1", ...))
        user = await client.ask(GetUserById(user_id="u1"), after=ack.position)

Commands and queries are the app's ``msgspec.Struct`` types, sent as
``{"type": tag, "data": fields}``. Given the app (``open_client(...,
app=app)``), the client answers in the embedded API's types: a query's result
is decoded into the type its handler declares it returns, and each event's
``data`` (``read_stream``, ``subscribe``) into the app's event type of its tag
(see :mod:`motet.engine.net.typed`). Without the app, query results are plain
JSON values (dicts, lists, numbers, strings) and event data are dicts of the
event's fields (its tag included); ``ask(result_type=...)`` picks a type for
one call either way.
Errors are raised as the embedded API raises them (``rejected`` →
:class:`CommandRejected`, ``conflict`` → :class:`Conflict`, ...; see
:func:`motet.storage.errors.error_for_code`); a lost connection raises
:class:`ConnectionLost`.

For scripts without trio, :func:`motet.engine.net.blocking.connect` returns
a :class:`~motet.engine.net.blocking.BlockingClient` with the same methods,
minus subscriptions.

This module loads neither the actor runtime nor the stores: a client
process needs only trio and msgspec.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import msgspec
import trio

from motet.storage.codec import tag_of
from motet.storage.errors import ConnectionLost, MotetError, Overloaded, RequestTooLarge
from motet.storage.personal import Forgotten
from motet.storage.records import Ack

from ..status import EngineStatus
from .consumer import GroupEvent
from .framing import LineReader, write_lines
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

_OUTGOING: Final = 1_024


class _Slot:
    """Where the reader puts the reply to one request."""

    __slots__ = ("done", "line", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Reply | None = None
        self.line = b""


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
        app: Any = None,
    ) -> None:
        self._stream = stream
        self._types = AppTypes(app) if app is not None else None
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
        self,
        command: Any,
        *,
        command_id: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Ack:
        """Run ``command`` on the server; return its Ack once committed.

        ``correlation_id`` and ``causation_id`` are kept in the metadata of
        the events it produces (``read_stream`` and ``subscribe`` return it).

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
            correlation_id=correlation_id,
            causation_id=causation_id,
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
        """Answer ``query`` on the server (see :meth:`engine.Engine.ask`):
        ``result_type`` (any type msgspec can decode) when given, else, when
        the client has the app, the type the query's handler declares it
        returns, else a plain JSON value.

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
        if result_type is None and self._types is not None:
            result_type = self._types.result_of(type(query))
        return self._decode(await self._result(op), result_type)

    async def read_stream(
        self, stream: str, from_version: int = 0, limit: int | None = None
    ) -> list[WireEvent]:
        """The events of ``stream`` with versions above ``from_version``, oldest
        first: at most ``limit``, or all of them (read page by page) when
        ``limit`` is None. Each event's ``data`` is the app's event type when
        the client has the app, else a dict of its fields."""
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
        """Yield every event with a position above ``from_position``: those
        already committed, then each new one (it never ends by itself).

        Use it with ``contextlib.aclosing`` so that leaving the loop ends the
        subscription on the server at once. Raises :class:`Overloaded` when
        this side or the server found the subscriber too slow (the message
        says the position to resubscribe from), :class:`~motet.storage.errors.Unavailable` when the
        server is stopping, and :class:`ConnectionLost`.
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
                        yield self._event(reply.event)
                    elif reply.error is not None:
                        raise error_from_reply(reply.error)
            ended = self._ended.pop(request_id, None) or self._lost
            raise ended or ConnectionLost("the subscription ended")
        finally:
            self._ended.pop(request_id, None)
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
        """One page of the events after ``from_position`` whose stream is in
        ``category`` and whose type is one of ``types`` (give at least one),
        and the last position the server looked at: pass it as the next
        ``from_position``. A page may be short (even empty) before the head,
        since the server looks at a bounded part of the log per request."""
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
        """Be a member of consumer group ``group`` for the block::

            async with client.consume("mailer", category="User") as events:
                async for event in events:
                    ...
                    await event.ack()

        Events of one stream come in version order, to one member at a time;
        delivery is at least once (``event.position`` is the idempotency key).
        ``prefetch`` (default 100) caps the events this member holds unacked.
        Leaving the block leaves the group: unacked events go to the other
        members. Raises what the join is refused with
        (:class:`~motet.storage.errors.InvalidMessage`, ...),
        :class:`~motet.storage.errors.Unavailable` when the server stops and
        :class:`ConnectionLost`.
        """
        self._check_open()
        request_id = next(self._ids)
        capacity = (DEFAULT_PREFETCH if prefetch is None else prefetch) + 2
        send, receive = trio.open_memory_channel[Reply](capacity)
        self._subscriptions[request_id] = send
        joined = False
        try:
            await self._write(
                JoinOp(
                    id=request_id, group=group, category=category, types=types, prefetch=prefetch
                )
            )
            try:
                reply = await receive.receive()
            except trio.EndOfChannel:
                self._check_open()
                raise ConnectionLost("the connection closed before the join was answered") from None
            if reply.error is not None:
                raise error_from_reply(reply.error)
            self._decode(reply.result, JoinBody)
            joined = True
            async with contextlib.aclosing(
                self._deliveries(group, request_id, receive)
            ) as deliveries:
                yield deliveries
        finally:
            self._subscriptions.pop(request_id, None)
            if joined and self._lost is None:
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    with contextlib.suppress(MotetError):
                        await self._result(LeaveOp(id=next(self._ids), group=group))

    async def _deliveries(
        self, group: str, request_id: int, receive: trio.MemoryReceiveChannel[Reply]
    ) -> AsyncGenerator[GroupEvent, None]:
        ids = self._ids.__next__
        async for reply in receive:
            if reply.event is not None:
                yield GroupEvent(group, self._event(reply.event), self._result, ids)
            elif reply.error is not None:
                raise error_from_reply(reply.error)
        ended = self._ended.pop(request_id, None) or self._lost
        raise ended or ConnectionLost("the membership ended")

    async def status(self) -> EngineStatus:
        """The server engine's status (see :meth:`engine.Engine.status`)."""
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
        raises :class:`~motet.engine.net.protocol.Unauthorized` when it is wrong."""
        await self._result(AuthOp(id=next(self._ids), token=token))

    async def request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send one raw request (a dict as in docs/design.md) and return the reply
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

    def _event(self, event: WireEvent) -> WireEvent:
        return event if self._types is None else self._types.event(event)

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
                await write_lines(self._stream, self._to_write)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._close(ConnectionLost(f"the connection broke while sending: {_reason(exc)}"))

    async def _read_loop(self) -> None:
        reason: MotetError = ConnectionLost("the server closed the connection")
        reader = LineReader(self._stream, self._max_line)
        try:
            while (line := await reader.receive_line()) is not None:
                self._dispatch(line)
        except RequestTooLarge:
            reason = ConnectionLost(f"a reply is longer than {self._max_line} bytes")
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
    app: Any = None,
) -> AsyncIterator[Client]:
    """Connect to a Motet server and yield a :class:`Client`; the connection
    closes when the block ends.

    ``token`` is sent first when given (raises
    :class:`~motet.engine.net.protocol.Unauthorized` if wrong). ``ssl_context`` (an
    ``ssl.SSLContext``) speaks TLS, checking the certificate against
    ``host``. ``max_line`` bounds one reply line; ``subscription_buffer`` the
    events a subscription may have waiting for its consumer. ``app`` (the
    server's :class:`motet.engine.App`) makes results and event data the
    app's types (see :class:`Client`). Raises ``OSError`` when the server
    cannot be reached.
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
        client = Client(stream, max_line=max_line, subscription_buffer=subscription_buffer, app=app)
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


def __getattr__(name: str) -> Any:
    # The blocking client moved to .blocking; this keeps its old import path
    # working without loading it (and its threads' machinery) for trio users.
    if name in ("BlockingClient", "connect"):
        from . import blocking

        return getattr(blocking, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
