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
task fed through a bounded channel. Nothing a client sends can stop the server
or disturb another connection: every bad line gets an error reply, a line over
``max_line`` bytes gets ``too_large`` and closes that connection only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from functools import partial
from typing import Any

import msgspec
import trio

from motet.storage.errors import MotetError, Overloaded, Unavailable
from motet.storage.records import Ack

from ..core import Engine
from .access import (
    DEFAULT_AUTH_FAILURE_DELAY,
    DEFAULT_MAX_AUTH_FAILURES,
    FULL,
    AuthGuard,
    Tokens,
    peer_name,
    scope_refusal,
)
from .framing import RECEIVE_SIZE, LineReader, write_lines
from .protocol import (
    DEFAULT_PORT,
    DEFAULT_QUERY_TIMEOUT,
    DEFAULT_READ_LIMIT,
    AuthOp,
    BadRequest,
    CommandOp,
    PingOp,
    QueryOp,
    ReadOp,
    ReplyEncoder,
    RequestDecoder,
    RequestId,
    RequestTooLarge,
    StatusOp,
    SubscribeOp,
    Unauthorized,
    UnsubscribeOp,
    code_for,
)

__all__ = ["DEFAULT_PORT", "Server", "ServerStatistics", "open_server", "serve_engine"]

log = logging.getLogger("motet.server")

# How long a closing connection keeps reading (and discarding) what the peer
# still sends, so the peer reads our last reply instead of a reset.
_LINGER = 1.0


class ServerStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the server's counters (see :meth:`Server.statistics`)."""

    connections: int
    accepted: int
    refused: int
    requests: int
    errors: int
    subscriptions: int
    subscribers_cut_off: int


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
    ) -> None:
        if max_line < 1 or max_connections < 1 or max_in_flight < 1 or subscriber_buffer < 1:
            raise ValueError(
                "max_line, max_connections, max_in_flight and subscriber_buffer must be >= 1, "
                f"got {max_line}, {max_connections}, {max_in_flight}, {subscriber_buffer}"
            )
        if not write_timeout > 0:
            raise ValueError(f"write_timeout must be > 0 seconds, got {write_timeout!r}")
        self.engine = engine
        self.listeners: list[trio.abc.Listener[Any]] = []
        self._tokens = Tokens(token, client_token)
        self._auth_guard = AuthGuard(
            engine.metrics, wire="line", delay=auth_failure_delay, max_failures=max_auth_failures
        )
        self._max_line = max_line
        self._max_connections = max_connections
        self._max_in_flight = max_in_flight
        self._subscriber_buffer = subscriber_buffer
        self._write_timeout = write_timeout
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
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully; returns at once, :func:`serve_engine` returns when done.

        The listeners close (no new connections), every connection stops
        reading new requests and ends its subscriptions, the requests already
        read are answered (commands run to their Ack), and the connections
        close. Whatever is still running after ``timeout`` seconds is
        cancelled. Calling it again changes nothing.
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
            try:
                await connection.run()
            finally:
                self._connections.discard(connection)
                if not self._connections:
                    self._no_connections.set()
                await _close(stream, connection.peer_done)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the peer went away or stopped reading: nothing to tell it
        except Exception:
            log.exception("connection failed unexpectedly")

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
        # The scope its token granted (see .access); None until it authenticates.
        self.scope = server._tokens.open_scope
        self._auth_failures = 0
        self.peer_done = False
        self._decoder = server._decoder
        self._encoder = server._encoder
        self._in_flight = trio.Semaphore(server._max_in_flight)
        self._read_scope = trio.CancelScope()
        self._subscriptions: dict[tuple[type, RequestId], _Subscription] = {}
        self._draining = False
        self._send: trio.MemorySendChannel[bytes] | None = None
        self._submitted = 0  # commands handed to the engine, not answered yet
        self._all_answered: trio.Event | None = None

    @property
    def authenticated(self) -> bool:
        """Whether the connection may send requests (it has a scope)."""
        return self.scope is not None

    def __repr__(self) -> str:
        return (
            f"<Connection authenticated={self.authenticated} "
            f"subscriptions={len(self._subscriptions)} draining={self._draining}>"
        )

    def drain(self) -> None:
        """Stop reading requests and end the subscriptions; the requests in
        flight still get their replies."""
        self._draining = True
        self._read_scope.cancel()
        for subscription in self._subscriptions.values():
            subscription.end(Unavailable("the server is shutting down"))

    async def run(self) -> None:
        send, receive = trio.open_memory_channel[bytes](self.server._subscriber_buffer)
        self._send = send
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop, receive, nursery.cancel_scope)
            async with send, trio.open_nursery() as requests:
                with self._read_scope:
                    await self._read_loop(requests.start_soon)
                # The peer closed its side, sent too much, or the server stops:
                # answer what was read, but subscriptions would never end.
                for subscription in self._subscriptions.values():
                    subscription.end(None)
                await self._wait_submitted()

    async def _write_loop(
        self, receive: trio.MemoryReceiveChannel[bytes], connection_scope: trio.CancelScope
    ) -> None:
        """Write every reply line, batching those already waiting into one
        ``send_all``. If the peer is gone or does not read for
        ``write_timeout`` seconds, the whole connection is cancelled."""
        async with receive:
            try:
                await write_lines(self.stream, receive, timeout=self.server._write_timeout)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                log.debug("connection lost while writing: %r", exc)
                self.peer_done = True
                # Before the channel closes, so that tasks blocked sending to it
                # are cancelled rather than told the channel broke.
                connection_scope.cancel()

    async def _read_loop(self, spawn: Callable[..., object]) -> None:
        reader = LineReader(self.stream, self.server._max_line)
        while True:
            try:
                line = await reader.receive_line()
            except RequestTooLarge:
                await self._too_large()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                line = None
            if line is None:
                self.peer_done = True
                if reader.rest.strip():  # a last line without its newline
                    await self._dispatch(reader.rest, spawn)
                return
            await self._dispatch(line, spawn)

    async def _too_large(self) -> None:
        self.server._errors += 1
        message = f"the request line is longer than {self.server._max_line} bytes"
        await self._reply(self._encoder.exception(None, RequestTooLarge(message)))

    async def _reply(self, line: bytes) -> None:
        assert self._send is not None
        await self._send.send(line)

    async def _dispatch(self, line: bytes, spawn: Callable[..., object]) -> None:
        """Answer the cheap requests at once, in order (so ``auth`` applies
        to the lines after it), and start a task for the others."""
        self.server._requests += 1
        try:
            request = self._decoder.decode_request(line)
        except BadRequest as exc:
            self.server._errors += 1
            await self._reply(self._encoder.exception(exc.request_id, exc))
            return
        if isinstance(request, AuthOp):
            await self._authenticate(request)
            return
        if self.scope != FULL:
            refusal: Unauthorized | None
            if self.scope is None:
                refusal = Unauthorized('authenticate first: send {"op": "auth", "token": "..."}')
            else:
                refusal = scope_refusal(self.scope, str(request.__struct_config__.tag))
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
        else:
            await self._take_slot()
            spawn(self._run, request)

    async def _authenticate(self, request: AuthOp) -> None:
        """Grant the token's scope, or answer a wrong token late (see
        :class:`~.access.AuthGuard`) and close the connection after too many."""
        server = self.server
        if self._read_scope.cancel_called:
            return  # closing after too many wrong tokens: lines already read go unanswered
        scope = server._tokens.scope_of(request.token.encode())
        if scope is not None:
            self.scope = scope
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
            self._in_flight.release()
            self._submitted -= 1
            if self._submitted == 0 and self._all_answered is not None:
                self._all_answered.set()
            assert self._send is not None
            try:
                self._send.send_nowait(line)
            except trio.WouldBlock:  # subscriptions filled the buffer: wait in a task
                spawn(self._reply, line)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the connection is gone, and the reply with it

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

    async def _run(self, request: QueryOp | ReadOp) -> None:
        try:
            try:
                line = await self._execute(request)
            except Exception as exc:
                line = self._failure(request.id, exc)
            await self._reply(line)
        finally:
            self._in_flight.release()

    async def _execute(self, request: QueryOp | ReadOp) -> bytes:
        """Answer a query or a read (commands go through :meth:`_submit`)."""
        engine = self.engine
        encoder = self._encoder
        if isinstance(request, QueryOp):
            query = self._decoder.decode_query(request)
            timeout = DEFAULT_QUERY_TIMEOUT if request.timeout is None else request.timeout
            result = await engine.ask(query, after=request.after, timeout=timeout)
            return encoder.ok(request.id, result)
        limit = DEFAULT_READ_LIMIT if request.limit is None else request.limit
        events = await engine.read_stream(request.stream, request.from_, limit)
        return encoder.read(request.id, events, request.from_)

    async def _subscribe(self, subscription: _Subscription) -> None:
        """Stream events to the client: the catch-up part as fast as it reads
        them, the live part without waiting. A live subscriber that lets
        ``subscriber_buffer`` lines pile up is cut off with ``overloaded``."""
        request = subscription.request
        server = self.server
        server._subscriptions += 1
        assert self._send is not None
        send = self._send
        last = request.from_
        try:
            try:
                live = False
                with subscription.scope:
                    events = self.engine.subscribe(request.from_)
                    async with aclosing(events):  # type: ignore[type-var]
                        async for record in events:
                            line = self._encoder.event(request.id, record)
                            if live:
                                try:
                                    send.send_nowait(line)
                                except trio.WouldBlock:
                                    server._cut_off += 1
                                    subscription.end(
                                        Overloaded(
                                            f"subscription {request.id!r} was too slow: "
                                            f"{server._subscriber_buffer} lines were waiting "
                                            f"to be sent; resubscribe from position {last}"
                                        )
                                    )
                                    break
                            else:
                                await send.send(line)
                                live = record.position >= self.engine.head_position
                            last = record.position
                if subscription.reason is not None:
                    await send.send(
                        self._encoder.exception(request.id, subscription.reason, position=last)
                    )
            except Exception as exc:
                await send.send(self._failure(request.id, exc))
        finally:
            self._subscriptions.pop(_key(request.id), None)
            self._in_flight.release()


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
    is closed. Raises ``OSError`` when the address cannot be bound and
    ``ValueError`` for invalid limits.
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
    )
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            serve: Callable[..., Awaitable[object]]
            if ssl_context is None:
                serve = partial(
                    trio.serve_tcp,
                    server._handle,
                    port,
                    host=host,
                    handler_nursery=connections,
                )
            else:
                serve = partial(
                    trio.serve_ssl_over_tcp,
                    server._handle,
                    port,
                    ssl_context,
                    host=host,
                    handler_nursery=connections,
                )
            server.listeners = await accepting.start(serve)
            task_status.started(server)
            await server._stop_requested.wait()
            server._stopping = True
            accepting.cancel_scope.cancel()
        log.info("server stopping: %d connection(s) to drain", len(server._connections))
        for connection in list(server._connections):
            connection.drain()
        with trio.move_on_after(server._stop_timeout):
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
