"""Refusals a real ``motet serve`` sends over its socket: a request with a
key given twice is a ``bad_request`` naming the key, and a command the full
disk refuses is ``unavailable`` and tells the client to retry later, while
the server stays up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.commands import create_user_request
from tests.support.peer import open_peer


async def test_a_key_given_twice_is_named(motet_server: Any) -> None:
    server = motet_server()
    async with open_peer(server.port) as peer:
        reply = await peer.ask(b'{"id":1,"op":"ping","op":"status"}\n')
        assert reply["id"] == 1
        assert reply["error"]["code"] == "bad_request"
        assert "duplicate key 'op'" in reply["error"]["message"]
        assert (await peer.ask({"id": 2, "op": "ping"}))["result"] == "pong"


async def test_a_full_disk_tells_the_client_to_retry_later(
    motet_server: Any, full_disk: Path
) -> None:
    server = motet_server("--no-metrics", data=full_disk / "store")
    async with open_peer(server.port) as peer, open_peer(server.port) as other:
        assert (await peer.ask({"id": 0, **create_user_request("u1")}))["ok"]
        refusal = None
        for n in range(1, 200):  # 100 KB each: a 4 MiB disk is full long before
            update = {
                "id": n,
                "op": "command",
                "type": "UpdateUser",
                "data": {"user_id": "u1", "name": f"{n}" + "x" * 100_000},
            }
            reply = await peer.ask(update)
            if not reply["ok"]:
                refusal = reply
                break
        assert refusal is not None, "the disk never filled up"
        assert refusal["error"]["code"] == "unavailable"
        message = refusal["error"]["message"]
        assert message.startswith("the disk is full"), message
        assert "retry later" in message
        # The server stays up, for this connection and the others.
        assert (await peer.ask({"id": "p", "op": "ping"}))["result"] == "pong"
        status = await other.ask({"id": "s", "op": "status"})
        # The CreateUser and the n - 1 updates before the refusal, nothing more.
        assert status["result"]["head_position"] == refusal["id"]
    assert server.terminate() == 0
