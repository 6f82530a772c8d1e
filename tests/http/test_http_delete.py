"""``DELETE /streams/{stream}``: a tombstone, a hard delete only with the
server's opt-in, and ``GET /streams/{stream}`` saying ``deleted``."""

from __future__ import annotations

from contextlib import aclosing

import trio

from motet.engine import Engine
from motet.engine.net.http import open_http_server
from tests.http.support import Http, user


async def test_delete_writes_a_tombstone_and_refuses_hard_without_the_opt_in(
    http: Http, engine: Engine
) -> None:
    assert (await http.post("/commands/CreateUser", user("u1"))).status == 200

    hard = await http.request("DELETE", "/streams/User-u1?hard=true")
    soft = await http.request("DELETE", "/streams/User-u1")
    read = await http.get("/streams/User-u1")
    refused = await http.post(
        "/commands/PlaceOrder", {"user_id": "u1", "order_id": "o", "amount": 1}
    )
    missing = await http.request("DELETE", "/streams/User-nobody")
    bad = await http.request("DELETE", "/streams/User-u1?hard=maybe")

    assert (hard.status, hard.code) == (401, "unauthorized")
    assert "--allow-hard-delete" in hard.json()["error"]["message"]
    assert soft.status == 200
    assert soft.json()["hard"] is False and soft.json()["version"] == 1
    assert read.json()["deleted"] is True and len(read.json()["events"]) == 1
    assert (refused.status, refused.code) == (410, "rejected")
    assert (missing.status, missing.code) == (404, "not_found")
    assert (bad.status, bad.code) == (400, "bad_request")


async def test_a_hard_delete_with_the_opt_in_removes_the_events(engine: Engine) -> None:
    async with open_http_server(engine, port=0, allow_hard_delete=True) as server:
        http = Http(server.port)
        assert (await http.post("/commands/CreateUser", user("u1"))).status == 200

        hard = await http.request("DELETE", "/streams/User-u1?hard=true")
        read = await http.get("/streams/User-u1")

    assert hard.status == 200 and hard.json()["removed"] == 1
    assert read.json() == {"events": [], "next": 0, "deleted": True}


async def test_the_event_stream_sends_everything_when_the_newest_events_were_removed(
    engine: Engine,
) -> None:
    async with open_http_server(engine, port=0, allow_hard_delete=True) as server:
        http = Http(server.port)
        for user_id in ("u1", "u2", "u3"):
            assert (await http.post("/commands/CreateUser", user(user_id))).status == 200
        assert (await http.request("DELETE", "/streams/User-u3?hard=true")).status == 200

        async with (
            http.connect() as connection,
            aclosing(connection.events("/events?from=0")) as events,
        ):
            ids = []
            with trio.fail_after(5):
                async for event in events:
                    ids.append(event["id"])
                    if len(ids) == 2:
                        break

    assert ids == ["1", "2"]
