"""One HTTP/1.1 connection of the HTTP API: h11 driven by a trio stream.

Requests are read one after another (keep-alive), each body up to the
server's limit; the answer a route gives (:class:`Response`) is written in one
``send_all``, or, for an :class:`EventStream`, Server-Sent Events follow until
the peer leaves or the server stops. h11 does all the parsing; this module
only moves bytes between it and the socket, with the server's timeouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import aclosing, suppress
from typing import TYPE_CHECKING, Any, Final

import h11
import trio

from motet.storage.errors import Unavailable

from .protocol import RequestTooLarge

if TYPE_CHECKING:
    from .http import HttpServer

__all__ = ["EventStream", "HttpConnection", "Response", "close_stream"]

_REASONS: Final = {
    100: b"Continue", 200: b"OK", 400: b"Bad Request", 401: b"Unauthorized",
    404: b"Not Found", 405: b"Method Not Allowed", 409: b"Conflict",
    413: b"Content Too Large", 422: b"Unprocessable Content", 429: b"Too Many Requests",
    500: b"Internal Server Error", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}  # fmt: skip

_JSON: Final = b"application/json"
_RECEIVE_SIZE: Final = 65_536
_SSE_FLUSH: Final = 65_536  # bytes of catch-up events gathered into one write
_LINGER: Final = 1.0


class Response:
    """What a route answers: status, body and content type, extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes,
        *,
        status: int = 200,
        content_type: bytes = _JSON,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class EventStream:
    """A route's answer that is a Server-Sent Events stream after ``after``."""

    __slots__ = ("after",)

    def __init__(self, after: int) -> None:
        self.after = after


async def close_stream(stream: trio.abc.Stream, peer_done: bool) -> None:
    """Close ``stream``; unless the peer already closed its side, first send
    EOF and discard what it still sends, briefly, so our last answer is read
    instead of reset."""
    with trio.move_on_after(_LINGER * 2) as scope:
        scope.shield = True
        try:
            if not peer_done and isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
                with trio.move_on_after(_LINGER):
                    while await stream.receive_some(_RECEIVE_SIZE):
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
        finally:
            await stream.aclose()


