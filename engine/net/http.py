"""The HTTP/JSON API and the admin page, on trio beside the line protocol.

Routes (see docs/design.md, "HTTP API"; every JSON body is the line protocol's
reply ``result`` for the same request, so both wires send the same JSON):

- ``POST /commands/{Type}``: the body is the command's data; headers
  ``Idempotency-Key`` (the command id), ``If-Match`` (the expected stream
  version, ``3`` or ``"3"``), ``Correlation-Id`` and ``Causation-Id`` →
  ``{"stream", "version", "position"}``, with ``ETag: "<version>"``;
- ``POST /queries/{Type}`` (body = the query's data) and
  ``GET /queries/{Type}?field=value`` (each value read as the field's type),
  both with optional ``after`` and ``timeout`` parameters → the result;
- ``GET /streams/{stream}?from=&limit=`` → ``{"events": [...], "next": n}``
  (and ``"deleted": true`` for a deleted stream);
- ``DELETE /streams/{stream}?hard=`` → the deletion record, as the line
  protocol's ``delete_stream`` (``hard=true`` needs ``allow_hard_delete``);
- ``GET /events?from=`` → Server-Sent Events, catch-up then live: ``id:`` is
  the event's position, ``data:`` the event as the line protocol sends it; a
  ``Last-Event-ID`` header resumes after that position. A stream that ends
  (the server stops) ends with ``event: error`` whose data is the error
  object with ``position``, the last event delivered;
- ``GET /status`` (the engine's status), ``GET /metrics`` (Prometheus text
  from the engine's own registry), ``GET /openapi.json`` (generated from the
  app's msgspec types, see :mod:`motet.engine.net.openapi`);
- ``POST /forget/{subject}``: erase a data subject's personal data (the
  line protocol's ``forget``; full-access token only) → ``{"subject",
  "stream", "position", "key_deleted", "already_forgotten"}``;
- ``GET /projections`` and ``GET /projections/{name}``: each projection's
  status and whether it is paused; ``POST /projections/{name}/{action}`` with
  ``action`` one of ``pause``, ``resume``, ``retry``, ``skip``, ``rebuild``
  → that projection's status after the action;
- ``GET /`` and ``GET /admin/{file}``: the admin page (static files shipped in
  the package; no build step, nothing fetched from elsewhere).

Failures answer ``{"error": {"code", "message", ...}}`` (the line protocol's
error object) with the HTTP status of the error's row in the one error table
(:mod:`motet.storage.errors`).
A request to a known path with the wrong method answers 405 (code
``bad_request``) with an ``Allow`` header.

With a ``token``, every route but the admin page's static files needs
``Authorization: Bearer <token>`` (compared in constant time); the page asks
for the token and sends it with each of its requests. A ``client_token``
opens only the routes of the client scope (:mod:`motet.engine.net.access`):
not ``/streams``, ``/events``, ``/forget`` or the projection controls. A
``metrics_token`` opens ``/metrics`` alone (the token a Prometheus server
keeps). A wrong token is answered late and closes its connection.

A metrics-only server (``metrics_only``, the engine's metrics port) serves
``GET /metrics`` alone: open without tokens, else it needs the full-access
token or the metrics token (a missing or wrong one answers 401).

HTTP/1.1 is parsed by h11 (the sans-I/O parser under hypercorn and httpcore),
driven by :mod:`motet.engine.net.http_connection` with one trio task per
connection, so TLS, the connection cap and the command path are the line
protocol server's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

import msgspec
import trio

from motet.storage.errors import NotFound, UnknownMessageType, error_for_code, http_status_of

from ..core import Engine
from .access import (
    DEFAULT_AUTH_FAILURE_DELAY,
    FULL,
    METRICS_OP,
    AuthGuard,
    ScopeRefused,
    Tokens,
    hard_delete_refusal,
    scope_refusal,
)
from .http_connection import EventStream, HttpConnection, Response, close_stream
from .listening import AcceptFailures, open_listeners, serve_listeners
from .openapi import openapi_document
from .protocol import (
    DEFAULT_QUERY_TIMEOUT,
    DEFAULT_READ_LIMIT,
    BadRequest,
    CommandOp,
    DeleteStreamOp,
    ErrorBody,
    QueryOp,
    ReadOp,
    ReplyEncoder,
    RequestDecoder,
    SubscribeOp,
    Unauthorized,
    code_for,
)

__all__ = [
    "DEFAULT_HTTP_PORT",
    "HttpServer",
    "HttpStatistics",
    "open_http_server",
    "serve_http",
]

log = logging.getLogger("motet.http")

DEFAULT_HTTP_PORT: Final = 8707
"""The port ``motet serve --http-port`` is documented with."""

_PROJECTION_ACTIONS: Final = ("pause", "resume", "retry", "skip", "rebuild")
# The first path segment of a route and the line-protocol op it mirrors; any
# other route (status, metrics, openapi.json, unknown ones) reads as "status".
_ROUTE_OPS: Final = {
    "commands": "command",
    "queries": "query",
    "streams": "read",
    "events": "subscribe",
    "metrics": METRICS_OP,
    "forget": "forget",
}
_STATIC: Final = {
    "index.html": b"text/html; charset=utf-8",
    "admin.js": b"text/javascript; charset=utf-8",
    "admin.css": b"text/css; charset=utf-8",
}


class HttpStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the HTTP server's counters (see :meth:`HttpServer.statistics`)."""

    connections: int
    accepted: int
    refused: int
    requests: int
    errors: int
    event_streams: int
    accept_failures: int = 0
    """Accepts that failed for want of resources (e.g. out of file descriptors)."""


