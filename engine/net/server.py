"""The TCP server: the line protocol of :mod:`motet.engine.net.protocol` over trio sockets.

Start it next to an engine and stop it gracefully::

    async with open_engine(path, app) as engine:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_engine, engine, "127.0.0.1", 7707)
            ...                  # e.g. wait for SIGTERM
            server.stop()        # stop accepting, drain, then serve_engine returns

or, equivalently, ``async with open_server(engine, port=7707) as server: ...``.

Each connection has one task reading lines, one task per pipelined request
(at most ``max_in_flight`` at once; reading pauses at the cap) and one writer
task sending what its :class:`~.framing.Outbox` holds. Nothing a client sends
can stop the server or disturb another connection: every bad line gets an
error reply, a line over ``max_line`` bytes gets ``too_large`` and closes that
connection only.

What a connection may make the server hold is bounded in time and bytes (see
:func:`serve_engine`): an unauthenticated connection (or a TLS handshake)
must finish within ``auth_timeout``, only ``max_unauthenticated`` of them are
kept (a new one closes the oldest), a connection with nothing in flight is
closed after ``idle_timeout``; unfinished lines share ``max_partial_bytes``;
replies waiting to be sent are capped per connection (``max_pending_output``:
reading stops, catch-up subscriptions wait, live ones are cut off) and across
connections (``max_total_output``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager, suppress
from functools import partial
from typing import Any

import msgspec
import trio

from motet.actors.consumer_group import EventFilter, parked_status
from motet.storage.errors import BadRequest as _BadRequest
from motet.storage.errors import MotetError, NotFound, Overloaded, Unavailable
from motet.storage.records import Ack

from ..core import Engine
from .access import (
    DEFAULT_AUTH_FAILURE_DELAY,
    DEFAULT_MAX_AUTH_FAILURES,
    FULL,
    AuthGuard,
    Tokens,
    hard_delete_refusal,
    peer_name,
    scope_refusal,
)
from .framing import RECEIVE_SIZE, ByteBudget, LineReader, Outbox, write_outbox
from .listening import AcceptFailures, open_listeners, serve_listeners
from .protocol import (
    DEFAULT_PORT,
    DEFAULT_PREFETCH,
    DEFAULT_QUERY_TIMEOUT,
    DEFAULT_READ_LIMIT,
    AckOp,
    ApplyRetentionOp,
    AuthOp,
    BadRequest,
    CommandOp,
    DeleteStreamOp,
    ForgetOp,
    JoinOp,
    LeaveOp,
    NackOp,
    PingOp,
    QueryOp,
    ReadOp,
    ReplayOp,
    ReplyEncoder,
    RequestDecoder,
    RequestId,
    RequestTooLarge,
    SkipOp,
    StatusOp,
    SubscribeOp,
    Unauthorized,
    UnsubscribeOp,
    code_for,
)

__all__ = [
    "DEFAULT_PORT",
    "MAX_REQUEST_ID",
    "UNAUTHENTICATED_MAX_LINE",
    "Server",
    "ServerStatistics",
    "open_server",
    "serve_engine",
]

log = logging.getLogger("motet.server")

# How long a closing connection keeps reading (and discarding) what the peer
# still sends, so the peer reads our last reply instead of a reset.
_LINGER = 1.0

MAX_REQUEST_ID = 256
"""Longest request ``id`` in UTF-8 bytes: every reply (and event line) echoes it."""

UNAUTHENTICATED_MAX_LINE = 4096
"""Longest request line before ``auth`` succeeded (when the server has a token)."""

# Events a subscription reads from the log at a time: each batch is held
# decoded while its lines wait for room in the outbox.
_SUBSCRIBE_BATCH = 32


class ServerStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the server's counters (see :meth:`Server.statistics`)."""

    connections: int
    accepted: int
    refused: int
    requests: int
    errors: int
    subscriptions: int
    subscribers_cut_off: int
    timed_out: int = 0
    """Connections closed by ``auth_timeout`` or ``idle_timeout``, or evicted
    by a newer unauthenticated one."""
    pending_output: int = 0
    """Bytes of replies waiting to be sent, all connections together."""
    unfinished_lines: int = 0
    """Bytes of request lines received but not finished, all connections together."""
    accept_failures: int = 0
    """Accepts that failed for want of resources (e.g. out of file descriptors)."""


