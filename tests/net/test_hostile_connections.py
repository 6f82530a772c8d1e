"""Connections that try to hold the server: idle and unauthenticated sockets,
slowloris lines, TLS handshakes that never happen, unfinished lines, clients
that never read, huge request ids. Each runs against a real server on
127.0.0.1 with small limits, and checks that other clients are still served."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import trio

from motet.engine import Engine
from motet.engine.net.server import Server, open_server
from tests.support.commands import create_user_request as create
from tests.support.peer import Peer, open_peer

TOKEN = "s3cret"
AUTH = {"id": "a", "op": "auth", "token": TOKEN}
MAX_REQUEST_ID = 256  # bytes (motet.engine.net.server.MAX_REQUEST_ID)


def connect(server: Server) -> AbstractAsyncContextManager[Peer]:
    return open_peer(server.port)


def error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False, reply
    return reply["error"]["code"], reply["error"]["message"]


async def pong(peer: Peer) -> None:
    assert await peer.ask({"id": "p", "op": "ping"}) == {"id": "p", "ok": True, "result": "pong"}


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


@asynccontextmanager
async def idle_sockets(port: int, count: int) -> AsyncIterator[list[trio.SocketStream]]:
    streams = []
    try:
        for _ in range(count):
            streams.append(await trio.open_tcp_stream("127.0.0.1", port))
        yield streams
    finally:
        for stream in streams:
            await stream.aclose()


async def trickle(stream: trio.abc.Stream, data: bytes, interval: float) -> None:
    """Send ``data`` one byte at a time (slowloris) until the server closes."""
    try:
        for byte in data:
            await stream.send_all(bytes([byte]))
            await trio.sleep(interval)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


# -- time limits ---------------------------------------------------------------------------


async def test_idle_unauthenticated_sockets_do_not_lock_clients_out(engine: Engine) -> None:
    async with (
        open_server(
            engine, port=0, token=TOKEN, max_connections=40, max_unauthenticated=10
        ) as server,
        connect(server) as member,
    ):
        assert (await member.ask(AUTH))["result"] is True
        # More idle sockets than the server takes connections.
        async with idle_sockets(server.port, 60):
            await wait_for(lambda: server.statistics().accepted + server.statistics().refused >= 61)
            await wait_for(lambda: server.statistics().connections <= 11)
            async with connect(server) as newcomer:
                assert (await newcomer.ask(AUTH))["result"] is True
                await pong(newcomer)
            await pong(member)


async def test_a_connection_that_never_authenticates_is_closed(engine: Engine) -> None:
    async with open_server(engine, port=0, token=TOKEN, auth_timeout=0.3) as server:
        async with connect(server) as silent, connect(server) as slow, trio.open_nursery() as n:
            n.start_soon(trickle, slow.stream, b'{"op": "auth", "token": "' + b"x" * 500, 0.05)
            assert error(await silent.read(5)) == (
                "unauthorized",
                "not authenticated within 0.3 s",
            )
            assert await silent.eof()
            assert error(await slow.read(5))[0] == "unauthorized"
            assert await slow.eof()
        assert server.statistics().timed_out == 2
        assert server.statistics().connections == 0


async def test_a_tls_handshake_that_never_happens_is_closed(
    engine: Engine, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls_contexts
    async with open_server(engine, port=0, ssl_context=server_context, auth_timeout=0.3) as server:
        async with idle_sockets(server.port, 1) as (stream,):
            with trio.fail_after(5):
                with suppress(trio.BrokenResourceError):
                    assert await stream.receive_some(1000) == b""
        # A client that does the handshake is served.
        async with open_peer(server.port, client_context) as peer:
            await pong(peer)


async def test_idle_connections_are_closed_but_subscribers_are_not(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, idle_timeout=0.3) as server,
        connect(server) as idle,
        connect(server) as watcher,
        connect(server) as loris,
        trio.open_nursery() as nursery,
    ):
        await pong(idle)
        await watcher.write({"id": "s", "op": "subscribe"})
        async with connect(server) as pinger:
            for _ in range(4):  # answered at once, but each one is activity
                await trio.sleep(0.15)
                await pong(pinger)
        # Bytes that never make a line keep nothing in flight.
        nursery.start_soon(trickle, loris.stream, b'{"op": "ping"' + b" " * 500, 0.05)
        assert error(await idle.read(5)) == (
            "unavailable",
            "closed after 0.3 s with nothing in flight",
        )
        assert await idle.eof()
        assert error(await loris.read(5))[0] == "unavailable"
        assert await loris.eof()
        await trio.sleep(0.5)
        async with connect(server) as writer:
            assert (await writer.ask(create("u1")))["ok"] is True
        assert (await watcher.read())["event"]["position"] == 1
        await pong(watcher)


# -- byte limits --------------------------------------------------------------------------


async def test_unfinished_lines_share_one_budget(engine: Engine) -> None:
    budget = 1 << 20
    async with (
        open_server(engine, port=0, max_partial_bytes=budget) as server,
        connect(server) as bystander,
    ):
        async with trio.open_nursery() as nursery:
            peers = [await nursery.start(_unfinished_line, server.port, 300_000) for _ in range(8)]
        await trio.sleep(1)
        assert server.statistics().unfinished_lines <= budget
        closed = 0
        for peer in peers:
            async with peer.stream:
                with trio.move_on_after(0.3):
                    reply = await peer.read()
                    assert error(reply) == (
                        "too_large",
                        f"the server holds {budget} bytes of unfinished lines at most",
                    )
                    closed += 1
        # 8 lines of 300 kB, 1 MiB for all of them.
        assert closed >= 5
        await pong(bystander)


async def _unfinished_line(port: int, size: int, task_status: Any) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    peer = Peer(stream)
    with suppress(trio.BrokenResourceError):
        await stream.send_all(b'{"op": "ping", "id": "' + b"x" * size)
    task_status.started(peer)


async def test_a_long_request_id_is_refused_before_it_is_echoed(server: Server) -> None:
    async with connect(server) as peer:
        fits = "é" * (MAX_REQUEST_ID // 2)
        assert (await peer.ask({"id": fits, "op": "ping"}))["id"] == fits
        for request in (
            {"id": fits + "x", "op": "ping"},
            {"id": "x" * 1_000_000, "op": "subscribe"},
            {"id": "x" * 1_000, "op": "nonsense"},
        ):
            reply = await peer.ask(request)
            assert reply["id"] is None
            code, message = error(reply)
            assert code == "bad_request"
            if request["op"] != "nonsense":
                assert message == f"the request id is longer than {MAX_REQUEST_ID} bytes"
        await pong(peer)


def _never_reading_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_a_client_that_never_reads_holds_bounded_output(engine: Engine) -> None:
    limit = 1 << 20
    async with open_server(
        engine, port=0, max_pending_output=limit, max_total_output=4 * limit
    ) as server:
        async with connect(server) as writer:
            big = "x" * 50_000
            await writer.write(*({"id": n, **create(f"u{n}", big)} for n in range(40)))
            await writer.read_many(40, timeout=30)
            await writer.ask(
                {
                    "id": "w",
                    "op": "query",
                    "type": "GetUserById",
                    "data": {"user_id": "u39"},
                    "after": 40,
                }
            )
        sock = _never_reading_socket()
        await sock.connect(("127.0.0.1", server.port))
        async with trio.SocketStream(sock) as stream:
            hog = Peer(stream)
            top = {"op": "query", "type": "TopSpenders", "data": {"limit": 1000}}
            requests = [{"id": n, **top} for n in range(100)]
            pings = [{"id": n, "op": "ping"} for n in range(100, 5100)]
            # Each reply is ~2 MB; the hog reads none of them.
            with trio.move_on_after(3):
                await hog.write(*requests, *pings)
            await trio.sleep(1)
            statistics = server.statistics()
            # One reply over the limit at most, and reading stopped.
            assert statistics.pending_output <= limit + 2_100_000
            assert statistics.requests < 41 + len(requests) + len(pings)
            async with connect(server) as other:
                await pong(other)
                reply = await other.ask({"id": 1, **top})
                assert len(reply["result"]) == 40
