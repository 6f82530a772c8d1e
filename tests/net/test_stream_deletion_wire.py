"""Deleting streams and applying retention over the line protocol: the
``delete_stream`` and ``apply_retention`` ops (full-access token only, hard
deletes only with the server's opt-in) and ``read`` saying ``deleted``."""

from __future__ import annotations

import dataclasses
from typing import Any

from motet.engine import Engine, Retention, open_engine
from motet.engine.example import app, user
from motet.engine.net.server import Server, open_server
from tests.support.commands import create_user_request as create
from tests.support.commands import place_order_request as order
from tests.support.peer import open_peer


def result(reply: dict[str, Any]) -> Any:
    assert reply["ok"] is True, reply
    return reply["result"]


def error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False, reply
    return reply["error"]["code"], reply["error"]["message"]


async def test_a_soft_deleted_stream_refuses_commands_over_the_protocol(server: Server) -> None:
    async with open_peer(server.port) as peer:
        result(await peer.ask({"id": 1, **create("u1")}))
        result(await peer.ask({"id": 2, **create("u2")}))

        deleted = result(await peer.ask({"id": 3, "op": "delete_stream", "stream": "User-u1"}))
        refused = await peer.ask({"id": 4, **order("u1", "o1", 5.0)})
        other = await peer.ask({"id": 5, **order("u2", "o1", 5.0)})
        read = result(await peer.ask({"id": 6, "op": "read", "stream": "User-u1"}))
        live = result(await peer.ask({"id": 7, "op": "read", "stream": "User-u2"}))

    assert deleted["stream"] == "User-u1"
    assert (deleted["version"], deleted["hard"], deleted["removed"]) == (1, False, 0)
    assert deleted["deleted_at"].endswith("Z")
    assert error(refused) == ("rejected", "stream 'User-u1' was deleted and takes no more events")
    assert result(other)["version"] == 2
    assert read["deleted"] is True and len(read["events"]) == 1
    assert "deleted" not in live


async def test_a_hard_delete_is_refused_without_the_servers_opt_in(
    server: Server, engine: Engine
) -> None:
    async with open_peer(server.port) as peer:
        result(await peer.ask({"id": 1, **create("u1")}))
        reply = await peer.ask({"id": 2, "op": "delete_stream", "stream": "User-u1", "hard": True})

    code, message = error(reply)
    assert code == "unauthorized"
    assert "--allow-hard-delete" in message
    assert engine.store.stream_deletion("User-u1") is None
    assert len(engine.store.read_stream("User-u1")) == 1


async def test_a_hard_delete_with_the_opt_in_removes_the_events(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, allow_hard_delete=True) as server,
        open_peer(server.port) as peer,
    ):
        result(await peer.ask({"id": 1, **create("u1")}))
        result(await peer.ask({"id": 2, **create("u2")}))
        deleted = result(
            await peer.ask({"id": 3, "op": "delete_stream", "stream": "User-u1", "hard": True})
        )
        read = result(await peer.ask({"id": 4, "op": "read", "stream": "User-u1"}))
        again = await peer.ask({"id": 5, **create("u1")})
        missing = await peer.ask({"id": 6, "op": "delete_stream", "stream": "User-nobody"})
        bad = await peer.ask({"id": 7, "op": "delete_stream", "stream": "User-u2", "hard": 1})

    assert (deleted["hard"], deleted["removed"]) == (True, 1)
    assert read == {"events": [], "next": 0, "deleted": True}
    assert error(again)[0] == "rejected"
    assert error(missing) == (
        "not_found",
        "stream 'User-nobody' has no events: there is nothing to delete",
    )
    assert error(bad)[0] == "bad_request"
    assert [e.stream for e in engine.store.read_all()] == ["User-u2"]


async def test_deleting_and_retention_need_the_full_access_token(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, token="full", client_token="client") as server,
        open_peer(server.port) as peer,
    ):
        result(await peer.ask({"id": 0, "op": "auth", "token": "client"}))
        result(await peer.ask({"id": 1, **create("u1")}))
        delete = await peer.ask({"id": 2, "op": "delete_stream", "stream": "User-u1"})
        retention = await peer.ask({"id": 3, "op": "apply_retention"})

    assert error(delete)[0] == error(retention)[0] == "unauthorized"
    assert "delete_stream needs the full-access token" in error(delete)[1]
    assert engine.store.stream_deletion("User-u1") is None


async def test_apply_retention_over_the_protocol(tmp_path: Any) -> None:
    kept = dataclasses.replace(user, snapshot_every=2, retention=Retention(compact=True))
    retaining = dataclasses.replace(app, aggregates=(kept,))
    async with (
        open_engine(tmp_path / "data", retaining, durability="none") as engine,
        open_server(engine, port=0) as server,
        open_peer(server.port) as peer,
    ):
        result(await peer.ask({"id": 1, **create("u1")}))
        for n in range(3):
            result(await peer.ask({"id": 2 + n, **order("u1", f"o{n}", 1.0)}))
        applied = result(await peer.ask({"id": 9, "op": "apply_retention"}))

    assert applied == {"streams": 1, "truncated": 1, "removed": 4, "by_category": {"User": 4}}


async def test_a_subscription_past_a_removed_tail_lets_the_next_one_catch_up(
    engine: Engine,
) -> None:
    async with (
        open_server(engine, port=0, allow_hard_delete=True) as server,
        open_peer(server.port) as peer,
    ):
        for user_id in ("u1", "u2", "u3"):
            result(await peer.ask({"id": user_id, **create(user_id)}))
        result(
            await peer.ask({"id": "d", "op": "delete_stream", "stream": "User-u3", "hard": True})
        )

        # One subscription per connection catches up at a time: the first
        # must count as live once it has read up to the head, though the
        # last event it got (2) is below the head (3).
        await peer.write({"id": "s1", "op": "subscribe", "from": 0})
        first = await peer.read_many(2)
        await peer.write({"id": "s2", "op": "subscribe", "from": 0})
        second = await peer.read_many(2, timeout=5)

    assert [(r["id"], r["event"]["position"]) for r in first] == [("s1", 1), ("s1", 2)]
    assert [(r["id"], r["event"]["position"]) for r in second] == [("s2", 1), ("s2", 2)]


async def test_the_clients_delete_streams(engine: Engine) -> None:
    from motet.engine import StreamDeleted, Unauthorized, open_client

    async with open_server(engine, port=0) as server:
        async with open_client("127.0.0.1", server.port) as client:
            await client.request(create("u1"))
            deleted = await client.delete_stream("User-u1")
            try:
                await client.delete_stream("User-u1", hard=True)
            except Unauthorized as exc:
                refused: Exception = exc
        async with open_client("127.0.0.1", server.port) as client:
            reply = await client.request(order("u1", "o1", 1.0))

    assert (deleted.stream, deleted.hard, deleted.version) == ("User-u1", False, 1)
    assert "--allow-hard-delete" in str(refused)
    assert reply["error"]["code"] == StreamDeleted.code == "rejected"