class _MethodNotAllowed(BadRequest):
    """A known path asked with a method it does not serve (405)."""

    def __init__(self, method: str, path: str, allow: tuple[str, ...]) -> None:
        super().__init__(f"{method} is not allowed on {path}; use {' or '.join(allow)}")
        self.allow = allow


class _WrongToken(Unauthorized):
    """A bearer token no scope has: answered late, and the connection closes."""


class _Unwrapped(msgspec.Struct):
    """A line protocol reply with its envelope removed: the parts stay raw."""

    result: msgspec.Raw = msgspec.Raw(b"null")
    error: msgspec.Raw = msgspec.Raw(b"null")
    event: msgspec.Raw = msgspec.Raw(b"null")


class HttpServer:
    """A running HTTP server, as :func:`serve_http` reports it to ``nursery.start``.

    ``port`` is the bound port (useful with port 0); :meth:`stop` ends
    :func:`serve_http` gracefully.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        token: str | None,
        client_token: str | None = None,
        metrics_token: str | None = None,
        auth_failure_delay: float = DEFAULT_AUTH_FAILURE_DELAY,
        max_body: int,
        max_head: int,
        max_connections: int,
        keep_alive_timeout: float,
        request_timeout: float,
        write_timeout: float,
        heartbeat: float,
        metrics_only: bool = False,
        allow_hard_delete: bool = False,
    ) -> None:
        if max_body < 1 or max_head < 1 or max_connections < 1:
            raise ValueError(
                "max_body, max_head and max_connections must be >= 1, "
                f"got {max_body}, {max_head}, {max_connections}"
            )
        for name, value in (
            ("keep_alive_timeout", keep_alive_timeout),
            ("request_timeout", request_timeout),
            ("write_timeout", write_timeout),
            ("heartbeat", heartbeat),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        self.engine = engine
        self.listeners: list[trio.abc.Listener[Any]] = []
        # The metrics port takes the full-access and the metrics token only.
        self._tokens = Tokens(token, None if metrics_only else client_token, metrics_token)
        # One wrong token per connection: each guess costs a new connection too.
        self._auth_guard = AuthGuard(
            engine.metrics, wire="HTTP", delay=auth_failure_delay, max_failures=1
        )
        self._max_body = max_body
        self._max_head = max_head
        self._max_connections = max_connections
        self._keep_alive_timeout = keep_alive_timeout
        self._request_timeout = request_timeout
        self._write_timeout = write_timeout
        self._heartbeat = heartbeat
        self.metrics_only = metrics_only
        self.accept_failures = AcceptFailures(
            log, "metrics port" if metrics_only else "HTTP server"
        )
        self.allow_hard_delete = allow_hard_delete
        self._decoder = RequestDecoder(engine.app)
        self._encoder = ReplyEncoder()
        self._json = msgspec.json.Encoder()
        self._unwrap = msgspec.json.Decoder(_Unwrapped)
        self._query_types = engine.app.query_types()
        self._string_fields = {tag: _string_fields(cls) for tag, cls in self._query_types.items()}
        self._openapi = self._json.encode(openapi_document(engine.app))
        self._static = _load_static()
        self._connections: set[HttpConnection] = set()
        self._no_connections = trio.Event()
        self._no_connections.set()
        self._stop_requested = trio.Event()
        self._stop_timeout = 10.0
        self.stopping = False
        self._accepted = 0
        self._refused = 0
        self._refusing = 0
        self._requests = 0
        self._errors = 0
        self._event_streams = 0

    def __repr__(self) -> str:
        state = "stopping" if self.stopping else "serving"
        return (
            f"<HttpServer {state} port={self.port} connections={len(self._connections)} "
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

    def statistics(self) -> HttpStatistics:
        """The server's counters, as a frozen snapshot."""
        return HttpStatistics(
            connections=len(self._connections),
            accepted=self._accepted,
            refused=self._refused,
            requests=self._requests,
            errors=self._errors,
            event_streams=self._event_streams,
            accept_failures=self.accept_failures.total,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully; returns at once, :func:`serve_http` returns when done.

        The listeners close, idle keep-alive connections close, event streams
        end with an ``error`` event, requests being answered finish (with
        ``Connection: close``); a request still being answered after
        ``timeout`` seconds (e.g. a query waiting with ``after``) gets 503
        ``unavailable``, and whatever still runs a moment later is
        cancelled. Calling it again changes nothing.
        """
        if not self._stop_requested.is_set():
            self._stop_timeout = timeout
            self._stop_requested.set()

    # -- connections ---------------------------------------------------------------

    async def _handle(self, stream: trio.abc.Stream) -> None:
        """One connection, from accept to close. Never raises (an exception
        here would cancel every other connection)."""
        try:
            refusal = None
            if self.stopping:
                refusal = ("unavailable", "the server is shutting down")
            elif len(self._connections) >= self._max_connections:
                refusal = ("overloaded", f"too many connections (max {self._max_connections})")
            connection = HttpConnection(self, stream)
            if refusal is not None:
                self._refused += 1
                if self._refusing >= self._max_connections:
                    # Refusals wait for a request to answer: past the cap of
                    # those too, a socket is closed unanswered, so a flood
                    # holds at most twice max_connections descriptors.
                    await stream.aclose()
                    return
                self._refusing += 1
                try:
                    await connection.refuse(*refusal)
                finally:
                    self._refusing -= 1
                return
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
                await close_stream(stream, connection.peer_done)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the peer went away or stopped reading: nothing to tell it
        except Exception:
            log.exception("HTTP connection failed unexpectedly")

    async def _scope(self, headers: Mapping[bytes, bytes]) -> str:
        """The scope the request's bearer token grants; raises
        :class:`Unauthorized` without one, and late for a wrong one (see
        :class:`~.access.AuthGuard`)."""
        if not self._tokens.required:
            return FULL
        given = headers.get(b"authorization")
        if given is None:
            if self.metrics_only:
                raise Unauthorized(
                    "/metrics needs the token or the metrics token: "
                    "send it as 'Authorization: Bearer <token>'"
                )
            raise Unauthorized("send the token as 'Authorization: Bearer <token>'")
        scheme, _, credentials = given.partition(b" ")
        scope = None
        if scheme.lower() == b"bearer":
            scope = self._tokens.scope_of(credentials.strip())
        if scope is None:
            await self._auth_guard.failed("an HTTP client")
            raise _WrongToken("the token is not valid; send it as 'Authorization: Bearer <token>'")
        return scope

    # -- replies -------------------------------------------------------------------

    def _result(self, line: bytes) -> bytes:
        """The ``result`` of a line protocol reply line, as raw JSON."""
        return bytes(self._unwrap.decode(line).result)

    def status_of(self, code: str) -> int:
        """The HTTP status that answers the wire error ``code``."""
        error = error_for_code(code)
        return 500 if error is None else error.http_status

    def ok(self, result: Any) -> Response:
        """A 200 answer whose body is ``result`` as the line protocol encodes it."""
        return Response(self._result(self._encoder.ok(None, result)))

    def failure(self, error: BaseException) -> Response:
        """The error answer for ``error``: the line protocol's error object,
        with the status of its wire code."""
        self._errors += 1
        code = code_for(error)
        if code == "internal":
            log.error("HTTP request failed", exc_info=error)
        unwrapped = self._unwrap.decode(self._encoder.exception(None, error))
        body = b'{"error":' + bytes(unwrapped.error) + b"}"
        headers: tuple[tuple[bytes, bytes], ...] = ()
        status = http_status_of(error)
        if isinstance(error, _MethodNotAllowed):
            status = 405
            headers = ((b"allow", ", ".join(error.allow).encode()),)
        elif isinstance(error, ScopeRefused):
            challenge = f'Bearer realm="motet", error="insufficient_scope", scope="{error.needed}"'
            headers = ((b"www-authenticate", challenge.encode()),)
        elif isinstance(error, _WrongToken):
            headers = (
                (b"www-authenticate", b'Bearer realm="motet", error="invalid_token"'),
                (b"connection", b"close"),
            )
        elif code == "unauthorized":
            headers = ((b"www-authenticate", b'Bearer realm="motet"'),)
        elif code == "overloaded":
            headers = ((b"retry-after", b"1"),)
        return Response(body, status=status, headers=headers)

    def error_event(self, error: BaseException | None, position: int) -> bytes:
        """The error object that ends an event stream (raw JSON) with
        ``position``, the last event sent: the server stops (``error`` is
        ``None``) or ``error`` ended it (counted and logged as a failure)."""
        if error is None:
            line = self._encoder.error(
                None,
                "unavailable",
                "the server is shutting down",
                position=position,
            )
            return bytes(self._unwrap.decode(line).error)
        self.failure(error)
        body = msgspec.json.decode(
            self._unwrap.decode(self._encoder.exception(None, error)).error, type=ErrorBody
        )
        return self._json.encode(msgspec.structs.replace(body, position=position))

    def event_data(self, record: Any) -> bytes:
        """One event as the line protocol's subscriptions send it (raw JSON)."""
        return bytes(self._unwrap.decode(self._encoder.event(None, record)).event)

    # -- routes --------------------------------------------------------------------

    async def route(
        self, method: str, target: bytes, headers: Mapping[bytes, bytes], body: bytes
    ) -> Response | EventStream:
        """Answer one request (raises what :meth:`failure` reports)."""
        path_bytes, _, query_bytes = target.partition(b"?")
        path = path_bytes.decode("latin-1")
        if self.metrics_only:
            # A port for Prometheus alone: no API, no page.
            if path != "/metrics":
                raise NotFound(f"no route {path!r}: this port serves only /metrics")
            _allow(method, path, "GET")
            await self._scope(headers)
            return self._metrics()
        if path == "/" or path.startswith("/admin/"):
            _allow(method, path, "GET")
            name = "index.html" if path == "/" else path[len("/admin/") :]
            if name not in self._static:
                raise NotFound(f"no admin file {name!r}")
            return Response(self._static[name], content_type=_STATIC[name])
        scope = await self._scope(headers)
        params = _params(query_bytes)
        first, _, rest = path[1:].partition("/")
        if scope != FULL:
            refused = scope_refusal(scope, _op_of(method, first, rest))
            if refused is not None:
                raise refused
        if first == "commands" and rest:
            _allow(method, path, "POST")
            return await self._command(_segment(rest), headers, body, params)
        if first == "queries" and rest:
            _allow(method, path, "GET", "POST")
            return await self._query(_segment(rest), method, body, params)
        if first == "streams" and rest:
            _allow(method, path, "GET", "DELETE")
            if method == "DELETE":
                return await self._delete(_segment(rest), params)
            return await self._read(_segment(rest), params)
        if first == "forget" and rest:
            _allow(method, path, "POST")
            _no_params(params)
            return self.ok(await self.engine.forget(_segment(rest)))
        if first == "projections":
            return await self._projections(method, path, rest, params)
        if rest:
            raise NotFound(f"no route {path!r}")
        if first == "events":
            _allow(method, path, "GET")
            return self._events(headers, params)
        if first == "status":
            _allow(method, path, "GET")
            _no_params(params)
            return self.ok(self.engine.status())
        if first == "metrics":
            _allow(method, path, "GET")
            return self._metrics()
        if first == "openapi.json":
            _allow(method, path, "GET")
            return Response(self._openapi)
        raise NotFound(f"no route {path!r}; see /openapi.json")

    async def _command(
        self, type_: str, headers: Mapping[bytes, bytes], body: bytes, params: dict[str, str]
    ) -> Response:
        _no_params(params)
        expected_version = _if_match(headers.get(b"if-match"))
        op = CommandOp(
            type=type_,
            data=msgspec.Raw(body or b"{}"),
            command_id=_header_text(headers, b"idempotency-key"),
            expected_version=expected_version,
        )
        try:
            command = self._decoder.decode_command(op)
        except Exception as exc:
            self.engine.count_refused(type_, exc)
            raise
        ack = await self.engine.send(
            command,
            command_id=op.command_id,
            expected_version=op.expected_version,
            correlation_id=_header_text(headers, b"correlation-id"),
            causation_id=_header_text(headers, b"causation-id"),
        )
        return Response(
            self._result(self._encoder.ack(None, ack)),
            headers=((b"etag", b'"%d"' % ack.version),),
        )

    async def _query(
        self, type_: str, method: str, body: bytes, params: dict[str, str]
    ) -> Response:
        options: dict[str, Any] = {
            name: params.pop(name) for name in ("after", "timeout") if name in params
        }
        if method == "GET":
            data = self._query_data(type_, params)
        else:
            _no_params(params)
            data = body or b"{}"
        op = _convert(QueryOp, {"type": type_, **options})
        query = self._decoder.decode_query(msgspec.structs.replace(op, data=msgspec.Raw(data)))
        timeout = DEFAULT_QUERY_TIMEOUT if op.timeout is None else op.timeout
        return self.ok(await self.engine.ask(query, after=op.after, timeout=timeout))

    def _query_data(self, type_: str, params: dict[str, str]) -> bytes:
        """The JSON data of a query asked with GET: a parameter is a string
        when its field takes strings, else its value read as JSON (``5``,
        ``true``); the protocol's decoder then checks it like any data."""
        if type_ not in self._query_types:
            raise UnknownMessageType(
                f"unknown query type {type_!r}; known: {', '.join(sorted(self._query_types))}"
            )
        strings = self._string_fields[type_]
        data: dict[str, Any] = {}
        for name, value in params.items():
            if name in strings:
                data[name] = value
            else:
                try:
                    data[name] = msgspec.json.decode(value)
                except msgspec.DecodeError:
                    data[name] = value  # the decoder names the field and its type
        return self._json.encode(data)

    async def _read(self, stream: str, params: dict[str, str]) -> Response:
        op = _convert(ReadOp, {"stream": stream, **params})
        limit = DEFAULT_READ_LIMIT if op.limit is None else op.limit
        events = await self.engine.read_stream(op.stream, op.from_, limit)
        deletion = await self.engine.stream_deletion(op.stream)
        return Response(self._result(self._encoder.read(None, events, op.from_, deletion)))

    async def _delete(self, stream: str, params: dict[str, str]) -> Response:
        op = _convert(DeleteStreamOp, {"stream": stream, **params})
        if op.hard and not self.allow_hard_delete:
            raise hard_delete_refusal()
        record = await self.engine.delete_stream(op.stream, hard=op.hard)
        return Response(self._result(self._encoder.deletion(None, op.stream, record)))

    def _events(self, headers: Mapping[bytes, bytes], params: dict[str, str]) -> EventStream:
        op = _convert(SubscribeOp, params)
        after = op.from_
        last_event_id = headers.get(b"last-event-id")
        if last_event_id is not None:
            after = _convert(SubscribeOp, {"from": last_event_id.decode("latin-1")}).from_
        return EventStream(after)

    def _metrics(self) -> Response:
        metrics = self.engine.metrics
        if metrics is None:
            raise NotFound("this engine collects no metrics (opened with metrics=False)")
        from ..metrics import CONTENT_TYPE

        return Response(metrics.exposition(), content_type=CONTENT_TYPE.encode())

    async def _projections(
        self, method: str, path: str, rest: str, params: dict[str, str]
    ) -> Response:
        _no_params(params)
        name, _, action = rest.partition("/")
        if not name:
            _allow(method, path, "GET")
            return self.ok(
                {
                    "head_position": self.engine.head_position,
                    "projections": [_projection_view(p) for p in self.engine.projections.values()],
                }
            )
        projection = self.engine.projections.get(unquote(name))
        if projection is None:
            raise NotFound(
                f"no projection {unquote(name)!r}; known: "
                f"{', '.join(sorted(self.engine.projections)) or 'none'}"
            )
        if not action:
            _allow(method, path, "GET")
            return self.ok(_projection_view(projection))
        if action not in _PROJECTION_ACTIONS:
            raise NotFound(
                f"no projection action {action!r}; "
                f"expected one of: {', '.join(_PROJECTION_ACTIONS)}"
            )
        _allow(method, path, "POST")
        if action == "rebuild":
            await projection.rebuild()
        else:
            getattr(projection, action)()
        return self.ok(_projection_view(projection))


def _op_of(method: str, first: str, rest: str) -> str:
    """The line-protocol op a route stands for, which decides the scope it
    needs (:func:`~.access.scope_refusal`); the projection controls are no op
    of the line protocol and need the full-access token."""
    if first == "projections":
        return "projection control" if method == "POST" else "status"
    if first == "streams" and method == "DELETE":
        return "delete_stream"
    return _ROUTE_OPS.get(first, "status")


def _projection_view(projection: Any) -> dict[str, Any]:
    """A projection's status plus whether it is paused (which
    ``ProjectionStatus`` does not say yet)."""
    view = msgspec.structs.asdict(projection.status())
    view["paused"] = bool(getattr(projection, "_paused", False))
    return view


def _allow(method: str, path: str, *allowed: str) -> None:
    if method not in allowed:
        raise _MethodNotAllowed(method, path, allowed)


def _segment(text: str) -> str:
    """A path's last part, percent-decoded (so a stream id may hold ``/`` as ``%2F``)."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(f"the path part {text!r} is not percent-encoded UTF-8") from None


def _params(query: bytes) -> dict[str, str]:
    """The query string's parameters; each may be given once."""
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the query string is not valid: {exc}") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise BadRequest(f"the query parameter {name!r} is given more than once")
        params[name] = value
    return params


def _no_params(params: dict[str, str]) -> None:
    if params:
        raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(params))}")


