"""The Python client against an in-process server over real sockets: every
method, the embedded API's exception classes, pipelining, subscriptions,
auth, TLS, lost connections and the blocking wrapper."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC
from functools import partial
from typing import Any

import msgspec
import pytest
import trio

import motet.engine.net.client as client_module
from motet.engine import (
    CommandRejected,
    Conflict,
    Engine,
    EngineStatus,
    InternalError,
    MotetError,
    NotFound,
    Overloaded,
    QueryTimeout,
    Unavailable,
    UnknownMessageType,
)
from motet.engine.example import (
    GetUserById,
    GetUsersByCity,
    PlaceOrder,
    TopSpenders,
    UpdateUser,
    UserSummary,
)
from motet.engine.net.blocking import BlockingClient, connect
from motet.engine.net.client import Client, ConnectionLost, open_client
from motet.engine.net.protocol import (
    BadRequest,
    ErrorBody,
    InvalidMessage,
    RemoteError,
    Unauthorized,
    WireMetadata,
    error_from_reply,
)
from motet.engine.net.server import Server, open_server, serve_engine
from tests.support.commands import create_user as create


class NotRegistered(msgspec.Struct, frozen=True, kw_only=True, tag="NotRegistered"):
    user_id: str


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    async with open_client("127.0.0.1", server.port) as client:
        yield client


async def test_send_ask_read_status_ping(client: Client) -> None:
    ack = await client.send(create("u1"))
    assert (ack.stream, ack.version, ack.position) == ("User-u1", 1, 1)
    ack = await client.send(PlaceOrder(user_id="u1", order_id="o1", amount=20), command_id="k")
    assert ack.position == 2
    assert (
        await client.send(PlaceOrder(user_id="u1", order_id="o1", amount=20), command_id="k") == ack
    )

    user = await client.ask(GetUserById(user_id="u1"), after=ack.position)
    assert isinstance(user, dict)
    assert (user["name"], user["order_count"], user["total_spent"]) == ("Name u1", 1, 20.0)
    typed = await client.ask(GetUserById(user_id="u1"), result_type=UserSummary)
    assert isinstance(typed, UserSummary) and typed.total_spent == 20.0
    assert await client.ask(GetUsersByCity(city="Nowhere")) == []
    top = await client.ask(TopSpenders(limit=5), result_type=list[UserSummary])
    assert [u.user_id for u in top] == ["u1"]

    events = await client.read_stream("User-u1")
    assert [(e.version, e.type) for e in events] == [(1, "UserCreated"), (2, "OrderPlaced")]
    assert events[1].data["amount"] == 20 and events[1].stream == "User-u1"
    assert events[0].time.tzinfo is not None and events[0].time.utcoffset() == UTC.utcoffset(None)
    assert [e.version for e in await client.read_stream("User-u1", 1)] == [2]
    assert [e.version for e in await client.read_stream("User-u1", limit=1)] == [1]
    assert await client.read_stream("User-nobody") == []

    status = await client.status()
    assert isinstance(status, EngineStatus)
    assert status.head_position == 2 and status.projections[0].name == "users"
    assert 0 <= await client.ping() < 5
    assert "open" in repr(client)


async def test_send_passes_correlation_and_causation_to_the_events(client: Client) -> None:
    ack = await client.send(create("u1"), command_id="c-1", correlation_id="flow")
    await client.send(
        PlaceOrder(user_id="u1", order_id="o1", amount=5),
        correlation_id="flow",
        causation_id="c-1",
    )
    events = await client.read_stream("User-u1")
    assert [e.metadata for e in events] == [
        WireMetadata(command_id="c-1", correlation_id="flow"),
        WireMetadata(correlation_id="flow", causation_id="c-1"),
    ]
    async with aclosing(client.subscribe()) as subscription:
        event = await anext(aiter(subscription))
    assert event.position == ack.position and event.metadata == events[0].metadata


async def test_read_stream_pages_through_a_long_stream(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.send(create("u1"))
    for n in range(6):
        await client.send(PlaceOrder(user_id="u1", order_id=f"o{n}", amount=1))
    monkeypatch.setattr(client_module, "MAX_READ_LIMIT", 2)
    assert [e.version for e in await client.read_stream("User-u1")] == list(range(1, 8))
    assert [e.version for e in await client.read_stream("User-u1", 2, limit=3)] == [3, 4, 5]


async def test_errors_are_the_embedded_api_classes(client: Client) -> None:
    await client.send(create("u1"))
    with pytest.raises(CommandRejected, match=r"^user 'u1' already exists$"):
        await client.send(create("u1"))
    with pytest.raises(Conflict, match="expected version 7") as conflict:
        await client.send(UpdateUser(user_id="u1", name="B"), expected_version=7)
    assert (conflict.value.stream, conflict.value.expected, conflict.value.actual) == (
        "User-u1",
        7,
        1,
    )
    with pytest.raises(NotFound, match="no user 'ghost'"):
        await client.ask(GetUserById(user_id="ghost"))
    with pytest.raises(QueryTimeout, match="did not reach position 99"):
        await client.ask(GetUserById(user_id="u1"), after=99, timeout=0.05)
    with pytest.raises(UnknownMessageType, match="unknown command type 'NotRegistered'"):
        await client.send(NotRegistered(user_id="u1"))
    with pytest.raises(UnknownMessageType, match="unknown query type 'NotRegistered'"):
        await client.ask(NotRegistered(user_id="u1"))
    with pytest.raises(InvalidMessage, match="must be a non-empty string") as invalid:
        await client.send(UpdateUser(user_id="", name="x"))
    assert isinstance(invalid.value, ValueError)
    with pytest.raises(ValueError, match="limit must be between 1 and 1000, got 0"):
        await client.ask(TopSpenders(limit=0))
    with pytest.raises(BadRequest, match=r"Expected `int` >= 0 - at `\$.expected_version`"):
        await client.send(create("u2"), expected_version=-1)
    # The connection survives every one of them.
    assert (await client.send(create("u2"))).version == 1


async def test_raw_requests(client: Client) -> None:
    assert await client.request({"id": "mine", "op": "ping"}) == {
        "id": "mine",
        "ok": True,
        "result": "pong",
    }
    reply = await client.request({"op": "launch"})
    assert reply["id"] is None and reply["error"]["code"] == "bad_request"
    reply = await client.request(
        {"op": "command", "type": "CreateUser", "data": {"user_id": 5}, "id": 3}
    )
    assert reply == {
        "id": 3,
        "ok": False,
        "error": {"code": "invalid", "message": "Expected `str`, got `int` - at `$.data.user_id`"},
    }
    with pytest.raises(ValueError, match="subscribe"):
        await client.request({"op": "subscribe"})


async def test_a_thousand_concurrent_sends_over_one_connection(
    client: Client, engine: Engine
) -> None:
    acks: list[Any] = []

    async def one(n: int) -> None:
        acks.append(await client.send(create(f"p{n}")))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for n in range(1000):
                nursery.start_soon(one, n)
    assert sorted(ack.position for ack in acks) == list(range(1, 1001))
    assert {ack.stream for ack in acks} == {f"User-p{n}" for n in range(1000)}
    assert engine.head_position == 1000


async def test_subscribe_catches_up_follows_and_unsubscribes(
    client: Client, server: Server
) -> None:
    for n in range(3):
        await client.send(create(f"u{n}"))
    seen = []
    async with aclosing(client.subscribe(1)) as events:  # type: ignore[type-var]
        async for event in events:
            seen.append(event)
            if event.position == 3:
                await client.send(PlaceOrder(user_id="u0", order_id="o", amount=5))
            if event.position == 4:
                break
    assert [e.position for e in seen] == [2, 3, 4]
    assert [e.type for e in seen] == ["UserCreated", "UserCreated", "OrderPlaced"]
    assert seen[2].data["amount"] == 5 and seen[2].stream == "User-u0"
    # The server ended the subscription too.
    assert await client.ping() >= 0
    with trio.fail_after(5):
        while any(c._subscriptions for c in server._connections):
            await trio.sleep(0.01)


async def test_a_subscriber_that_does_not_keep_up_gets_overloaded(server: Server) -> None:
    async with open_client("127.0.0.1", server.port, subscription_buffer=3) as client:
        for n in range(10):
            await client.send(create(f"u{n}"))
        received = []
        with trio.fail_after(10), pytest.raises(Overloaded, match="too slow"):
            async with aclosing(client.subscribe()) as events:  # type: ignore[type-var]
                async for event in events:
                    received.append(event.position)
                    await trio.sleep(0.1)  # while the other events arrive
        assert 1 <= len(received) < 10
        assert received == list(range(1, len(received) + 1))
        assert await client.ping() >= 0


async def test_a_subscription_ends_with_unavailable_when_the_server_stops(
    engine: Engine,
) -> None:
    await engine.send(create("u1"))
    async with open_server(engine, port=0) as server, open_client("127.0.0.1", server.port) as c:
        seen = []
        with trio.fail_after(5), pytest.raises(Unavailable, match="shutting down"):
            async with aclosing(c.subscribe()) as events:  # type: ignore[type-var]
                async for event in events:
                    seen.append(event.position)
                    server.stop()
        assert seen == [1]


async def test_several_subscriptions_on_one_connection(client: Client) -> None:
    await client.send(create("u1"))
    async with (
        aclosing(client.subscribe()) as first,  # type: ignore[type-var]
        aclosing(client.subscribe()) as second,  # type: ignore[type-var]
    ):
        assert (await first.__anext__()).position == 1
        assert (await second.__anext__()).position == 1
        await client.send(create("u2"))
        assert (await second.__anext__()).position == 2
        assert (await first.__anext__()).position == 2


async def test_auth(engine: Engine) -> None:
    async with open_server(engine, port=0, token="t0k") as server:
        async with open_client("127.0.0.1", server.port, token="t0k") as client:
            assert (await client.send(create("u1"))).version == 1
        with pytest.raises(Unauthorized, match="the token is not valid"):
            async with open_client("127.0.0.1", server.port, token="nope"):
                pass  # pragma: no cover
        async with open_client("127.0.0.1", server.port) as client:
            with pytest.raises(Unauthorized, match="authenticate first"):
                await client.ping()
            await client.authenticate("t0k")
            assert await client.ping() >= 0


async def test_tls(engine: Engine, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts
    async with (
        open_server(engine, port=0, ssl_context=server_context) as server,
        open_client("127.0.0.1", server.port, ssl_context=client_context) as client,
    ):
        assert (await client.send(create("u1"))).position == 1
        assert (await client.ask(GetUserById(user_id="u1"), after=1))["user_id"] == "u1"
        # A client that does not trust the server's certificate fails at once.
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            async with open_client(
                "127.0.0.1", server.port, ssl_context=ssl.create_default_context()
            ):
                pass  # pragma: no cover
        with pytest.raises(ssl.SSLError):
            await trio.to_thread.run_sync(
                partial(connect, "127.0.0.1", server.port, ssl_context=ssl.create_default_context())
            )
        assert await client.ping() >= 0


async def test_a_refused_connection_raises_overloaded(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, max_connections=1) as server,
        open_client("127.0.0.1", server.port) as first,
    ):
        await first.ping()
        async with open_client("127.0.0.1", server.port) as second:
            with pytest.raises(Overloaded, match=r"too many connections \(max 1\)"):
                await second.ping()
            assert second.closed
            with pytest.raises(Overloaded):
                await second.send(create("u1"))


async def test_a_lost_connection_fails_waiting_calls(engine: Engine) -> None:
    serving = trio.CancelScope()

    async def serve(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with serving:
            await _serve(engine, task_status=task_status)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve)
        async with open_client("127.0.0.1", server.port) as client:

            async def cut_off_soon() -> None:
                # Cancelled, not stopped: a stopping server would answer the
                # waiting query "unavailable" first.
                await trio.sleep(0.1)
                serving.cancel()

            nursery.start_soon(cut_off_soon)
            with pytest.raises(ConnectionLost, match="closed the connection"):
                await client.ask(GetUserById(user_id="u"), after=50, timeout=30)
            assert client.closed
            with pytest.raises(ConnectionLost):
                await client.ping()
            with pytest.raises(ConnectionLost):
                async with aclosing(client.subscribe()) as events:  # type: ignore[type-var]
                    await events.__anext__()
    with pytest.raises(OSError):
        async with open_client("127.0.0.1", server.port):
            pass  # pragma: no cover


async def test_a_stopping_server_answers_a_waiting_call_unavailable(engine: Engine) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(_serve, engine)
        async with open_client("127.0.0.1", server.port) as client:

            async def stop_soon() -> None:
                await trio.sleep(0.1)
                server.stop(timeout=0.1)

            nursery.start_soon(stop_soon)
            with pytest.raises(Unavailable, match="shutting down and stopped waiting"):
                await client.ask(GetUserById(user_id="u"), after=50, timeout=30)


async def _serve(engine: Engine, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await serve_engine(engine, port=0, task_status=task_status)


async def test_calls_after_the_block_raise(server: Server) -> None:
    async with open_client("127.0.0.1", server.port) as client:
        pass
    assert client.closed and "closed" in repr(client)
    with pytest.raises(ConnectionLost, match="the client is closed"):
        await client.ping()


def test_error_replies_with_unknown_codes_are_motet_errors() -> None:
    error = error_from_reply(ErrorBody(code="teapot", message="short and stout"))
    assert isinstance(error, RemoteError) and isinstance(error, MotetError)
    assert error.code == "teapot" and str(error) == "teapot: short and stout"
    assert isinstance(error_from_reply(ErrorBody(code="internal", message="x")), InternalError)
    conflict = error_from_reply(ErrorBody(code="conflict", message="stream moved"))
    assert isinstance(conflict, Conflict) and str(conflict) == "stream moved"


async def test_the_blocking_client(server: Server) -> None:
    port = server.port

    def script() -> list[Any]:
        out: list[Any] = []
        with connect("127.0.0.1", port) as blocking:
            ack = blocking.send(create("b1"))
            out.append(ack.position)
            out.append(blocking.ask(GetUserById(user_id="b1"), after=ack.position)["name"])
            out.append([e.type for e in blocking.read_stream("User-b1")])
            out.append(blocking.status().head_position)
            out.append(blocking.ping() >= 0)
            out.append(blocking.request({"id": 1, "op": "ping"})["result"])
            try:
                blocking.send(create("b1"))
            except CommandRejected as exc:
                out.append(str(exc))
        with pytest.raises(ConnectionLost, match="closed"):
            blocking.ping()
        return out

    assert await trio.to_thread.run_sync(script) == [
        1,
        "Name b1",
        ["UserCreated"],
        1,
        True,
        "pong",
        "user 'b1' already exists",
    ]


async def test_the_blocking_client_from_many_threads(server: Server, engine: Engine) -> None:
    port = server.port
    blocking = await trio.to_thread.run_sync(lambda: BlockingClient("127.0.0.1", port))
    try:
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(partial(trio.to_thread.run_sync, blocking.send, create(f"t{n}")))
    finally:
        await trio.to_thread.run_sync(blocking.close)
    assert engine.head_position == 20
    assert "closed" in repr(blocking)


async def test_the_blocking_client_reports_connect_errors() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]  # nothing listens there once it is closed
    with pytest.raises(OSError):
        await trio.to_thread.run_sync(connect, "127.0.0.1", free)
