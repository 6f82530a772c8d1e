"""Consumer groups over the line protocol, with raw JSON lines on real
sockets: join, ack, nack, leave, replay, skip; filtered subscribe and read;
bad input refused precisely; a dropped connection's events move on."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from motet.engine import Engine
from motet.engine.net.server import Server, open_server
from tests.support.commands import create_user_request as create
from tests.support.commands import place_order_request as order
from tests.support.peer import Peer, open_peer
from tests.support.tokens import CLIENT_TOKEN, FULL_TOKEN


def error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False, reply
    return reply["error"]["code"], reply["error"]["message"]


async def seed(peer: Peer, users: int, orders: int) -> None:
    for u in range(users):
        assert (await peer.ask(create(f"u{u}")))["ok"]
        for o in range(orders):
            assert (await peer.ask(order(f"u{u}", f"o{o}", 5.0)))["ok"]


async def test_join_delivers_filtered_events_and_acks_are_answered(server: Server) -> None:
    async with open_peer(server.port) as peer:
        await seed(peer, users=2, orders=2)
        await peer.write(
            {
                "id": "j",
                "op": "join",
                "group": "mailer",
                "category": "User",
                "types": ["OrderPlaced"],
                "prefetch": 10,
            }
        )
        joined = await peer.read()
        assert joined["id"] == "j" and joined["result"]["member"].startswith("mailer/")
        seen = []
        for _ in range(4):
            line = await peer.read()
            if "event" not in line:
                continue
            event = line["event"]
            assert line["id"] == "j"
            assert set(event) == {
                "position",
                "stream",
                "version",
                "type",
                "time",
                "data",
                "metadata",
            }
            assert event["type"] == "OrderPlaced"
            seen.append((event["stream"], event["version"]))
            await peer.write(
                {
                    "id": f"a{event['position']}",
                    "op": "ack",
                    "group": "mailer",
                    "position": event["position"],
                }
            )
        # Acks are answered with the position once durable.
        with trio.move_on_after(1):
            while True:
                line = await peer.read()
                if "event" in line:
                    seen.append((line["event"]["stream"], line["event"]["version"]))
                    await peer.write(
                        {
                            "id": "x",
                            "op": "ack",
                            "group": "mailer",
                            "position": line["event"]["position"],
                        }
                    )
                else:
                    assert line["ok"] is True, line
        assert sorted(seen) == [("User-u0", 2), ("User-u0", 3), ("User-u1", 2), ("User-u1", 3)]
        status = (await peer.ask({"id": 9, "op": "status"}))["result"]
        [group] = status["groups"]
        assert group["name"] == "mailer" and group["lag_events"] == 0 and group["acked"] == 4
        left = await peer.ask({"id": "l", "op": "leave", "group": "mailer"})
        assert left["result"]["member"] == joined["result"]["member"]


async def test_a_closed_connection_gives_its_unacked_events_to_another_member(
    server: Server,
) -> None:
    async with open_peer(server.port) as feeder:
        await seed(feeder, users=1, orders=1)
    async with open_peer(server.port) as stayer:
        async with open_peer(server.port) as quitter:
            await quitter.write({"id": 1, "op": "join", "group": "g", "types": ["OrderPlaced"]})
            assert (await quitter.read())["ok"]
            taken = await quitter.read()
            assert taken["event"]["stream"] == "User-u0"
            await stayer.write({"id": 1, "op": "join", "group": "g", "types": ["OrderPlaced"]})
            assert (await stayer.read())["ok"]
        # The quitter closed its connection without acking.
        again = await stayer.read()
        assert again["event"]["position"] == taken["event"]["position"]
        reply = await stayer.ask(
            {"id": 2, "op": "ack", "group": "g", "position": again["event"]["position"]}
        )
        assert reply["result"] == {"position": again["event"]["position"]}


async def test_parked_events_are_listed_and_replayed_or_skipped(
    server: Server, engine: Engine
) -> None:
    async with open_peer(server.port) as peer:
        await seed(peer, users=1, orders=2)
        await peer.write({"id": "j", "op": "join", "group": "g", "types": ["OrderPlaced"]})
        assert (await peer.read())["ok"]
        first = (await peer.read())["event"]["position"]
        for attempt in range(engine.groups.max_attempts):
            reply = await peer.ask(
                {
                    "id": f"n{attempt}",
                    "op": "nack",
                    "group": "g",
                    "position": first,
                    "error": "smtp down",
                }
            )
            assert reply["result"] == {"position": first}
            if attempt + 1 < engine.groups.max_attempts:
                again = await peer.read()
                assert again["event"]["position"] == first
        # Parked: the stream moves on to its next event.
        following = await peer.read()
        assert following["event"]["position"] > first
        status = (await peer.ask({"id": "s", "op": "status"}))["result"]
        [parked] = status["groups"][0]["parked"]
        assert parked["position"] == first and parked["error"] == "smtp down"
        assert parked["attempts"] == engine.groups.max_attempts
        await peer.ask(
            {"id": "a", "op": "ack", "group": "g", "position": following["event"]["position"]}
        )
        replay = await peer.ask({"id": "r", "op": "replay", "group": "g", "position": first})
        assert replay["result"]["replaying"] is True
        replayed = await peer.read()
        assert replayed["event"]["position"] == first
        await peer.ask({"id": "a2", "op": "ack", "group": "g", "position": first})
        status = (await peer.ask({"id": "s2", "op": "status"}))["result"]
        assert status["groups"][0]["parked"] == []
        code, message = error(
            await peer.ask({"id": "k", "op": "skip", "group": "g", "position": first})
        )
        assert code == "not_found"
        assert message == f"group 'g' has no parked event at position {first} (parked: none)"


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            {"op": "join"},
            "bad_request",
            "invalid join request: Object missing required field `group`",
        ),
        (
            {"op": "join", "group": 7},
            "bad_request",
            "invalid join request: Expected `str`, got `int` - at `$.group`",
        ),
        (
            {"op": "join", "group": "g", "prefetch": 0},
            "bad_request",
            "invalid join request: Expected `int` >= 1 - at `$.prefetch`",
        ),
        (
            {"op": "join", "group": "g", "types": "OrderPlaced"},
            "bad_request",
            "invalid join request: Expected `array | null`, got `str` - at `$.types`",
        ),
        (
            {"op": "join", "group": "g", "category": "User-1"},
            "invalid",
            "category is the part of a stream id before its first '-', so it cannot contain "
            "'-', got 'User-1'",
        ),
        ({"op": "join", "group": ""}, "invalid", "group must be a non-empty string, got ''"),
        (
            {"op": "join", "group": "g", "colour": "red"},
            "bad_request",
            "invalid join request: Object contains unknown field `colour`",
        ),
        (
            {"op": "ack", "group": "g", "position": 0},
            "bad_request",
            "invalid ack request: Expected `int` >= 1 - at `$.position`",
        ),
        (
            {"op": "ack", "group": "g", "position": 3},
            "not_found",
            "this connection is not a member of group 'g': join it first "
            '({"op": "join", "group": ...})',
        ),
        (
            {"op": "nack", "group": "g", "position": 3, "retry_after": -1},
            "bad_request",
            "invalid nack request: Expected `float` >= 0.0 - at `$.retry_after`",
        ),
        (
            {"op": "leave", "group": "g"},
            "not_found",
            "this connection is not a member of group 'g': join it first "
            '({"op": "join", "group": ...})',
        ),
        (
            {"op": "replay", "group": "nobody", "position": 3},
            "not_found",
            "no consumer group 'nobody'; known: none",
        ),
        (
            {"op": "read", "from": 0},
            "bad_request",
            "invalid read request: give a stream, or a category and/or types to read the log by",
        ),
        (
            {"op": "read", "types": []},
            "invalid",
            "types must name at least one event type (or be left out)",
        ),
    ],
)
async def test_bad_group_requests_are_refused_precisely(
    server: Server, request_: dict[str, Any], code: str, message: str
) -> None:
    async with open_peer(server.port) as peer:
        reply = await peer.ask({"id": 1, **request_})
        assert reply["id"] == 1
        assert error(reply) == (code, message)
        assert (await peer.ask({"id": 2, "op": "ping"}))["result"] == "pong"


async def test_acking_an_event_not_in_flight_names_the_member(server: Server) -> None:
    async with open_peer(server.port) as peer:
        await peer.write({"id": 1, "op": "join", "group": "g"})
        member = (await peer.read())["result"]["member"]
        code, message = error(await peer.ask({"id": 2, "op": "ack", "group": "g", "position": 5}))
        assert code == "not_found"
        assert message.startswith(f"position 5 is not in flight for member {member} of group 'g'")
        code, message = error(await peer.ask({"id": 3, "op": "join", "group": "g"}))
        assert (code, message) == (
            "bad_request",
            "this connection is already a member of group 'g' (join request 1); leave it first",
        )


async def test_subscribe_and_read_take_category_and_type_filters(server: Server) -> None:
    async with open_peer(server.port) as peer:
        await seed(peer, users=3, orders=2)
        page = await peer.ask({"id": 1, "op": "read", "types": ["UserCreated"], "limit": 2})
        events = page["result"]["events"]
        assert [(e["stream"], e["type"]) for e in events] == [
            ("User-u0", "UserCreated"),
            ("User-u1", "UserCreated"),
        ]
        assert page["result"]["next"] == events[-1]["position"]
        rest = await peer.ask(
            {"id": 2, "op": "read", "types": ["UserCreated"], "from": page["result"]["next"]}
        )
        assert [e["stream"] for e in rest["result"]["events"]] == ["User-u2"]
        assert rest["result"]["next"] == 9
        none = await peer.ask({"id": 3, "op": "read", "category": "Order"})
        assert none["result"] == {"events": [], "next": 9}
        orders = await peer.ask(
            {"id": 4, "op": "read", "stream": "User-u1", "types": ["OrderPlaced"]}
        )
        assert [e["version"] for e in orders["result"]["events"]] == [2, 3]
        assert orders["result"]["next"] == 3
        await peer.write(
            {"id": "s", "op": "subscribe", "types": ["OrderPlaced"], "category": "User"}
        )
        lines = await peer.read_many(6)
        assert [line["event"]["type"] for line in lines] == ["OrderPlaced"] * 6
        await peer.write(create("u9"), order("u9", "late", 1.0))
        for line in await peer.read_many(3):
            if "event" in line:
                assert (line["event"]["stream"], line["event"]["type"]) == (
                    "User-u9",
                    "OrderPlaced",
                )


async def test_group_ops_need_the_full_access_token(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, token=FULL_TOKEN, client_token=CLIENT_TOKEN) as server,
        open_peer(server.port) as peer,
    ):
        assert (await peer.ask({"id": 0, "op": "auth", "token": CLIENT_TOKEN}))["ok"]
        for request in (
            {"id": 1, "op": "join", "group": "g"},
            {"id": 2, "op": "ack", "group": "g", "position": 1},
            {"id": 3, "op": "nack", "group": "g", "position": 1},
            {"id": 4, "op": "leave", "group": "g"},
            {"id": 5, "op": "replay", "group": "g", "position": 1},
            {"id": 6, "op": "skip", "group": "g", "position": 1},
        ):
            code, message = error(await peer.ask(request))
            assert code == "unauthorized"
            assert f"{request['op']} needs the full-access token (scope 'full')" in message
        assert engine.status().groups == []


async def test_a_group_can_be_joined_again_right_after_leaving_it(server: Server) -> None:
    # The leave and the next join in one write: the second join is read
    # before the first membership's task has ended, and must not be refused.
    async with open_peer(server.port) as peer:
        await seed(peer, users=1, orders=0)
        first = await peer.ask({"id": "j1", "op": "join", "group": "again", "category": "User"})
        assert first["ok"] is True, first
        await peer.write(
            {"id": "l", "op": "leave", "group": "again"},
            {"id": "j2", "op": "join", "group": "again", "category": "User"},
        )
        replies = {}
        with trio.fail_after(10):
            while "j2" not in replies or "l" not in replies:
                line = await peer.read()
                if "event" not in line:
                    replies[line["id"]] = line
        assert replies["l"]["ok"] is True, replies["l"]
        assert replies["j2"]["ok"] is True, replies["j2"]
        assert replies["j2"]["result"]["member"] != first["result"]["member"]
