"""The real ``motet serve`` process, spoken to over raw sockets.

Each test starts the console script as a user would (``motet_server`` in
conftest.py) and talks the line protocol of docs/design.md with hand-written JSON
lines: every op, every error code, token authentication, TLS, a graceful stop
by SIGTERM with requests in flight, and a SIGKILL under load after which every
acknowledged command is still in the log where its Ack said.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import trio

from motet.storage import LmdbStore
from tests.support.commands import create_user_request, place_order_request
from tests.support.peer import Peer
from tests.support.peer import open_peer as connect


def create(
    user_id: str, request_id: Any = None, name: str = "Ann Lee", **fields: Any
) -> dict[str, Any]:
    return {"id": request_id, **create_user_request(user_id, name, **fields)}


def order(
    user_id: str, order_id: str, request_id: Any = None, amount: float = 10
) -> dict[str, Any]:
    return {"id": request_id, **place_order_request(user_id, order_id, amount)}


def error(reply: dict[str, Any], code: str, request_id: Any) -> str:
    """Check that ``reply`` is an error with ``code`` for ``request_id``; return its message."""
    assert reply["id"] == request_id, reply
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == code, reply
    message: str = reply["error"]["message"]
    return message


def ok(reply: dict[str, Any], request_id: Any) -> Any:
    assert reply == {"id": request_id, "ok": True, "result": reply.get("result")}, reply
    return reply["result"]


# --- every op ------------------------------------------------------------------------


async def test_every_op_against_the_real_process(motet_server: Any) -> None:
    server = motet_server()
    async with connect(server.port) as peer, connect(server.port) as other:
        assert ok(await peer.ask({"id": "p", "op": "ping"}), "p") == "pong"

        # command: the Ack, and a retry with the same command_id gets the same Ack
        ack = ok(await peer.ask({**create("u1", 1), "command_id": "c-1"}), 1)
        assert ack == {"stream": "User-u1", "version": 1, "position": 1}
        assert ok(await peer.ask({**create("u1", 2), "command_id": "c-1"}), 2) == ack
        ack = ok(await peer.ask({**order("u1", "o1", 3), "expected_version": 1}), 3)
        assert ack == {"stream": "User-u1", "version": 2, "position": 2}

        # query after a position sees that write
        user = ok(
            await peer.ask(
                {
                    "id": 4,
                    "op": "query",
                    "type": "GetUserById",
                    "data": {"user_id": "u1"},
                    "after": 2,
                    "timeout": 5,
                }
            ),
            4,
        )
        assert user == {
            "user_id": "u1",
            "name": "Ann Lee",
            "email": "u1@example.org",
            "city": "Oslo",
            "order_count": 1,
            "total_spent": 10.0,
            "last_order_at": user["last_order_at"],
        }
        assert user["last_order_at"].endswith("Z")

        # subscribe: the catch-up events, then live ones
        await peer.write({"id": "sub", "op": "subscribe", "from": 1})
        caught_up = await peer.read()
        assert caught_up["id"] == "sub"
        assert {k: caught_up["event"][k] for k in ("position", "stream", "version", "type")} == {
            "position": 2,
            "stream": "User-u1",
            "version": 2,
            "type": "OrderPlaced",
        }
        assert caught_up["event"]["data"]["order_id"] == "o1"
        assert caught_up["event"]["time"].endswith("Z")
        for n in range(2, 5):
            ok(await other.ask(order("u1", f"o{n}", n)), n)
        live = await peer.read_many(3)
        assert [(e["id"], e["event"]["position"]) for e in live] == [("sub", p) for p in (3, 4, 5)]
        assert [e["event"]["data"]["order_id"] for e in live] == ["o2", "o3", "o4"]
        assert ok(await peer.ask({"id": 9, "op": "unsubscribe", "subscription": "sub"}), 9) == {
            "unsubscribed": True
        }

        # read: versions above `from`, at most `limit`, and `next` to page on
        page = ok(
            await peer.ask({"id": 10, "op": "read", "stream": "User-u1", "from": 1, "limit": 2}),
            10,
        )
        assert [e["version"] for e in page["events"]] == [2, 3]
        assert [e["position"] for e in page["events"]] == [2, 3]
        assert page["next"] == 3
        page = ok(await peer.ask({"id": 11, "op": "read", "stream": "User-u1", "from": 3}), 11)
        assert [e["version"] for e in page["events"]] == [4, 5]
        assert page["events"][0]["data"]["order_id"] == "o3"
        empty = ok(await peer.ask({"id": 12, "op": "read", "stream": "User-nobody"}), 12)
        assert empty == {"events": [], "next": 0}

        # status
        status = ok(await peer.ask({"id": 13, "op": "status"}), 13)
        assert status["head_position"] == 5
        assert status["durability"] == "sync"
        assert status["commands"] == ["CreateUser", "DeleteUser", "PlaceOrder", "UpdateUser"]
        assert "GetUserById" in status["queries"]
        assert [p["name"] for p in status["projections"]] == ["users"]

        # every JSON scalar is a valid id, echoed as it was sent
        for request_id in ("text", 7, 2.5, 7.0, True, False, None):
            echoed = (await peer.ask({"id": request_id, "op": "ping"}))["id"]
            assert (type(echoed), echoed) == (type(request_id), request_id)
        assert (await peer.ask({"op": "ping"}))["id"] is None

    metrics = await trio.to_thread.run_sync(_http_get, server.metrics_port)
    assert "motet_log_head_position 5.0" in metrics


def _http_get(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


# --- every error code ------------------------------------------------------------------


async def test_every_error_code_against_the_real_process(motet_server: Any) -> None:
    server = motet_server()
    async with connect(server.port) as peer, connect(server.port) as bystander:
        ok(await peer.ask(create("u1", "setup")), "setup")
        # bad_request: unreadable lines get id null, readable ones their id
        assert "invalid JSON" in error(await peer.ask(b"this is not json\n"), "bad_request", None)
        assert "must be a JSON object, got an array" in error(
            await peer.ask(b"[1, 2]\n"), "bad_request", None
        )
        assert "has no op" in error(await peer.ask({"id": 1}), "bad_request", 1)
        assert "unknown op 'frob'" in error(
            await peer.ask({"id": 2, "op": "frob"}), "bad_request", 2
        )
        assert "$.from" in error(
            await peer.ask({"id": 3, "op": "read", "stream": "User-u1", "from": -1}),
            "bad_request",
            3,
        )
        assert "$.limit" in error(
            await peer.ask({"id": 4, "op": "read", "stream": "User-u1", "limit": 0}),
            "bad_request",
            4,
        )
        error(await peer.ask({"id": {"not": "scalar"}, "op": "ping"}), "bad_request", None)
        assert "expected_versoin" in error(
            await peer.ask({**order("u1", "x", 5), "expected_versoin": 1}), "bad_request", 5
        )

        # unknown_type, for commands and queries
        assert "'Frobnicate'" in error(
            await peer.ask({"id": 6, "op": "command", "type": "Frobnicate", "data": {}}),
            "unknown_type",
            6,
        )
        assert "'GetNothing'" in error(
            await peer.ask({"id": 7, "op": "query", "type": "GetNothing", "data": {}}),
            "unknown_type",
            7,
        )

        # invalid: the message names the field
        bad = create("u2", 8)
        bad["data"]["user_id"] = 42
        assert "$.data.user_id" in error(await peer.ask(bad), "invalid", 8)
        message = error(
            await peer.ask(
                {"id": 9, "op": "command", "type": "CreateUser", "data": {"user_id": "u3"}}
            ),
            "invalid",
            9,
        )
        assert "name" in message and "$.data" in message
        assert "$.data.amount" in error(
            await peer.ask(
                {**order("u1", "o", 10), "data": {**order("u1", "o")["data"], "amount": "lots"}}
            ),
            "invalid",
            10,
        )

        # rejected by the domain
        assert error(await peer.ask(order("ghost", "o", 11)), "rejected", 11) == (
            "user 'ghost' does not exist"
        )
        assert "amount must be > 0, got -5" in error(
            await peer.ask(order("u1", "o", 12, amount=-5)), "rejected", 12
        )

        # conflict, with its details
        reply = await peer.ask({**order("u1", "o", 13), "expected_version": 7})
        error(reply, "conflict", 13)
        assert reply["error"] | {"message": ""} == {
            "code": "conflict",
            "message": "",
            "stream": "User-u1",
            "expected": 7,
            "actual": 1,
        }

        # not_found
        assert "'nobody'" in error(
            await peer.ask(
                {"id": 14, "op": "query", "type": "GetUserById", "data": {"user_id": "nobody"}}
            ),
            "not_found",
            14,
        )

        # timeout: the projection never reaches that position
        started = time.monotonic()
        error(
            await peer.ask(
                {
                    "id": 15,
                    "op": "query",
                    "type": "GetUserById",
                    "data": {"user_id": "u1"},
                    "after": 10**9,
                    "timeout": 0.2,
                }
            ),
            "timeout",
            15,
        )
        assert 0.2 <= time.monotonic() - started < 5

        # too_large: that connection gets one reply and is closed ...
        await peer.write(b'{"id": 16, "op": "ping", "pad": "' + b"x" * (1 << 20) + b'"}\n')
        error(await peer.read(), "too_large", None)
        assert await peer.wait_closed() == b""

        # ... but nothing of the above disturbed another connection or the server
        assert ok(await bystander.ask({"id": "still", "op": "ping"}), "still") == "pong"
        status = ok(await bystander.ask({"id": "s", "op": "status"}), "s")
        assert status["head_position"] == 1
    assert server.process.poll() is None


async def test_overloaded_beyond_max_connections(motet_server: Any) -> None:
    server = motet_server("--max-connections", "1")

    async def admitted() -> trio.SocketStream:
        """A connection the server took: the readiness probe's may still be closing."""
        with trio.fail_after(10):
            while True:
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                reply = await Peer(stream).ask({"id": "in?", "op": "ping"})
                if reply.get("ok"):
                    return stream
                error(reply, "overloaded", None)
                await stream.aclose()
                await trio.sleep(0.05)

    async with await admitted() as first_stream:
        first = Peer(first_stream)
        async with connect(server.port) as second:
            message = error(await second.read(), "overloaded", None)
            assert message == "too many connections (max 1)"
            assert await second.wait_closed() == b""
        assert ok(await first.ask({"id": 2, "op": "ping"}), 2) == "pong"
    async with await admitted():  # the slot is free again
        pass


