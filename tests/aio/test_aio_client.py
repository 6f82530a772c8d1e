"""The asyncio line-protocol client against a real ``motet serve`` on 127.0.0.1:
the trio client's API and error classes, pipelining from many tasks,
subscriptions, token and TLS, a server that goes away; and what importing it
loads."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from datetime import UTC
from typing import Any

import msgspec
import pytest

import motet.engine.net.aio_client as aio_client
from motet.engine import (
    BadRequest,
    CommandRejected,
    Conflict,
    ConnectionLost,
    EngineStatus,
    InvalidMessage,
    NotFound,
    Overloaded,
    QueryTimeout,
    Unauthorized,
    UnknownMessageType,
)
from motet.engine.example import (
    CreateUser,
    GetUserById,
    PlaceOrder,
    TopSpenders,
    UpdateUser,
    UserSummary,
)
from motet.engine.net.aio_client import Client, open_client


class NotRegistered(msgspec.Struct, frozen=True, kw_only=True, tag="NotRegistered"):
    user_id: str


def create(user_id: str) -> CreateUser:
    return CreateUser(
        user_id=user_id, name=f"Name {user_id}", email=f"{user_id}@example.org", password="pw"
    )


def with_client(port: int, body: Callable[[Client], Awaitable[Any]], **options: Any) -> Any:
    async def main() -> Any:
        async with open_client("127.0.0.1", port, **options) as client:
            return await body(client)

    return asyncio.run(main())


@pytest.fixture
def server(motet_server: Any) -> Any:
    """A ``motet serve`` process (example app, durability none)."""
    return motet_server("--durability", "none", "--no-metrics")


def test_send_ask_read_status_ping_and_raw_requests(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(client: Client) -> None:
        ack = await client.send(create("u1"))
        assert (ack.stream, ack.version, ack.position) == ("User-u1", 1, 1)
        order = PlaceOrder(user_id="u1", order_id="o1", amount=20)
        ack = await client.send(order, command_id="k")
        assert await client.send(order, command_id="k") == ack
        found = await client.ask(GetUserById(user_id="u1"), after=ack.position)
        assert (found["name"], found["order_count"], found["total_spent"]) == ("Name u1", 1, 20.0)
        typed = await client.ask(TopSpenders(limit=5), result_type=list[UserSummary])
        assert [u.user_id for u in typed] == ["u1"]

        events = await client.read_stream("User-u1")
        assert [(e.version, e.type) for e in events] == [(1, "UserCreated"), (2, "OrderPlaced")]
        assert events[1].data["amount"] == 20 and events[0].time.utcoffset() == UTC.utcoffset(None)
        assert [e.version for e in await client.read_stream("User-u1", 1)] == [2]
        assert await client.read_stream("User-nobody") == []
        for n in range(5):
            await client.send(PlaceOrder(user_id="u1", order_id=f"p{n}", amount=1))
        monkeypatch.setattr(aio_client, "MAX_READ_LIMIT", 2)
        assert [e.version for e in await client.read_stream("User-u1")] == list(range(1, 8))
        assert [e.version for e in await client.read_stream("User-u1", 2, limit=3)] == [3, 4, 5]

        status = await client.status()
        assert isinstance(status, EngineStatus) and status.head_position == 7
        forgotten = await client.forget("u1")
        assert (forgotten.subject, forgotten.position, forgotten.key_deleted) == ("u1", 8, True)
        assert (await client.read_stream("User-u1"))[0].data["name"] == ""
        with pytest.raises(InvalidMessage, match="subject must be a non-empty string"):
            await client.forget("")
        assert 0 <= await client.ping() < 5
        assert await client.request({"id": "mine", "op": "ping"}) == {
            "id": "mine",
            "ok": True,
            "result": "pong",
        }
        reply = await client.request({"op": "launch"})
        assert reply["id"] is None and reply["error"]["code"] == "bad_request"
        with pytest.raises(ValueError, match="subscribe"):
            await client.request({"op": "subscribe"})
        assert "open" in repr(client)

    with_client(server.port, body)

    async def after_the_block() -> None:
        async with open_client("127.0.0.1", server.port) as client:
            pass
        assert client.closed and "closed" in repr(client)
        with pytest.raises(ConnectionLost, match="the client is closed"):
            await client.ping()

    asyncio.run(after_the_block())


def test_errors_are_the_embedded_api_classes(server: Any) -> None:
    async def body(client: Client) -> None:
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
        with pytest.raises(InvalidMessage, match="must be a non-empty string") as invalid:
            await client.send(UpdateUser(user_id="", name="x"))
        assert isinstance(invalid.value, ValueError)
        with pytest.raises(BadRequest, match=r"Expected `int` >= 0 - at `\$.expected_version`"):
            await client.send(create("u2"), expected_version=-1)
        assert (await client.send(create("u2"))).version == 1

    with_client(server.port, body)


def test_a_thousand_tasks_pipeline_over_one_connection_and_cancel_waits(server: Any) -> None:
    async def body(client: Client) -> None:
        acks = await asyncio.gather(*(client.send(create(f"p{n}")) for n in range(1000)))
        assert sorted(ack.position for ack in acks) == list(range(1, 1001))
        # Cancelling a call stops its wait only; the connection stays usable.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.ask(GetUserById(user_id="p1"), after=5_000, timeout=1)
        assert client._waiting == {}
        assert await client.ping() >= 0

    with_client(server.port, body)


def test_subscriptions_catch_up_follow_end_and_report_slow_consumers(server: Any) -> None:
    async def body(client: Client) -> None:
        for n in range(3):
            await client.send(create(f"u{n}"))
        seen = []
        async with aclosing(client.subscribe(1)) as events:
            async for event in events:
                seen.append(event)
                if event.position == 3:
                    await client.send(PlaceOrder(user_id="u0", order_id="o", amount=5))
                if event.position == 4:
                    break
        assert [e.position for e in seen] == [2, 3, 4]
        assert seen[2].type == "OrderPlaced" and seen[2].data["amount"] == 5
        async with aclosing(client.subscribe()) as first, aclosing(client.subscribe()) as second:
            assert (await anext(first)).position == 1
            assert (await anext(second)).position == 1
        assert client._subscriptions == {}
        assert await client.ping() >= 0

    with_client(server.port, body)

    async def slow(client: Client) -> list[int]:
        for n in range(3, 10):
            await client.send(create(f"u{n}"))
        received: list[int] = []
        with pytest.raises(Overloaded, match="too slow"):
            async with aclosing(client.subscribe()) as events:
                async for event in events:
                    received.append(event.position)
                    await asyncio.sleep(0.1)  # while the other events arrive
        assert await client.ping() >= 0
        return received

    received = with_client(server.port, slow, subscription_buffer=3)
    assert 1 <= len(received) < 11 and received == list(range(1, len(received) + 1))


def test_token(motet_server: Any) -> None:
    server = motet_server("--durability", "none", "--no-metrics", "--token", "t0k")

    async def main() -> None:
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

    asyncio.run(main())


def test_tls(motet_server: Any, tls_files: Any) -> None:
    server = motet_server(
        "--durability", "none", "--no-metrics",
        "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key),
    )  # fmt: skip
    trusting = ssl.create_default_context(cafile=str(tls_files.ca))

    async def main() -> None:
        async with open_client("127.0.0.1", server.port, ssl_context=trusting) as client:
            assert (await client.send(create("u1"))).position == 1
            assert (await client.ask(GetUserById(user_id="u1"), after=1))["user_id"] == "u1"
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            async with open_client(
                "127.0.0.1", server.port, ssl_context=ssl.create_default_context()
            ):
                pass  # pragma: no cover

    asyncio.run(main())


def test_a_server_that_dies_fails_waiting_calls_with_connection_lost(server: Any) -> None:
    async def main() -> None:
        async with open_client("127.0.0.1", server.port) as client:
            waiting = asyncio.create_task(
                client.ask(GetUserById(user_id="u"), after=50, timeout=30)
            )
            subscription = aclosing(client.subscribe())
            events = await subscription.__aenter__()
            await asyncio.sleep(0.1)
            await asyncio.to_thread(server.kill)
            with pytest.raises(ConnectionLost):
                await waiting
            with pytest.raises(ConnectionLost):
                await anext(events)
            await subscription.__aexit__(None, None, None)
            assert client.closed
            with pytest.raises(ConnectionLost):
                await client.ping()
        with pytest.raises(ConnectionLost, match="the server closed the connection"):
            await client.ping()
        with pytest.raises(OSError):
            async with open_client("127.0.0.1", server.port):
                pass  # pragma: no cover

    asyncio.run(main())


FORBIDDEN = ("trio", "lmdb", "prometheus_client", "motet.actors")


def loaded_by(statement: str) -> list[str]:
    """The modules in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


def offending(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_importing_the_client_loads_no_trio_lmdb_prometheus_or_runtime() -> None:
    assert offending(loaded_by("import motet.engine.net.aio_client")) == []