class Server:
    """A running server, as :func:`serve_engine` reports it to ``nursery.start``.

    Holds the listeners (``port`` is the first one's port, useful with port 0)
    and :meth:`stop`, which ends :func:`serve_engine` gracefully.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        token: str | None,
        client_token: str | None = None,
        auth_failure_delay: float = DEFAULT_AUTH_FAILURE_DELAY,
        max_auth_failures: int = DEFAULT_MAX_AUTH_FAILURES,
        max_line: int,
        max_connections: int,
        max_in_flight: int,
        subscriber_buffer: int,
        write_timeout: float,
        auth_timeout: float,
        idle_timeout: float,
        max_unauthenticated: int,
        max_partial_bytes: int,
        max_pending_output: int,
        max_total_output: int,
        allow_hard_delete: bool = False,
    ) -> None:
        limits = {
            "max_line": max_line,
            "max_connections": max_connections,
            "max_in_flight": max_in_flight,
            "subscriber_buffer": subscriber_buffer,
            "max_unauthenticated": max_unauthenticated,
            "max_partial_bytes": max_partial_bytes,
            "max_pending_output": max_pending_output,
            "max_total_output": max_total_output,
        }
        for name, value in limits.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        timeouts = {
            "write_timeout": write_timeout,
            "auth_timeout": auth_timeout,
            "idle_timeout": idle_timeout,
        }
        for name, seconds in timeouts.items():
            if not seconds > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {seconds!r}")
        self.engine = engine
        self.allow_hard_delete = allow_hard_delete
        self.listeners: list[trio.abc.Listener[Any]] = []
        self._tokens = Tokens(token, client_token)
        self._auth_guard = AuthGuard(
            engine.metrics, wire="line", delay=auth_failure_delay, max_failures=max_auth_failures
        )
        self.accept_failures = AcceptFailures(log, "line protocol server")
        self._max_line = max_line
        self._max_connections = max_connections
        self._max_in_flight = max_in_flight
        self._subscriber_buffer = subscriber_buffer
        self._write_timeout = write_timeout
        self._auth_timeout = auth_timeout
        self._idle_timeout = idle_timeout
        self._max_unauthenticated = min(max_unauthenticated, max_connections)
        self._max_pending_output = max_pending_output
        self._partial = ByteBudget(max_partial_bytes)
        self._output = ByteBudget(max_total_output)
        # Oldest first: a new unauthenticated connection beyond the cap closes
        # the oldest, so idle sockets can neither fill the server nor keep a
        # client that authenticates promptly out.
        self._unauthenticated: dict[_Connection, None] = {}
        self._decoder = RequestDecoder(engine.app)
        self._encoder = ReplyEncoder()
        self._connections: set[_Connection] = set()
        self._no_connections = trio.Event()
        self._no_connections.set()
        self._stop_requested = trio.Event()
        self._stop_timeout = 10.0
        self._stopping = False
        self._accepted = 0
        self._refused = 0
        self._requests = 0
        self._errors = 0
        self._subscriptions = 0
        self._cut_off = 0
        self._timed_out = 0

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "serving"
        return (
            f"<Server {state} port={self.port} connections={len(self._connections)} "
            f"requests={self._requests}>"
        )

    @property
    def port(self) -> int:
        """The port of the first listener (0 before it listens)."""
        for listener in self.listeners:
            transport = getattr(listener, "transport_listener", listener)
            socket = getattr(transport, "socket", None)
            if socket is not None:
                return int(socket.getsockname()[1])
        return 0

    def statistics(self) -> ServerStatistics:
        """The server's counters, as a frozen snapshot."""
        return ServerStatistics(
            connections=len(self._connections),
            accepted=self._accepted,
            refused=self._refused,
            requests=self._requests,
            errors=self._errors,
            subscriptions=self._subscriptions,
            subscribers_cut_off=self._cut_off,
            timed_out=self._timed_out,
            pending_output=self._output.used,
            unfinished_lines=self._partial.used,
            accept_failures=self.accept_failures.total,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully; returns at once, :func:`serve_engine` returns when done.

        The listeners close (no new connections), every connection stops
        reading new requests and ends its subscriptions, the requests already
        read are answered (commands run to their Ack), and the connections
        close. Queries and reads still running after ``timeout`` seconds
        (e.g. waiting for a position with ``after``) are answered
        ``unavailable`` ("the server is shutting down"); whatever still runs
        a moment later is cancelled. Calling it again changes nothing.
        """
        if not self._stop_requested.is_set():
            self._stop_timeout = timeout
            self._stop_requested.set()

    # -- connections --------------------------------------------------------------

    async def _handle(self, stream: trio.abc.Stream) -> None:
        """One connection, from accept to close. Never raises (an exception
        here would cancel every other connection)."""
        try:
            if self._stopping or len(self._connections) >= self._max_connections:
                await self._refuse(stream)
                return
            connection = _Connection(self, stream)
            self._accepted += 1
            self._connections.add(connection)
            if len(self._connections) == 1:
                self._no_connections = trio.Event()
            if not connection.admitted:
                self._admit_later(connection)
            try:
                with connection.scope:
                    await connection.run()
                if connection.scope.cancelled_caught:
                    self._timed_out += 1
                    await connection.say_goodbye()
            finally:
                self._unauthenticated.pop(connection, None)
                self._connections.discard(connection)
                if not self._connections:
                    self._no_connections.set()
                await _close(stream, connection.peer_done)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the peer went away or stopped reading: nothing to tell it
        except Exception:
            log.exception("connection failed unexpectedly")

    def _admit_later(self, connection: _Connection) -> None:
        """Hold ``connection`` among the unauthenticated ones (closing the
        oldest beyond the cap) until it authenticates or its time is up."""
        if len(self._unauthenticated) >= self._max_unauthenticated:
            oldest = next(iter(self._unauthenticated))
            del self._unauthenticated[oldest]
            oldest.close_for(
                Overloaded(
                    f"closed for a newer connection: at most {self._max_unauthenticated} "
                    "connections may wait to authenticate"
                )
            )
        self._unauthenticated[connection] = None
        connection.scope.deadline = trio.current_time() + self._auth_timeout

    def _admitted(self, connection: _Connection) -> None:
        self._unauthenticated.pop(connection, None)

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        self._refused += 1
        refusal: MotetError
        if self._stopping:
            refusal = Unavailable("the server is shutting down")
        else:
            refusal = Overloaded(f"too many connections (max {self._max_connections})")
        with trio.move_on_after(5):
            await stream.send_all(self._encoder.exception(None, refusal))
        await _close(stream, peer_done=False)


async def _close(stream: trio.abc.Stream, peer_done: bool) -> None:
    """Close ``stream``; unless the peer already closed its side, first send
    EOF and discard what it still sends, briefly, so our last reply is read."""
    with trio.move_on_after(_LINGER * 2) as scope:
        scope.shield = True
        try:
            if not peer_done and isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
                with trio.move_on_after(_LINGER):
                    while await stream.receive_some(RECEIVE_SIZE):
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
        finally:
            await stream.aclose()


class _Connection:
    """The state of one client connection; see the module docstring."""

    def __init__(self, server: Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.engine = server.engine
        self.stream = stream
        # The access its token granted (see .access); None until it authenticates.
        self.access = server._tokens.open_scope
        self._auth_failures = 0
        self.handshaken = not isinstance(stream, trio.SSLStream)
        self.peer_done = False
        # Cancelled by the auth or idle deadline, or to make room (close_for).
        self.scope = trio.CancelScope()
        self._goodbye: MotetError | None = None
        self._busy = 0  # in-flight slots taken (requests and subscriptions)
        self._outbox = Outbox(server._max_pending_output, server._output)
        self._reader = LineReader(
            stream,
            server._max_line
            if self.authenticated
            else min(server._max_line, UNAUTHENTICATED_MAX_LINE),
            server._partial,
        )
        self._decoder = server._decoder
        self._encoder = server._encoder
        self._in_flight = trio.Semaphore(server._max_in_flight)
        self._read_scope = trio.CancelScope()
        self._subscriptions: dict[tuple[type, RequestId], _Subscription] = {}
        # Consumer-group memberships of this connection, by group name.
        self._memberships: dict[str, _Membership] = {}
        self._draining = False
        self._reading = trio.Lock()  # one store read at a time (see _execute)
        # One subscription of the connection catches up at a time: each holds
        # a batch of events read from the log while its lines wait.
        self._catching_up = trio.Lock()
        self._submitted = 0  # commands handed to the engine, not answered yet
        self._waiting: set[trio.CancelScope] = set()  # of the queries and reads running
        self._all_answered: trio.Event | None = None

    @property
    def authenticated(self) -> bool:
        """Whether the connection may send requests (it has a scope)."""
        return self.access is not None

    def __repr__(self) -> str:
        return (
            f"<Connection authenticated={self.authenticated} "
            f"subscriptions={len(self._subscriptions)} draining={self._draining}>"
        )

    @property
    def admitted(self) -> bool:
        """Whether the TLS handshake and the authentication (if needed) are done."""
        return self.authenticated and self.handshaken

    def close_for(self, reason: MotetError) -> None:
        """Close the connection at once, telling the peer ``reason`` if it can."""
        self._goodbye = reason
        self.scope.cancel()

    async def say_goodbye(self) -> None:
        """After :attr:`scope` was cancelled: one last line saying why, if the
        peer takes it at once."""
        if not self.handshaken:
            return
        reason = self._goodbye
        if reason is None:
            if self.admitted:
                reason = Unavailable(
                    f"closed after {self.server._idle_timeout:g} s with nothing in flight"
                )
            else:
                reason = Unauthorized(f"not authenticated within {self.server._auth_timeout:g} s")
        with trio.move_on_after(_LINGER) as scope:
            scope.shield = True
            with suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError
            ):
                await self.stream.send_all(self._encoder.exception(None, reason))

    def _idle(self) -> None:
        """Nothing in flight: the idle deadline starts now."""
        if self.admitted:
            self.scope.deadline = trio.current_time() + self.server._idle_timeout

    def _take_busy(self) -> None:
        self._busy += 1
        if self._busy == 1 and self.admitted:
            self.scope.deadline = math.inf

    def _release(self) -> None:
        """Give back an in-flight slot."""
        self._in_flight.release()
        self._busy -= 1
        if self._busy == 0:
            self._idle()

    def _on_admitted(self) -> None:
        self.server._admitted(self)
        self._reader.max_line = self.server._max_line
        if self._busy:
            self.scope.deadline = math.inf
        else:
            self._idle()

    def stop_waiting(self) -> None:
        """Answer the queries and reads still running (e.g. a query waiting
        for a position with ``after``) with ``unavailable`` at once."""
        for waiting in self._waiting:
            waiting.cancel()

    def drain(self) -> None:
        """Stop reading requests and end the subscriptions; the requests in
        flight still get their replies."""
        self._draining = True
        self._read_scope.cancel()
        for subscription in self._subscriptions.values():
            subscription.end(Unavailable("the server is shutting down"))
        for membership in self._memberships.values():
            membership.end(Unavailable("the server is shutting down"))

    async def run(self) -> None:
        try:
            if not self.handshaken:
                assert isinstance(self.stream, trio.SSLStream)
                await self.stream.do_handshake()
                self.handshaken = True
            if self.admitted:
                self._on_admitted()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, nursery.cancel_scope)
                try:
                    async with trio.open_nursery() as requests:
                        with self._read_scope:
                            await self._read_loop(requests.start_soon)
                        # The peer closed its side, sent too much, or the server
                        # stops: answer what was read, but subscriptions would
                        # never end.
                        for subscription in self._subscriptions.values():
                            subscription.end(None)
                        # The peer is gone: its unacked deliveries go to other members.
                        for membership in self._memberships.values():
                            membership.end(None)
                        await self._wait_submitted()
                finally:
                    self._outbox.close()
        finally:
            self._reader.close()
            self._outbox.discard()

    async def _write_loop(self, connection_scope: trio.CancelScope) -> None:
        """Write every reply line, batching those already waiting into one
        ``send_all``. If the peer is gone or does not read for
        ``write_timeout`` seconds, the whole connection is cancelled."""
        try:
            await write_outbox(self.stream, self._outbox, timeout=self.server._write_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            log.debug("connection lost while writing: %r", exc)
            self.peer_done = True
            connection_scope.cancel()
            self._outbox.discard()

    async def _read_loop(self, spawn: Callable[..., object]) -> None:
        reader = self._reader
        outbox = self._outbox
        while True:
            if not outbox.has_room():
                # Backpressure: no new requests while the replies wait.
                await outbox.wait_for_room()
            try:
                line = await reader.receive_line()
            except RequestTooLarge as exc:
                await self._too_large(exc)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                line = None
            if line is None:
                self.peer_done = True
                if reader.rest.strip():  # a last line without its newline
                    await self._dispatch(reader.rest, spawn)
                return
            admitted = self.admitted
            await self._dispatch(line, spawn)
            if self._read_scope.cancel_called:
                # Stopped by that line (e.g. too many wrong tokens): the lines
                # already buffered must not run, and a buffered line is
                # returned without a checkpoint that would raise Cancelled.
                return
            if self.admitted and not admitted:
                self._on_admitted()
            elif not self._busy:
                self._idle()  # a request was answered at once: not idle since

    async def _too_large(self, exc: RequestTooLarge) -> None:
        self.server._errors += 1
        if self.server._partial.has_room():
            message = f"the request line is longer than {self._reader.max_line} bytes"
        else:
            message = str(exc)
        await self._reply(self._encoder.exception(None, RequestTooLarge(message)))

    async def _reply(self, line: bytes) -> None:
        self._put(line)

    def _put(self, line: bytes) -> None:
        with suppress(trio.ClosedResourceError):  # the connection is gone, and the reply with it
            self._outbox.put(line)

    async def _dispatch(self, line: bytes, spawn: Callable[..., object]) -> None:
        """Answer the cheap requests at once, in order (so ``auth`` applies
        to the lines after it), and start a task for the others."""
        self.server._requests += 1
        try:
            request = self._decoder.decode_request(line)
        except BadRequest as exc:
            self.server._errors += 1
            request_id = exc.request_id if _id_fits(exc.request_id) else None
            await self._reply(self._encoder.exception(request_id, exc))
            return
        if not _id_fits(request.id):
            self.server._errors += 1
            too_long = BadRequest(f"the request id is longer than {MAX_REQUEST_ID} bytes")
            await self._reply(self._encoder.exception(None, too_long))
            return
        if isinstance(request, AuthOp):
            await self._authenticate(request)
            return
        if self.access != FULL:
            refusal: Unauthorized | None
            if self.access is None:
                refusal = Unauthorized('authenticate first: send {"op": "auth", "token": "..."}')
            else:
                refusal = scope_refusal(self.access, str(request.__struct_config__.tag))
            if refusal is not None:
                self.server._errors += 1
                await self._reply(self._encoder.exception(request.id, refusal))
                return
        if isinstance(request, PingOp):
            await self._reply(self._encoder.ok(request.id, "pong"))
        elif isinstance(request, StatusOp):
            try:
                line = self._encoder.ok(request.id, self.engine.status())
            except Exception as exc:
                line = self._failure(request.id, exc)
            await self._reply(line)
        elif isinstance(request, UnsubscribeOp):
            subscription = self._subscriptions.get(_key(request.subscription))
            if subscription is not None:
                subscription.end(None)
            await self._reply(self._encoder.ok(request.id, {"unsubscribed": bool(subscription)}))
        elif isinstance(request, SubscribeOp):
            key = _key(request.id)
            if key in self._subscriptions:
                self.server._errors += 1
                taken = BadRequest(
                    f"id {request.id!r} is already used by a live subscription on this connection"
                )
                await self._reply(self._encoder.exception(request.id, taken))
                return
            subscription = _Subscription(request)
            self._subscriptions[key] = subscription
            await self._take_slot()
            spawn(self._subscribe, subscription)
        elif isinstance(request, CommandOp):
            await self._take_slot()
            self._submit(request, spawn)
        elif isinstance(request, JoinOp):
            if request.group in self._memberships:
                self.server._errors += 1
                again = BadRequest(
                    f"this connection is already a member of group {request.group!r} "
                    f"(join request {self._memberships[request.group].request.id!r}); "
                    "leave it first"
                )
                await self._reply(self._encoder.exception(request.id, again))
                return
            membership = _Membership(request)
            self._memberships[request.group] = membership
            await self._take_slot()
            spawn(self._consume, membership)
        elif isinstance(request, (AckOp, NackOp, LeaveOp)):
            self._settle(request)
        else:
            await self._take_slot()
            spawn(self._run, request)

    def _membership(self, request: AckOp | NackOp | LeaveOp) -> _Membership:
        membership = self._memberships.get(request.group)
        if membership is None or membership.member is None:
            raise NotFound(
                f"this connection is not a member of group {request.group!r}: "
                'join it first ({"op": "join", "group": ...})'
            )
        return membership

    def _settle(self, request: AckOp | NackOp | LeaveOp) -> None:
        """Ack, nack or leave: answered at once, except an ack, answered once
        it is durable (without a task: acks come as fast as events)."""
        request_id = request.id
        try:
            membership = self._membership(request)
            member = membership.member
            assert member is not None
            if isinstance(request, NackOp):
                member.nack(request.position, request.error or "", retry_after=request.retry_after)
                self._put(self._encoder.ok(request_id, {"position": request.position}))
            elif isinstance(request, LeaveOp):
                membership.end(None)
                # Gone from this connection now, not when its task ends: a
                # join read next (even in the same write) starts a new member.
                del self._memberships[request.group]
                self._put(self._encoder.ok(request_id, {"member": member.id}))
            else:
                position = request.position

                def saved(error: BaseException | None) -> None:
                    if error is None:
                        self._put(self._encoder.ok(request_id, {"position": position}))
                    else:
                        assert isinstance(error, Exception)
                        self._put(self._failure(request_id, error))

                member.ack_nowait(position, saved)
        except Exception as exc:
            self._put(self._failure(request_id, exc))

    async def _consume(self, membership: _Membership) -> None:
        """Be a member of a consumer group for the peer: answer the join
        with the member id, then write each delivery as an event line (the
        member's prefetch bounds the lines in flight)."""
        request = membership.request
        outbox = self._outbox
        try:
            try:
                with membership.scope:
                    async with self.engine.consume(
                        request.group,
                        category=request.category,
                        types=request.types,
                        prefetch=DEFAULT_PREFETCH if request.prefetch is None else request.prefetch,
                    ) as member:
                        membership.member = member
                        self._put(self._encoder.ok(request.id, {"member": member.id}))
                        async for delivery in member:
                            await outbox.wait_for_room()
                            outbox.put(self._encoder.event(request.id, delivery.event))
                if membership.reason is not None:
                    self._put(self._encoder.exception(request.id, membership.reason))
            except trio.ClosedResourceError:
                pass  # the connection is gone
            except Exception as exc:
                self._put(self._failure(request.id, exc))
        finally:
            if self._memberships.get(request.group) is membership:
                del self._memberships[request.group]
            self._release()

    async def _authenticate(self, request: AuthOp) -> None:
        """Grant the token's scope, or answer a wrong token late (see
        :class:`~.access.AuthGuard`) and close the connection after too many."""
        server = self.server
        if self._read_scope.cancel_called:
            return  # closing after too many wrong tokens: lines already read go unanswered
        scope = server._tokens.scope_of(request.token.encode())
        if scope is not None:
            self.access = scope
            await self._reply(self._encoder.ok(request.id, True))
            return
        server._errors += 1
        self._auth_failures += 1
        # Waiting here holds back this connection's later lines too, so
        # pipelining guesses gains nothing.
        await server._auth_guard.failed(peer_name(self.stream))
        wrong = Unauthorized("the token is not valid")
        await self._reply(self._encoder.exception(request.id, wrong))
        if self._auth_failures >= server._auth_guard.max_failures:
            self._read_scope.cancel()

    async def _take_slot(self) -> None:
        """Take one of the connection's in-flight slots, waiting only at the
        cap: ``Semaphore.acquire`` always yields, which would cost a trip
        through the scheduler for every pipelined request."""
        try:
            self._in_flight.acquire_nowait()
        except trio.WouldBlock:
            await self._in_flight.acquire()
        self._take_busy()

    def _submit(self, request: CommandOp, spawn: Callable[..., object]) -> None:
        """Hand a command to the engine without a task of its own (the common
        request, so the cheap path): its reply is written when it finishes."""
        request_id = request.id
        self._submitted += 1

        def done(ack: Ack | None, error: BaseException | None) -> None:
            if error is None and ack is not None:
                line = self._encoder.ack(request_id, ack)
            else:
                assert isinstance(error, Exception)
                line = self._failure(request_id, error)
            self._put(line)
            self._release()
            self._submitted -= 1
            if self._submitted == 0 and self._all_answered is not None:
                self._all_answered.set()

        try:
            command = self._decoder.decode_command(request)
        except Exception as exc:
            self.engine.count_refused(request.type, exc)
            done(None, exc)
            return
        try:
            self.engine.submit(
                command,
                done,
                command_id=request.command_id,
                expected_version=request.expected_version,
                correlation_id=request.correlation_id,
                causation_id=request.causation_id,
            )
        except Exception as exc:
            done(None, exc)

    async def _wait_submitted(self) -> None:
        """Wait until every command handed to the engine has been answered."""
        while self._submitted:
            self._all_answered = trio.Event()
            await self._all_answered.wait()
        self._all_answered = None

    def _failure(self, request_id: RequestId, exc: Exception) -> bytes:
        self.server._errors += 1
        if code_for(exc) == "internal":
            log.error("request %r failed", request_id, exc_info=exc)
        return self._encoder.exception(request_id, exc)

    async def _run(
        self,
        request: QueryOp
        | ReadOp
        | DeleteStreamOp
        | ApplyRetentionOp
        | ForgetOp
        | ReplayOp
        | SkipOp,
    ) -> None:
        try:
            line: bytes | None = None
            with trio.CancelScope() as waiting:
                self._waiting.add(waiting)
                try:
                    line = await self._execute(request)
                except Exception as exc:
                    line = self._failure(request.id, exc)
                finally:
                    self._waiting.discard(waiting)
            if line is None:  # stopped by stop_waiting
                stopped = Unavailable(
                    "the server is shutting down and stopped waiting for this request; "
                    "retry it once the server is back (or on another node)"
                )
                line = self._failure(request.id, stopped)
            self._put(line)
        finally:
            self._release()

    async def _execute(
        self,
        request: QueryOp
        | ReadOp
        | DeleteStreamOp
        | ApplyRetentionOp
        | ForgetOp
        | ReplayOp
        | SkipOp,
    ) -> bytes:
        """Answer a query or a read (commands go through :meth:`_submit`).

        A reply is encoded only once the outbox has room, with no checkpoint
        between that and queueing it, so replies made at once cannot pile up
        beyond the outbox's limit by more than one. Reads also wait before
        reading, one at a time, since the events they read are large too."""
        engine = self.engine
        encoder = self._encoder
        outbox = self._outbox
        if isinstance(request, QueryOp):
            query = self._decoder.decode_query(request)
            timeout = DEFAULT_QUERY_TIMEOUT if request.timeout is None else request.timeout
            result = await engine.ask(query, after=request.after, timeout=timeout)
            await outbox.wait_for_room()
            return encoder.ok(request.id, result)
        if isinstance(request, DeleteStreamOp):
            if request.hard and not self.server.allow_hard_delete:
                raise hard_delete_refusal()
            record = await engine.delete_stream(request.stream, hard=request.hard)
            return encoder.deletion(request.id, request.stream, record)
        if isinstance(request, ApplyRetentionOp):
            return encoder.retention(request.id, await engine.apply_retention())
        if isinstance(request, ForgetOp):
            forgotten = await engine.forget(request.subject)
            await outbox.wait_for_room()
            return encoder.ok(request.id, forgotten)
        if isinstance(request, (ReplayOp, SkipOp)):
            group = engine.groups.get(request.group)
            if isinstance(request, ReplayOp):
                parked = await group.replay(request.position)
            else:
                parked = await group.skip(request.position)
            return encoder.ok(request.id, parked_status(parked))
        limit = DEFAULT_READ_LIMIT if request.limit is None else request.limit
        async with self._reading:
            await outbox.wait_for_room()
            if request.stream is None:
                if request.category is None and request.types is None:
                    raise _BadRequest(
                        "invalid read request: give a stream, or a category and/or types "
                        "to read the log by"
                    )
                events, scanned = await engine.read_filtered(
                    request.from_, limit, category=request.category, types=request.types
                )
                await outbox.wait_for_room()
                return encoder.read(request.id, events, request.from_, next_position=scanned)
            event_filter = EventFilter.of(request.category, request.types)
            events = await engine.read_stream(request.stream, request.from_, limit)
            deletion = await engine.stream_deletion(request.stream)
            if event_filter.everything:
                await outbox.wait_for_room()
                return encoder.read(request.id, events, request.from_, deletion)
            # next stays the last version read, so paging never stalls on a
            # page whose events were all filtered out.
            last = events[-1].version if events else request.from_
            events = [e for e in events if event_filter.matches(e.stream, e.type)]
            await outbox.wait_for_room()
            return encoder.read(request.id, events, request.from_, deletion, next_position=last)

    async def _subscribe(self, subscription: _Subscription) -> None:
        """Stream events to the client: the catch-up part as fast as it reads
        them, the live part without waiting. A live subscriber whose replies
        fill the outbox (or ``subscriber_buffer`` lines) is cut off with
        ``overloaded``."""
        request = subscription.request
        server = self.server
        server._subscriptions += 1
        outbox = self._outbox
        last = request.from_
        catching_up = self._catching_up
        holding = False
        # A filtered subscription may match nothing up to the head, so it
        # cannot tell when it is live: it never takes the connection's
        # catch-up turn (its batches are bounded all the same), and waits for
        # room in the outbox until an event it gets is at the head.
        filtered = request.category is not None or request.types is not None
        live = request.from_ >= self.engine.head_position

        def caught_up() -> None:
            # Everything up to the head was read, though the last event sent
            # may be below it (the newest events were removed on purpose).
            nonlocal live, holding
            live = True
            if holding:
                catching_up.release()
                holding = False

        try:
            try:
                with subscription.scope:
                    if not live and not filtered:
                        await catching_up.acquire()
                        holding = True
                    events = self.engine.subscribe(
                        request.from_,
                        batch_size=_SUBSCRIBE_BATCH,
                        on_caught_up=caught_up,
                        category=request.category,
                        types=request.types,
                    )
                    async with aclosing(events):  # type: ignore[type-var]
                        async for record in events:
                            if live:
                                if (
                                    not outbox.has_room()
                                    or len(outbox) >= server._subscriber_buffer
                                ):
                                    server._cut_off += 1
                                    subscription.end(
                                        Overloaded(
                                            f"subscription {request.id!r} was too slow: "
                                            f"{len(outbox)} lines ({outbox.pending} bytes) "
                                            "were waiting to be sent; resubscribe from "
                                            f"position {last}"
                                        )
                                    )
                                    break
                                outbox.put(self._encoder.event(request.id, record))
                            else:
                                await outbox.wait_for_room()
                                outbox.put(self._encoder.event(request.id, record))
                                live = record.position >= self.engine.head_position
                                if live and holding:
                                    catching_up.release()
                                    holding = False
                            last = record.position
                if subscription.reason is not None:
                    self._put(
                        self._encoder.exception(request.id, subscription.reason, position=last)
                    )
            except trio.ClosedResourceError:
                pass  # the connection is gone
            except Exception as exc:
                self._put(self._failure(request.id, exc))
        finally:
            if holding:
                catching_up.release()
            self._subscriptions.pop(_key(request.id), None)
            self._release()


class _Membership:
    """One consumer-group membership of a connection: its join request, its
    member once joined, and how to end it."""

    def __init__(self, request: JoinOp) -> None:
        self.request = request
        self.member: Any = None
        self.scope = trio.CancelScope()
        self.reason: MotetError | None = None

    def end(self, reason: MotetError | None) -> None:
        if not self.scope.cancel_called and self.reason is None:
            self.reason = reason
        self.scope.cancel()


class _Subscription:
    """One subscription of a connection: its request and how to end it."""

    def __init__(self, request: SubscribeOp) -> None:
        self.request = request
        self.scope = trio.CancelScope()
        # Why it ended, for its last reply; None: it ends silently.
        self.reason: MotetError | None = None

    def end(self, reason: MotetError | None) -> None:
        if not self.scope.cancel_called and self.reason is None:
            self.reason = reason
        self.scope.cancel()


def _id_fits(request_id: RequestId) -> bool:
    """Whether ``request_id`` is short enough to echo (:data:`MAX_REQUEST_ID`)."""
    return not isinstance(request_id, str) or len(request_id.encode()) <= MAX_REQUEST_ID


def _key(request_id: RequestId) -> tuple[type, RequestId]:
    # 1, 1.0 and True are equal in Python but different ids on the wire.
    return (type(request_id), request_id)


async def serve_engine(
    engine: Engine,
    host: str | None = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    token: str | None = None,
    client_token: str | None = None,
    auth_failure_delay: float = DEFAULT_AUTH_FAILURE_DELAY,
    max_auth_failures: int = DEFAULT_MAX_AUTH_FAILURES,
    ssl_context: Any = None,
    max_line: int = 1 << 20,
    max_connections: int = 1000,
    max_in_flight: int = 256,
    subscriber_buffer: int = 10_000,
    write_timeout: float = 60.0,
    auth_timeout: float = 10.0,
    idle_timeout: float = 300.0,
    max_unauthenticated: int = 100,
    max_partial_bytes: int = 64 << 20,
    max_pending_output: int = 4 << 20,
    max_total_output: int = 256 << 20,
    allow_hard_delete: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``engine`` over the TCP line protocol until :meth:`Server.stop`
    is called (then return) or the task is cancelled (then stop at once).

    Start it with ``server = await nursery.start(serve_engine, engine, host,
    port)``: the :class:`Server` is reported once the listeners are bound
    (``server.port`` is the real port when ``port`` is 0).

    ``token``: every connection must first send ``{"op": "auth", "token":
    ...}``; until then each request gets ``unauthorized``. ``client_token``:
    a second token that allows only ``command``, ``query``, ``status`` and
    ``ping`` (see :mod:`motet.engine.net.access`; the other ops answer
    ``unauthorized`` naming the scope they need). A wrong token is answered
    after ``auth_failure_delay`` seconds, counted in
    ``motet_auth_failures_total`` and logged; ``max_auth_failures`` wrong
    tokens close the connection. ``ssl_context``
    (an ``ssl.SSLContext``): serve TLS. ``max_line``: longest request line in
    bytes; a longer one gets ``too_large`` and its connection closes.
    ``max_connections``: beyond it, new connections get one ``overloaded``
    line and are closed. ``max_in_flight``: requests (subscriptions included)
    one connection may have running; reading pauses at the cap.
    ``subscriber_buffer``: reply lines a connection may have waiting; a live
    subscription that would exceed it ends with ``overloaded``.
    ``write_timeout``: a connection whose peer accepts no data for that long
    is closed.

    ``auth_timeout`` (10 s): a connection must finish its TLS handshake and,
    with a token, authenticate within it, or is closed; before it
    authenticated its lines may be :data:`UNAUTHENTICATED_MAX_LINE` bytes.
    ``max_unauthenticated`` (100, at most ``max_connections``): connections
    that have not yet done so; a new one beyond it closes the oldest, so idle
    sockets never keep authenticated clients out. ``idle_timeout`` (300 s): a
    connection with nothing in flight (no request running, no subscription)
    for that long is closed. ``max_partial_bytes`` (64 MiB): unfinished request
    lines all connections may hold together; a connection whose bytes take it
    over gets ``too_large`` and is closed. ``max_pending_output`` (4 MiB):
    bytes of replies one connection may have waiting; at it the connection's
    requests are no longer read, catch-up subscriptions and replies wait, and
    a live subscription is cut off. ``max_total_output`` (256 MiB): the same
    across all connections. A request ``id`` longer than
    :data:`MAX_REQUEST_ID` bytes gets ``bad_request``.

    ``allow_hard_delete``: ``delete_stream`` with ``"hard": true`` removes
    the stream's events; without it such a request answers ``unauthorized``
    (a soft delete, a tombstone, needs no opt-in).

    Raises ``OSError`` when the address cannot be bound and ``ValueError``
    for invalid limits.
    """
    server = Server(
        engine,
        token=token,
        client_token=client_token,
        auth_failure_delay=auth_failure_delay,
        max_auth_failures=max_auth_failures,
        max_line=max_line,
        max_connections=max_connections,
        max_in_flight=max_in_flight,
        subscriber_buffer=subscriber_buffer,
        write_timeout=write_timeout,
        auth_timeout=auth_timeout,
        idle_timeout=idle_timeout,
        max_unauthenticated=max_unauthenticated,
        max_partial_bytes=max_partial_bytes,
        max_pending_output=max_pending_output,
        max_total_output=max_total_output,
        allow_hard_delete=allow_hard_delete,
    )
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            listeners = await open_listeners(host, port, ssl_context)
            server.listeners = await accepting.start(
                partial(
                    serve_listeners,
                    server._handle,
                    listeners,
                    handler_nursery=connections,
                    failures=server.accept_failures,
                )
            )
            task_status.started(server)
            await server._stop_requested.wait()
            server._stopping = True
            accepting.cancel_scope.cancel()
        log.info("server stopping: %d connection(s) to drain", len(server._connections))
        for connection in list(server._connections):
            connection.drain()
        with trio.move_on_after(server._stop_timeout):
            await server._no_connections.wait()
        if server._connections:
            # Time is up. A query waiting for a position (``after``) may wait
            # long: it is answered "unavailable" rather than cut off unanswered.
            for connection in list(server._connections):
                connection.stop_waiting()
            with trio.move_on_after(_LINGER):
                await server._no_connections.wait()
        connections.cancel_scope.cancel()


@asynccontextmanager
async def open_server(
    engine: Engine,
    host: str | None = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    stop_timeout: float = 10.0,
    **options: Any,
) -> AsyncIterator[Server]:
    """Run :func:`serve_engine` (with ``options``) for the duration of the
    block and yield its :class:`Server`. Leaving the block normally stops the
    server gracefully (see :meth:`Server.stop`); leaving it with an exception
    cancels the server at once."""
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve_engine, engine, host, port, **options))
        try:
            yield server
        except BaseException:
            nursery.cancel_scope.cancel()
            raise
        server.stop(stop_timeout)