# --- token and TLS ---------------------------------------------------------------------


async def test_token_from_a_file(motet: Any, motet_server: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = motet_server("--token-file", str(token_file))
    async with connect(server.port) as peer:
        assert "authenticate first" in error(
            await peer.ask({"id": 1, "op": "ping"}), "unauthorized", 1
        )
        error(await peer.ask(create("u1", 2)), "unauthorized", 2)
        assert (
            error(await peer.ask({"id": 3, "op": "auth", "token": "wrong"}), "unauthorized", 3)
            == "the token is not valid"
        )
        # The trailing newline of the file is not part of the token.
        assert ok(await peer.ask({"id": 4, "op": "auth", "token": "s3cret-token"}), 4) is True
        assert ok(await peer.ask(create("u1", 5)), 5)["position"] == 1

    port = str(server.port)
    result = await trio.to_thread.run_sync(
        lambda: motet.run("client", "--port", port, "--token-file", str(token_file), "ping")
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, '"pong"\n', "")
    result = await trio.to_thread.run_sync(
        lambda: motet.run("client", "--port", port, "ping", env={"MOTET_TOKEN": "s3cret-token"})
    )
    assert (result.returncode, result.stdout) == (0, '"pong"\n')
    result = await trio.to_thread.run_sync(
        lambda: motet.run("client", "--port", port, "--token", "wrong", "ping")
    )
    assert result.returncode == 1
    assert result.stderr.startswith("motet: error: the server refused the token")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    result = await trio.to_thread.run_sync(lambda: motet.run("status", "--port", port))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


async def test_tls_round_trip(motet: Any, motet_server: Any, tls_files: Any) -> None:
    server = motet_server("--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key))
    assert " with TLS " in server.log()
    client_context = ssl.create_default_context(cafile=str(tls_files.ca))
    async with connect(server.port, client_context) as peer:
        assert ok(await peer.ask(create("u1", 1)), 1)["position"] == 1
        assert ok(await peer.ask({"id": 2, "op": "ping"}), 2) == "pong"

    port = str(server.port)
    result = await trio.to_thread.run_sync(
        lambda: motet.run(
            "client",
            "--port",
            port,
            "--tls",
            "--cafile",
            str(tls_files.ca),
            "GetUserById user_id=u1 @after=1",
        )
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["email"] == "u1@example.org"

    # Without trusting the CA, the client refuses the server, in one line.
    result = await trio.to_thread.run_sync(
        lambda: motet.run("client", "--port", port, "--tls", "ping", timeout=20)
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "certificate" in result.stderr.lower()


# --- stopping and crashing -------------------------------------------------------------


async def test_sigterm_answers_requests_in_flight_and_exits_0(
    motet: Any, motet_server: Any
) -> None:
    server = motet_server()
    connections, per_connection = 3, 60
    async with connect(server.port) as a, connect(server.port) as b, connect(server.port) as c:
        peers = [a, b, c]
        for n, peer in enumerate(peers):
            requests = [create(f"u{n}-{k}", f"{n}-{k}") for k in range(per_connection)]
            # The ping is answered inline, in order: its pong means every
            # command before it has been read and is running.
            await peer.write(*requests, {"id": "fence", "op": "ping"})
        replies: list[list[dict[str, Any]]] = [[] for _ in peers]
        for n, peer in enumerate(peers):
            while (reply := await peer.read())["id"] != "fence":
                replies[n].append(reply)
        server.process.send_signal(signal.SIGTERM)
        for n, peer in enumerate(peers):
            while len(replies[n]) < per_connection:
                replies[n].append(await peer.read())
            assert await peer.wait_closed() == b""
    status = await trio.to_thread.run_sync(server.process.wait, 10)
    assert status == 0, server.log()
    assert "SIGTERM received" in server.log() and "stopped cleanly" in server.log()

    acks = {}
    for n in range(connections):
        assert sorted(r["id"] for r in replies[n]) == sorted(
            f"{n}-{k}" for k in range(per_connection)
        )
        for reply in replies[n]:
            ack = ok(reply, reply["id"])
            acks[ack["stream"]] = ack
    assert sorted(ack["position"] for ack in acks.values()) == list(
        range(1, connections * per_connection + 1)
    )

    result = await trio.to_thread.run_sync(
        lambda: motet.run("inspect", "--data", str(server.data), "--json", "--limit", "1000")
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["head_position"] == connections * per_connection
    assert summary["first_streams"] == {stream: 1 for stream in acks}
    # The read model was saved on the way out.
    assert summary["checkpoints"] == {"users": connections * per_connection}


async def test_sigint_stops_gracefully_too(motet_server: Any) -> None:
    server = motet_server("--durability", "none")
    async with connect(server.port) as peer:
        ok(await peer.ask(create("u1", 1)), 1)
        server.process.send_signal(signal.SIGINT)
        assert await peer.wait_closed() == b""
    assert await trio.to_thread.run_sync(server.process.wait, 10) == 0
    assert "SIGINT received" in server.log() and "stopped cleanly" in server.log()
    store = LmdbStore(server.data, readonly=True)
    try:
        assert store.head_position == 1
        checkpoint = store.get_checkpoint("users")
        assert checkpoint is not None and checkpoint.position == 1
    finally:
        store.close()


USERS = 8
CONNECTIONS = 4
IN_FLIGHT = 200
ACKS_BEFORE_KILL = 1_500


async def test_sigkill_under_load_loses_no_acknowledged_command(
    motet: Any, motet_server: Any
) -> None:
    server = motet_server()
    acked: dict[str, dict[str, Any]] = {}  # command_id -> its Ack
    creates: dict[str, dict[str, Any]] = {}
    enough = trio.Event()

    async with connect(server.port) as peer:
        for n in range(USERS):
            request = {**create(f"u{n}", n), "command_id": f"create-{n}"}
            creates[f"create-{n}"] = ok(await peer.ask(request), n)

    async def load(index: int) -> None:
        async with connect(server.port) as peer:
            window = trio.Semaphore(IN_FLIGHT)

            async def send_forever() -> None:
                k = 0
                while True:
                    await window.acquire()
                    order_id = f"c{index}-{k}"
                    request = order(f"u{k % USERS}", order_id, order_id, 1 + k % 5)
                    try:
                        await peer.write({**request, "command_id": order_id})
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # killed: the receiving side reads what is left
                    k += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_forever)
                while True:
                    try:
                        reply = await peer.read()
                    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                        nursery.cancel_scope.cancel()
                        return
                    window.release()
                    acked[reply["id"]] = ok(reply, reply["id"])
                    if len(acked) >= ACKS_BEFORE_KILL:
                        enough.set()

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for index in range(CONNECTIONS):
                nursery.start_soon(load, index)
            await enough.wait()
            server.process.kill()
            await trio.to_thread.run_sync(server.process.wait, 10)
    assert server.process.returncode == -signal.SIGKILL
    assert len(acked) >= ACKS_BEFORE_KILL

    restarted = motet_server()
    async with connect(restarted.port) as peer:
        # Every stream as the log has it, read page by page.
        log: dict[tuple[str, int], dict[str, Any]] = {}
        for n in range(USERS):
            after = 0
            while True:
                page = ok(
                    await peer.ask(
                        {"id": n, "op": "read", "stream": f"User-u{n}", "from": after, "limit": 500}
                    ),
                    n,
                )
                for event in page["events"]:
                    log[(event["stream"], event["version"])] = event
                if not page["events"]:
                    break
                after = page["next"]
        status = ok(await peer.ask({"id": "s", "op": "status"}), "s")
        head = status["head_position"]

        # Positions are gap-free and every stream contiguous.
        assert sorted(event["position"] for event in log.values()) == list(range(1, head + 1))
        for n in range(USERS):
            versions = sorted(v for (stream, v) in log if stream == f"User-u{n}")
            assert versions == list(range(1, len(versions) + 1))

        # No command was appended twice, and the log holds nothing never sent.
        order_ids = [e["data"]["order_id"] for e in log.values() if e["type"] == "OrderPlaced"]
        assert len(order_ids) == len(set(order_ids)) == head - USERS
        assert all(re.fullmatch(r"c[0-3]-\d+", order_id) for order_id in order_ids)

        # Every acknowledged command is where its Ack said.
        for command_id, ack in (acked | creates).items():
            event = log[(ack["stream"], ack["version"])]
            assert event["position"] == ack["position"], (command_id, ack, event)
            if command_id.startswith("create-"):
                assert event["type"] == "UserCreated"
            else:
                assert (event["type"], event["data"]["order_id"]) == ("OrderPlaced", command_id)

        # A retried command gets its first Ack back, even across the crash. A
        # retry is the same command: the same amount (1 + k % 5, k from its id).
        sample = sorted(acked)[:: max(1, len(acked) // 200)]
        await peer.write(
            *(
                {
                    **order(stream.removeprefix("User-"), cid, cid, 1 + int(cid.split("-")[1]) % 5),
                    "command_id": cid,
                }
                for cid in sample
                for stream in [acked[cid]["stream"]]
            )
        )
        for reply in await peer.read_many(len(sample)):
            assert ok(reply, reply["id"]) == acked[reply["id"]]

        # New commands continue the versions and the log.
        last_version = max(v for (stream, v) in log if stream == "User-u0")
        ack = ok(await peer.ask(order("u0", "after-crash", "new")), "new")
        assert ack == {"stream": "User-u0", "version": last_version + 1, "position": head + 1}
    assert restarted.terminate() == 0

    # Offline, the store agrees.
    store = LmdbStore(restarted.data, readonly=True)
    try:
        assert store.head_position == head + 1
    finally:
        store.close()