def _convert(op_type: type[Any], fields: dict[str, Any]) -> Any:
    """Check request options against the line protocol's request struct, so
    both wires accept the same values (``from`` ≥ 0, ``limit`` 1..10,000...)."""
    try:
        return msgspec.convert(fields, op_type, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid parameter: {exc}") from None


def _header_text(headers: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise BadRequest(f"the {name.decode()} header is not UTF-8") from None


def _if_match(value: bytes | None) -> int | None:
    """The expected version an ``If-Match`` header gives: ``3`` or ``"3"``."""
    if value is None:
        return None
    text = value.strip().removeprefix(b"W/").strip(b'"')
    if not text.isdigit() or len(text) > 18:
        raise BadRequest(
            'If-Match must be the expected stream version (e.g. "3"), '
            f"got {value.decode('latin-1')!r}"
        )
    return int(text)


def _string_fields(cls: type) -> frozenset[str]:
    """The fields of a query type whose values may be strings."""
    info = msgspec.inspect.type_info(cls)
    fields = getattr(info, "fields", ())
    return frozenset(f.encode_name for f in fields if _takes_string(f.type))


def _takes_string(info: msgspec.inspect.Type) -> bool:
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_takes_string(t) for t in info.types)
    if isinstance(info, msgspec.inspect.LiteralType):
        return any(isinstance(value, str) for value in info.values)
    return isinstance(info, msgspec.inspect.StrType | msgspec.inspect.AnyType)


def _load_static() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("admin")
    return {name: folder.joinpath(name).read_bytes() for name in _STATIC}


async def serve_http(
    engine: Engine,
    *,
    host: str | None = "127.0.0.1",
    port: int = DEFAULT_HTTP_PORT,
    token: str | None = None,
    client_token: str | None = None,
    metrics_token: str | None = None,
    auth_failure_delay: float = DEFAULT_AUTH_FAILURE_DELAY,
    ssl_context: Any = None,
    max_body: int = 1 << 20,
    max_head: int = 16_384,
    max_connections: int = 1000,
    keep_alive_timeout: float = 60.0,
    request_timeout: float = 30.0,
    write_timeout: float = 60.0,
    heartbeat: float = 15.0,
    metrics_only: bool = False,
    allow_hard_delete: bool = False,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``engine``'s HTTP API and admin page until :meth:`HttpServer.stop`
    is called (then return) or the task is cancelled (then stop at once).

    Start it with ``server = await nursery.start(partial(serve_http, engine,
    port=0))``: the :class:`HttpServer` is reported once the listeners are
    bound (``server.port`` is the real port).

    ``token``: every API request needs ``Authorization: Bearer <token>``
    (else 401). ``client_token``: a second token for commands, queries,
    ``/status``, ``/metrics``, ``/openapi.json`` and reading ``/projections``;
    ``/streams``, ``/events`` and the projection controls answer it 401
    ``unauthorized`` naming the scope they need. ``metrics_token``: a token
    for ``GET /metrics`` alone (the one to give Prometheus). A wrong token is answered
    after ``auth_failure_delay`` seconds, counted in
    ``motet_auth_failures_total``, logged, and closes its connection.
    ``ssl_context`` (an ``ssl.SSLContext``): serve HTTPS.
    ``max_body``: largest request body in bytes (else 413, and the connection
    closes). ``max_head``: largest request line plus headers. ``max_connections``:
    beyond it a new connection's request gets 429 and the connection closes.
    ``keep_alive_timeout``: an idle connection is closed after that long;
    ``request_timeout``: a started request must arrive within it;
    ``write_timeout``: a peer that accepts no data for that long is
    dropped; ``heartbeat``: seconds between comments on a quiet event stream.
    ``metrics_only``: serve only ``GET /metrics`` (a port for Prometheus
    alone, as ``--metrics-port`` gives): open when neither ``token`` nor
    ``metrics_token`` is given, else it needs one of them (``client_token``
    is not accepted there). ``allow_hard_delete``:
    ``DELETE /streams/{stream}?hard=true`` removes the stream's events
    (without it, 401 ``unauthorized``; a soft delete needs no opt-in).
    Raises ``OSError`` when the address cannot be bound and ``ValueError``
    for invalid limits.
    """
    server = HttpServer(
        engine,
        token=token,
        client_token=client_token,
        metrics_token=metrics_token,
        auth_failure_delay=auth_failure_delay,
        max_body=max_body,
        max_head=max_head,
        max_connections=max_connections,
        keep_alive_timeout=keep_alive_timeout,
        request_timeout=request_timeout,
        write_timeout=write_timeout,
        heartbeat=heartbeat,
        metrics_only=metrics_only,
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
            scheme = "http" if ssl_context is None else "https"
            if metrics_only:
                log.info("serving metrics on %s://%s:%d/metrics", scheme, host, server.port)
            else:
                log.info("serving the HTTP API on %s://%s:%d/", scheme, host, server.port)
            task_status.started(server)
            await server._stop_requested.wait()
            server.stopping = True
            accepting.cancel_scope.cancel()
        started = time.monotonic()
        for connection in list(server._connections):
            connection.drain()
        with trio.move_on_after(server._stop_timeout):
            await server._no_connections.wait()
        if server._connections:
            # Time is up: a request still waiting (a query's ``after``) is
            # answered 503 rather than cut off unanswered.
            for connection in list(server._connections):
                connection.stop_waiting()
            with trio.move_on_after(1.0):
                await server._no_connections.wait()
        log.info("HTTP server stopped in %.1f s", time.monotonic() - started)
        connections.cancel_scope.cancel()


@asynccontextmanager
async def open_http_server(
    engine: Engine,
    *,
    host: str | None = "127.0.0.1",
    port: int = DEFAULT_HTTP_PORT,
    stop_timeout: float = 10.0,
    **options: Any,
) -> AsyncIterator[HttpServer]:
    """Run :func:`serve_http` (with ``options``) for the duration of the block
    and yield its :class:`HttpServer`. Leaving the block normally stops the
    server gracefully; leaving it with an exception cancels it at once."""
    async with trio.open_nursery() as nursery:
        server: HttpServer = await nursery.start(
            partial(serve_http, engine, host=host, port=port, **options)
        )
        try:
            yield server
        except BaseException:
            nursery.cancel_scope.cancel()
            raise
        server.stop(stop_timeout)