class HttpConnection:
    """One HTTP/1.1 connection: requests one after another (keep-alive)."""

    def __init__(self, server: HttpServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=server._max_head)
        self.peer_done = False
        self.idle_scope: trio.CancelScope | None = None
        self.streaming: trio.CancelScope | None = None
        self.answering: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<HttpConnection our_state={self.conn.our_state} streaming={bool(self.streaming)}>"

    def stop_waiting(self) -> None:
        """The server's stop timeout is up: a query or read still being
        answered (e.g. waiting for a position with ``after``) gets 503
        ``unavailable`` at once; a command keeps its connection until the
        server cancels what is left."""
        if self.answering is not None:
            self.answering.cancel()

    def drain(self) -> None:
        """The server stops: close at once if idle, end an event stream."""
        if self.idle_scope is not None:
            self.idle_scope.cancel()
        if self.streaming is not None:
            self.streaming.cancel()

    async def _send(self, data: bytes) -> None:
        with trio.fail_after(self.server._write_timeout):
            await self.stream.send_all(data)

    async def _next_event(self) -> Any:
        """The next h11 event, reading from the socket as h11 needs."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = bytes(await self.stream.receive_some(_RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.peer_done = True
            self.conn.receive_data(data)

    async def _next_request(self) -> h11.Request | None:
        """Wait for the next request's head; ``None`` when the connection is
        done: the peer closed it, or it stayed idle for ``keep_alive_timeout``
        (the limit also bounds a head that arrives slowly), or the server
        stops while it waits."""
        with trio.move_on_after(self.server._keep_alive_timeout) as idle:
            self.idle_scope = idle
            if self.server.stopping:
                return None
            event = await self._next_event()
        self.idle_scope = None
        if idle.cancelled_caught or not isinstance(event, h11.Request):
            return None
        return event

    async def _read_body(self, request_headers: Mapping[bytes, bytes]) -> bytes:
        limit = self.server._max_body
        length = request_headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise RequestTooLarge(f"the request body is {int(length)} bytes, over {limit}")
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        with trio.fail_after(self.server._request_timeout):
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        raise RequestTooLarge(f"the request body is over {limit} bytes")
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                else:  # the peer closed mid-body
                    raise trio.BrokenResourceError("the connection closed in a request body")

    async def run(self) -> None:
        server = self.server
        while True:
            try:
                request = await self._next_request()
            except h11.RemoteProtocolError as exc:
                await self._protocol_error(exc)
                return
            except trio.TooSlowError:
                return
            if request is None:
                return
            server._requests += 1
            headers = {name.lower(): value for name, value in request.headers}
            method = request.method.decode("latin-1")
            # HEAD is GET without the body (h11 leaves the body out).
            head = method == "HEAD"
            try:
                body = await self._read_body(headers)
                with trio.CancelScope() as answering:
                    # A command is never given up on: it may commit all the
                    # same, and "retry" would then run it twice.
                    if not request.target.startswith(b"/commands/"):
                        self.answering = answering
                    answer = await server.route(
                        "GET" if head else method, request.target, headers, body
                    )
                self.answering = None
                if answering.cancelled_caught:
                    answer = server.failure(
                        Unavailable(
                            "the server is shutting down and stopped waiting for this request; "
                            "retry it once the server is back (or on another node)"
                        )
                    )
            except h11.RemoteProtocolError as exc:
                await self._protocol_error(exc)
                return
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            except Exception as exc:
                answer = server.failure(exc)
                if isinstance(exc, RequestTooLarge):
                    # The rest of the body is not read, so the connection cannot go on.
                    await self._respond(answer, close=True)
                    return
            if isinstance(answer, EventStream) and not head:
                await self._stream_events(answer.after)
                return
            if isinstance(answer, EventStream):
                answer = Response(b"", content_type=b"text/event-stream")
            await self._respond(answer, close=server.stopping, head=head)
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return  # the request's body was not read to its end (e.g. a GET with one)

    async def refuse(self, code: str, message: str) -> None:
        """Answer the first request with ``code`` and close (too many
        connections, or the server is stopping)."""
        try:
            with trio.move_on_after(self.server._request_timeout):
                request = await self._next_event()
                if isinstance(request, h11.Request):
                    body = self.server._json.encode({"error": {"code": code, "message": message}})
                    response = Response(
                        body, status=self.server.status_of(code), headers=((b"retry-after", b"1"),)
                    )
                    await self._respond(response, close=True)
        except h11.ProtocolError:
            pass
        finally:
            await close_stream(self.stream, self.peer_done)

    async def _protocol_error(self, error: h11.RemoteProtocolError) -> None:
        """Answer what h11 could not parse with 400 (or its hint), then close."""
        self.server._errors += 1
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = error.error_status_hint
        code = "too_large" if status in (413, 431) else "bad_request"
        body = self.server._json.encode(
            {"error": {"code": code, "message": f"not a valid HTTP/1.1 request: {error}"}}
        )
        response = Response(body, status=self.server.status_of(code))
        with suppress(h11.LocalProtocolError):
            await self._respond(response, close=True)

    async def _respond(self, response: Response, *, close: bool, head: bool = False) -> None:
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", b"%d" % len(response.body)),
            (b"cache-control", b"no-store"),
            *response.headers,
        ]
        if close:
            headers.append((b"connection", b"close"))
        conn = self.conn
        reason = _REASONS.get(response.status, b"")
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if not head:
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await self._send(data)

    async def _stream_events(self, after: int) -> None:
        """Send every event after ``after`` as Server-Sent Events until the
        peer goes away or the server stops; the connection then closes."""
        server = self.server
        engine = server.engine
        server._event_streams += 1
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"connection", b"close"),
            (b"x-accel-buffering", b"no"),
        ]
        conn = self.conn
        await self._send(
            conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
            + (conn.send(h11.Data(data=b"retry: 1000\n\n")) or b"")
        )
        last = after
        lock = trio.Lock()  # the heartbeat and the events share the socket

        async def send(data: bytes | None) -> None:
            async with lock:
                await self._send(data or b"")

        sent = trio.Event()  # set on every write, so the heartbeat knows
        stopping = trio.CancelScope()
        self.streaming = stopping

        async def heartbeat() -> None:
            # Comments keep proxies from timing out and find dead peers.
            nonlocal sent
            while True:
                with trio.move_on_after(server._heartbeat) as quiet:
                    await sent.wait()
                if quiet.cancelled_caught:
                    await send(conn.send(h11.Data(data=b": keep-alive\n\n")))
                sent = trio.Event()

        async def watch_peer(scope: trio.CancelScope) -> None:
            # The peer sends nothing more on an event stream; EOF means it left.
            try:
                while await self.stream.receive_some(_RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            self.peer_done = True
            scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_peer, nursery.cancel_scope)
                nursery.start_soon(heartbeat)
                buffer = bytearray()
                failure: Exception | None = None
                try:
                    with stopping:
                        if server.stopping:
                            stopping.cancel()

                        async def flush(data: bytes) -> None:
                            await send(conn.send(h11.Data(data=data)))
                            sent.set()

                        def caught_up() -> None:
                            # Read up to the head, though the last event may be
                            # below it (the newest were removed on purpose): send
                            # what is gathered now, not when the next one comes.
                            # Started before any later event is read, so it
                            # takes the socket's lock first.
                            if buffer:
                                nursery.start_soon(flush, bytes(buffer))
                                buffer.clear()

                        events = engine.subscribe(after, on_caught_up=caught_up)
                        async with aclosing(events):  # type: ignore[type-var]
                            async for record in events:
                                buffer += b"id: %d\ndata: %s\n\n" % (
                                    record.position,
                                    server.event_data(record),
                                )
                                last = record.position
                                if len(buffer) >= _SSE_FLUSH or last >= engine.head_position:
                                    await send(conn.send(h11.Data(data=bytes(buffer))))
                                    buffer.clear()
                                    sent.set()
                except Exception as exc:  # e.g. an unreadable record: say so, then close
                    failure = exc
                # Whole events still gathered go first, so that the error's
                # position is the last event the peer has.
                error = server.error_event(failure, last)
                buffer += b"event: error\ndata: %s\n\n" % error
                await send(conn.send(h11.Data(data=bytes(buffer))))
                await send(conn.send(h11.EndOfMessage()))
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            self.peer_done = True
        finally:
            self.streaming = None
