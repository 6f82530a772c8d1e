"""The TCP server, spoken to with raw JSON lines over real sockets: every op,
every error code, garbage of every kind (hand-written and generated), limits
(line length, connections, in-flight requests, slow subscribers), token auth,
TLS, and a graceful stop."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from motet.actors.projection import Query
from motet.engine import App, Engine, open_engine
from motet.engine.example import app, queries, user, users_projection
from motet.engine.net.protocol import ERROR_CODES
from motet.engine.net.server import Server, open_server, serve_engine
from tests.support.commands import create_user_request as create
from tests.support.commands import place_order_request as order
from tests.support.peer import Peer, open_peer

CODES = set(ERROR_CODES)


def error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False, reply
    assert set(reply["error"]) >= {"code", "message"}
    code, message = reply["error"]["code"], reply["error"]["message"]
    assert code in CODES
    return code, message


def result(reply: dict[str, Any]) -> Any:
    assert reply["ok"] is True, reply
    return reply["result"]


def connect(server: Server) -> AbstractAsyncContextManager[Peer]:
    return open_peer(server.port)


@pytest.fixture
async def peer(server: Server) -> AsyncIterator[Peer]:
    async with connect(server) as peer:
        yield peer


# -- every op --------------------------------------------------------------------------


async def test_ping_and_status(peer: Peer, engine: Engine) -> None:
    assert await peer.ask({"id": 1, "op": "ping"}) == {"id": 1, "ok": True, "result": "pong"}
    status = result(await peer.ask({"id": 2, "op": "status"}))
    assert status["head_position"] == engine.head_position == 0
    assert [p["name"] for p in status["projections"]] == ["users"]
    assert status["projections"][0]["state"] == "running"
    assert status["durability"] == "none"


async def test_command_query_and_read_round_trip(peer: Peer) -> None:
    ack = result(await peer.ask({"id": "c1", **create("u1")}))
    assert ack == {"stream": "User-u1", "version": 1, "position": 1}
    ack = result(await peer.ask({"id": "c2", **order("u1", "o1", 12.5)}))
    assert ack == {"stream": "User-u1", "version": 2, "position": 2}

    reply = await peer.ask(
        {
            "id": "q",
            "op": "query",
            "type": "GetUserById",
            "data": {"user_id": "u1"},
            "after": ack["position"],
            "timeout": 5.0,
        }
    )
    assert reply["id"] == "q"
    assert result(reply) == {
        "user_id": "u1",
        "name": "Name u1",
        "email": "u1@example.org",
        "city": "Oslo",
        "order_count": 1,
        "total_spent": 12.5,
        "last_order_at": result(reply)["last_order_at"],
    }
    assert "password" not in json.dumps(result(reply))
    city = await peer.ask(
        {"id": 5, "op": "query", "type": "GetUsersByCity", "data": {"city": "Oslo"}, "after": 2}
    )
    assert [u["user_id"] for u in result(city)] == ["u1"]

    read = result(await peer.ask({"id": "r", "op": "read", "stream": "User-u1"}))
    assert read["next"] == 2
    first, second = read["events"]
    assert set(first) == {"position", "stream", "version", "type", "time", "data", "metadata"}
    assert first["metadata"] == {}  # no command id, correlation or causation: nulls left out
    assert (first["position"], first["stream"], first["version"]) == (1, "User-u1", 1)
    assert first["type"] == "UserCreated" and first["data"]["user_id"] == "u1"
    assert second["type"] == "OrderPlaced" and second["data"]["amount"] == 12.5
    when = datetime.fromisoformat(first["time"])
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(when.timestamp() - time.time()) < 60

    page = result(await peer.ask({"id": 1, "op": "read", "stream": "User-u1", "from": 1}))
    assert [e["version"] for e in page["events"]] == [2]
    page = result(await peer.ask({"id": 1, "op": "read", "stream": "User-u1", "limit": 1}))
    assert [e["version"] for e in page["events"]] == [1] and page["next"] == 1
    empty = result(await peer.ask({"id": 1, "op": "read", "stream": "User-nobody", "from": 7}))
    assert empty == {"events": [], "next": 7}


async def test_commands_carry_correlation_and_causation_into_event_metadata(
    peer: Peer,
) -> None:
    first = {**create("u1"), "command_id": "c-1", "correlation_id": "flow-9"}
    assert result(await peer.ask({"id": 1, **first}))["position"] == 1
    second = {**order("u1", "o1"), "correlation_id": "flow-9", "causation_id": "c-1"}
    assert result(await peer.ask({"id": 2, **second}))["position"] == 2

    read = result(await peer.ask({"id": 3, "op": "read", "stream": "User-u1"}))
    metadata = [event["metadata"] for event in read["events"]]
    assert metadata == [
        {"command_id": "c-1", "correlation_id": "flow-9"},
        {"correlation_id": "flow-9", "causation_id": "c-1"},
    ]
    await peer.write({"id": "s", "op": "subscribe"})
    subscribed = [(await peer.read())["event"]["metadata"] for _ in range(2)]
    assert subscribed == metadata

    code, message = error(await peer.ask({"id": 4, **create("u2"), "correlation_id": 7}))
    assert code == "bad_request" and "$.correlation_id" in message


async def test_a_retried_command_id_gets_the_first_ack(peer: Peer, engine: Engine) -> None:
    first = result(await peer.ask({"id": 1, "command_id": "k1", **create("u1")}))
    again = result(await peer.ask({"id": 2, "command_id": "k1", **create("u1")}))
    assert first == again
    assert engine.head_position == 1


@pytest.mark.parametrize(
    ("request_id", "echoed"),
    [("abc", "abc"), (7, 7), (1.5, 1.5), (True, True), (None, None), (10**30, 10**30)],
)
async def test_any_scalar_id_is_echoed(peer: Peer, request_id: Any, echoed: Any) -> None:
    assert (await peer.ask({"id": request_id, "op": "ping"}))["id"] == echoed
    reply = await peer.ask({"id": request_id, "op": "nope"})
    assert reply["id"] == echoed and error(reply)[0] == "bad_request"


async def test_a_request_without_id_gets_null(peer: Peer) -> None:
    assert await peer.ask({"op": "ping"}) == {"id": None, "ok": True, "result": "pong"}


# -- every error code ------------------------------------------------------------------


async def test_rejected_conflict_not_found_timeout(peer: Peer) -> None:
    await peer.ask(create("u1"))
    code, message = error(await peer.ask({"id": 1, **create("u1")}))
    assert (code, message) == ("rejected", "user 'u1' already exists")
    code, message = error(await peer.ask({"id": 2, **order("u1", "o1", -5)}))
    assert (code, message) == ("rejected", "amount must be > 0, got -5")

    reply = await peer.ask({"id": 3, "expected_version": 5, **order("u1", "o1")})
    assert error(reply)[0] == "conflict"
    assert reply["error"]["stream"] == "User-u1"
    assert (reply["error"]["expected"], reply["error"]["actual"]) == (5, 1)
    assert "expected version 5" in reply["error"]["message"]

    reply = await peer.ask(
        {"id": 4, "op": "query", "type": "GetUserById", "data": {"user_id": "ghost"}}
    )
    assert error(reply) == ("not_found", "no user 'ghost'")

    reply = await peer.ask(
        {
            "id": 5,
            "op": "query",
            "type": "GetUserById",
            "data": {"user_id": "u1"},
            "after": 10**6,
            "timeout": 0.05,
        }
    )
    code, message = error(reply)
    assert code == "timeout" and "did not reach position 1000000" in message


async def test_unknown_types(peer: Peer) -> None:
    code, message = error(await peer.ask({"id": 1, "op": "command", "type": "Nope", "data": {}}))
    assert code == "unknown_type"
    assert message.startswith("unknown command type 'Nope'; known: CreateUser, DeleteUser")
    code, message = error(await peer.ask({"id": 2, "op": "query", "type": "CreateUser"}))
    assert code == "unknown_type" and "unknown query type 'CreateUser'" in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"user_id": 1}, "Expected `str`, got `int` - at `$.data.user_id`"),
        ({}, "Object missing required field `user_id` - at `$.data`"),
        (
            {"user_id": "u1", "colour": "red"},
            "Object contains unknown field `colour` - at `$.data`",
        ),
        ([1, 2], "Expected `object`, got `array` - at `$.data`"),
        ({"user_id": "u1", "type": "DeleteUser"}, "Invalid value 'DeleteUser' - at `$.data.type`"),
        ({"user_id": ""}, "UpdateUser.user_id must be a non-empty string, got ''"),
    ],
)
async def test_invalid_data_names_the_field(peer: Peer, data: Any, message: str) -> None:
    reply = await peer.ask({"id": 9, "op": "command", "type": "UpdateUser", "data": data})
    assert reply["id"] == 9
    assert error(reply) == ("invalid", message)


async def test_invalid_query_arguments(peer: Peer) -> None:
    reply = await peer.ask({"id": 1, "op": "query", "type": "TopSpenders", "data": {"limit": 0}})
    assert error(reply) == ("invalid", "limit must be between 1 and 1000, got 0")
    reply = await peer.ask({"id": 2, "op": "query", "type": "TopSpenders", "data": {"limit": "x"}})
    assert error(reply) == ("invalid", "Expected `int`, got `str` - at `$.data.limit`")
    reply = await peer.ask({"id": 3, "op": "read", "stream": ""})
    assert error(reply) == ("invalid", "stream must be a non-empty string, got ''")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"hello", "invalid JSON: JSON is malformed: invalid character (byte 0)"),
        (b"", "invalid JSON: the line is empty"),
        (b"   \r", "invalid JSON: the line is empty"),
        (b'{"op": "ping"', "invalid JSON: Input data was truncated"),
        (b'{"op": "ping"} {}', "invalid JSON: JSON is malformed: trailing characters (byte 16)"),
        (b'{"op": "\xff\xfe"}', "invalid JSON: not UTF-8 (invalid start byte at byte 8)"),
        (b"\xc3\x28", "invalid JSON: not UTF-8 (invalid continuation byte at byte 0)"),
        (b"[1, 2]", "a request must be a JSON object, got an array"),
        (b'"ping"', "a request must be a JSON object, got a string"),
        (b"42", "a request must be a JSON object, got a number"),
        (b"null", "a request must be a JSON object, got null"),
        (b"[" * 10_000 + b"]" * 10_000, "the JSON is nested too deeply"),
        (b'{"id": 1, "op": 1e400}', "invalid JSON: a number is out of range"),
    ],
)
async def test_lines_that_are_not_requests(peer: Peer, line: bytes, message: str) -> None:
    reply = await peer.ask(line + b"\n")
    assert reply["id"] is None
    assert error(reply) == ("bad_request", message)
    assert result(await peer.ask({"op": "ping"})) == "pong"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"id": 1}, "the request has no op; expected one of: command, query, read, subscribe"),
        ({"id": 1, "op": "launch"}, "unknown op 'launch'; expected one of: command, query"),
        ({"id": 1, "op": 3}, "unknown op 3; expected one of"),
        (
            {"id": 1, "op": "read"},
            "invalid read request: give a stream, or a category and/or types to read the log by",
        ),
        (
            {"id": 1, "op": "read", "stream": 5},
            "invalid read request: Expected `str | null`, got `int` - at `$.stream`",
        ),
        (
            {"id": 1, "op": "read", "stream": "s", "from": -1},
            "invalid read request: Expected `int` >= 0 - at `$.from`",
        ),
        (
            {"id": 1, "op": "read", "stream": "s", "from": 10**40},
            "invalid read request: Expected `int` <= 9223372036854775807 - at `$.from`",
        ),
        (
            {"id": 1, "op": "read", "stream": "s", "limit": 100_000},
            "invalid read request: Expected `int` <= 10000 - at `$.limit`",
        ),
        (
            {"id": 1, "op": "subscribe", "from": "start"},
            "invalid subscribe request: Expected `int`, got `str` - at `$.from`",
        ),
        (
            {"id": 1, "op": "query", "type": "GetUserById", "timeout": -1},
            "invalid query request: Expected `float` >= 0.0 - at `$.timeout`",
        ),
        (
            {"id": 1, "op": "command", "type": "CreateUser", "expected_verison": 3},
            "invalid command request: Object contains unknown field `expected_verison`",
        ),
        (
            {"id": 1, "op": "command", "type": "CreateUser", "data": [[[]]], "command_id": 7},
            "invalid command request: Expected `str | null`, got `int` - at `$.command_id`",
        ),
    ],
)
async def test_malformed_requests_name_the_problem(
    peer: Peer, request_: dict[str, Any], message: str
) -> None:
    reply = await peer.ask(request_)
    assert reply["id"] == 1
    code, text = error(reply)
    assert code == "bad_request"
    assert text.startswith(message), text


async def test_an_id_that_is_not_a_scalar_is_not_echoed(peer: Peer) -> None:
    reply = await peer.ask({"id": [1], "op": "ping"})
    assert reply["id"] is None
    assert error(reply) == (
        "bad_request",
        "invalid ping request: Expected `bool | int | float | str | null`, got `array` - at `$.id`",
    )


async def test_huge_numbers_and_deep_nesting_in_data(peer: Peer) -> None:
    await peer.ask(create("u1"))
    deep = "[" * 10_000 + "]" * 10_000
    line = '{"id": 1, "op": "command", "type": "CreateUser", "data": ' + deep + "}\n"
    assert error(await peer.ask(line.encode())) == ("bad_request", "the JSON is nested too deeply")
    line = '{"id": 2, "op": "command", "type": "PlaceOrder", "data": {"x": ' + deep + "}}\n"
    assert error(await peer.ask(line.encode())) == ("bad_request", "the JSON is nested too deeply")
    nested = "[" * 100 + "]" * 100
    line = '{"id": 2, "op": "command", "type": "PlaceOrder", "data": {"x": ' + nested + "}}\n"
    code, message = error(await peer.ask(line.encode()))
    assert (code, message) == ("invalid", "Object contains unknown field `x` - at `$.data`")
    for amount, expected in [
        ("1e400", "Number out of range - at `$.data.amount`"),
        ("1" * 500, "Number out of range - at `$.data.amount`"),
        ("-1" + "0" * 30, "amount must be > 0, got -1e+30"),
    ]:
        line = (
            '{"id": 3, "op": "command", "type": "PlaceOrder", '
            '"data": {"user_id": "u1", "order_id": "o1", "amount": ' + amount + "}}\n"
        )
        code, message = error(await peer.ask(line.encode()))
        assert message == expected
        assert code == ("invalid" if "range" in expected else "rejected")
    assert result(await peer.ask({"op": "ping"})) == "pong"


# -- internal errors ---------------------------------------------------------------------


class Explode(msgspec.Struct, frozen=True, kw_only=True, tag="Explode"):
    unencodable: bool = False


def explode(model: Any, query: Explode) -> Any:
    if query.unencodable:
        return object()
    raise RuntimeError("secret detail")


async def test_a_handler_bug_is_internal_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = App(
        aggregates=(user,),
        projections=(users_projection,),
        queries=(*queries, Query(Explode, "users", explode)),
    )
    async with (
        open_engine(None, broken) as engine,
        open_server(engine, port=0) as server,
        connect(server) as peer,
    ):
        with caplog.at_level(logging.ERROR, logger="motet.server"):
            reply = await peer.ask({"id": 1, "op": "query", "type": "Explode"})
        assert error(reply) == (
            "internal",
            "internal error (RuntimeError); see the server's log",
        )
        assert "secret detail" not in json.dumps(reply)
        assert "secret detail" in caplog.text
        reply = await peer.ask(
            {"id": 2, "op": "query", "type": "Explode", "data": {"unencodable": True}}
        )
        assert error(reply)[0] == "internal"
        assert result(await peer.ask({"op": "ping"})) == "pong"


async def test_the_engine_closing_is_unavailable(tmp_path: Path) -> None:
    async with open_engine(None, app) as engine, open_server(engine, port=0) as server:
        engine._closing = True  # what open_engine's exit does first
        async with connect(server) as peer:
            code, message = error(await peer.ask({"id": 1, **create("u1")}))
            assert code == "unavailable" and "closing" in message
        engine._closing = False


# -- garbage never hurts anyone else -------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_request_like = st.fixed_dictionaries(
    {"op": st.sampled_from(["command", "query", "read", "status", "ping", "auth", "x", ""])},
    optional={
        "id": _json,
        "type": st.text() | st.sampled_from(["CreateUser", "PlaceOrder", "GetUserById"]),
        "data": _json,
        "stream": _json,
        "from": _json,
        "limit": _json,
        "token": _json,
        "command_id": _json,
    },
)
_garbage = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(str.encode),
    _json.map(lambda value: json.dumps(value).encode()),
    _request_like.map(lambda value: json.dumps(value).encode()),
    _request_like.map(lambda value: json.dumps(value).encode()[:-3]),
)


def generate_garbage() -> list[bytes]:
    lines: list[bytes] = []

    @settings(max_examples=100, deadline=None, database=None)
    @given(_garbage)
    def collect(line: bytes) -> None:
        lines.append(line.replace(b"\n", b"") + b"\n")

    collect()
    return lines


async def test_generated_garbage_is_answered_while_others_work(
    server: Server, engine: Engine
) -> None:
    garbage = generate_garbage()
    assert len(garbage) >= 50
    commands = [{"id": n, **create(f"g{n}")} for n in range(500)]

    async def junk() -> None:
        async with connect(server) as peer:
            await peer.write(*garbage)
            for _ in garbage:
                reply = await peer.read()
                assert "event" not in reply
                if not reply["ok"]:
                    error(reply)
            assert result(await peer.ask({"op": "ping"})) == "pong"

    async def good() -> None:
        async with connect(server) as peer:
            await peer.write(*commands)
            replies = [await peer.read() for _ in commands]
            assert sorted(r["id"] for r in replies) == list(range(500))
            assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(junk)
            nursery.start_soon(good)
    assert engine.head_position >= 500
    async with connect(server) as peer:
        assert result(await peer.ask({"op": "ping"})) == "pong"


async def test_a_line_over_the_limit_closes_only_that_connection(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, max_line=1000) as server,
        connect(server) as bystander,
    ):
        async with connect(server) as peer:
            assert result(await peer.ask({"op": "ping"})) == "pong"
            exactly = b'{"op": "ping"' + b" " * (1000 - 14) + b"}"
            assert len(exactly) == 1000
            assert result(await peer.ask(exactly + b"\n")) == "pong"

            async def flood() -> None:
                # Far more than the limit and than the socket buffers.
                with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
                    while True:
                        await peer.stream.send_all(b"z" * 65536)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                reply = await peer.read()
                assert reply == {
                    "id": None,
                    "ok": False,
                    "error": {
                        "code": "too_large",
                        "message": "the request line is longer than 1000 bytes",
                    },
                }
                assert await peer.eof()
        assert result(await bystander.ask({"op": "ping"})) == "pong"


async def test_a_line_over_the_limit_with_its_newline(engine: Engine) -> None:
    async with open_server(engine, port=0, max_line=100) as server, connect(server) as peer:
        await peer.write({"id": 1, "op": "ping"}, b"{" + b" " * 200 + b"}\n")
        assert result(await peer.read()) == "pong"
        assert error(await peer.read())[0] == "too_large"
        assert await peer.eof()


# -- pipelining and many connections -------------------------------------------------------


async def test_pipelined_requests_are_matched_by_id(peer: Peer) -> None:
    requests: list[dict[str, Any]] = []
    for n in range(100):
        match n % 4:
            case 0:
                requests.append({"id": f"r{n}", **create(f"p{n}")})
            case 1:
                requests.append({"id": f"r{n}", "op": "ping"})
            case 2:
                requests.append({"id": f"r{n}", "op": "status"})
            case _:
                requests.append({"id": f"r{n}", "op": "command", "type": "Nope"})
    await peer.write(*requests)
    replies = {}
    for _ in requests:
        reply = await peer.read()
        replies[reply["id"]] = reply
    assert set(replies) == {f"r{n}" for n in range(100)}
    for n in range(100):
        reply = replies[f"r{n}"]
        match n % 4:
            case 0:
                assert result(reply)["stream"] == f"User-p{n}"
            case 1:
                assert result(reply) == "pong"
            case 2:
                assert "head_position" in result(reply)
            case _:
                assert error(reply)[0] == "unknown_type"


async def test_in_flight_requests_are_capped_per_connection(engine: Engine) -> None:
    async with open_server(engine, port=0, max_in_flight=2) as server, connect(server) as peer:
        slow = {"op": "query", "type": "GetUserById", "data": {"user_id": "u1"}}
        await peer.write(
            {"id": "a", "after": 10**6, "timeout": 0.3, **slow},
            {"id": "b", "after": 10**6, "timeout": 0.3, **slow},
            {"id": "c", "op": "read", "stream": "User-u1"},
        )
        start = trio.current_time()
        # The read waits behind the two slow queries that fill the cap.
        replies = [await peer.read() for _ in range(3)]
        assert [r["id"] for r in replies][-1] == "c"
        assert trio.current_time() - start >= 0.25
        assert error(replies[0])[0] == "timeout"


async def test_two_hundred_connections_at_once(server: Server, engine: Engine) -> None:
    async def session(n: int) -> None:
        async with connect(server) as peer:
            assert result(await peer.ask({"id": 1, **create(f"c{n}")}))["version"] == 1
            await peer.write({"id": 2, **order(f"c{n}", "o1")}, {"id": 3, **order(f"c{n}", "o2")})
            replies = sorted([await peer.read(), await peer.read()], key=lambda r: r["id"])
            assert [result(r)["version"] for r in replies] == [2, 3]

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(session, n)
    assert engine.head_position == 600
    assert server.statistics().accepted >= 200


async def test_connections_beyond_the_maximum_are_refused(engine: Engine) -> None:
    async with open_server(engine, port=0, max_connections=2) as server:
        async with connect(server) as first, connect(server) as second:
            assert result(await first.ask({"op": "ping"})) == "pong"
            assert result(await second.ask({"op": "ping"})) == "pong"
            async with connect(server) as third:
                await third.write({"id": 1, "op": "ping"})
                assert await third.read() == {
                    "id": None,
                    "ok": False,
                    "error": {"code": "overloaded", "message": "too many connections (max 2)"},
                }
                assert await third.eof()
            assert result(await first.ask({"op": "ping"})) == "pong"
        with trio.fail_after(5):
            while server.statistics().connections:
                await trio.sleep(0.01)
        async with connect(server) as again:
            assert result(await again.ask({"op": "ping"})) == "pong"
        assert server.statistics().refused == 1


# -- auth and TLS --------------------------------------------------------------------------


async def test_a_token_is_required_first(engine: Engine) -> None:
    async with open_server(engine, port=0, token="s3cret-tøken") as server:
        async with connect(server) as peer:
            for request in ({"id": 1, "op": "ping"}, {"id": 2, **create("u1")}):
                code, message = error(await peer.ask(request))
                assert code == "unauthorized" and "authenticate first" in message
            reply = await peer.ask({"id": 3, "op": "auth", "token": "wrong"})
            assert error(reply) == ("unauthorized", "the token is not valid")
            assert error(await peer.ask({"id": 4, "op": "status"}))[0] == "unauthorized"
            assert error(await peer.ask(b"garbage\n"))[0] == "bad_request"
            # Pipelined right behind the auth: applies in order.
            await peer.write(
                {"id": 5, "op": "auth", "token": "s3cret-tøken"}, {"id": 6, **create("u1")}
            )
            assert await peer.read() == {"id": 5, "ok": True, "result": True}
            assert result(await peer.read())["position"] == 1
        assert engine.head_position == 1


async def test_auth_without_a_server_token_is_accepted(peer: Peer) -> None:
    assert result(await peer.ask({"op": "auth", "token": "anything"})) is True


async def test_tls_round_trip(
    engine: Engine, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls_contexts
    async with open_server(engine, port=0, ssl_context=server_context) as server:
        # A plain-text client gets nowhere, and does not disturb the server.
        async with connect(server) as plain:
            await plain.write({"op": "ping"})
            assert await plain.eof()
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", server.port, ssl_context=client_context
        )
        async with stream:
            peer = Peer(stream)
            assert result(await peer.ask({"id": 1, "op": "ping"})) == "pong"
            assert result(await peer.ask({"id": 2, **create("u1")}))["version"] == 1
            await peer.write({"id": 3, "op": "subscribe"})
            assert (await peer.read())["event"]["type"] == "UserCreated"


# -- subscriptions -------------------------------------------------------------------------


async def test_subscribe_catches_up_then_follows_live(peer: Peer, server: Server) -> None:
    for n in range(3):
        await peer.ask(create(f"u{n}"))
    async with connect(server) as watcher:
        await watcher.write({"id": "s", "op": "subscribe", "from": 1})
        caught_up = [(await watcher.read())["event"] for _ in range(2)]
        assert [e["position"] for e in caught_up] == [2, 3]
        assert [e["data"]["user_id"] for e in caught_up] == ["u1", "u2"]
        await peer.ask(order("u0", "o1"))
        live = await watcher.read()
        assert live["id"] == "s"
        assert live["event"]["position"] == 4 and live["event"]["type"] == "OrderPlaced"
        assert live["event"]["stream"] == "User-u0" and live["event"]["version"] == 2
        # Other requests still work on a subscribed connection.
        assert result(await watcher.ask({"id": "p", "op": "ping"})) == "pong"

        reply = await watcher.ask({"id": "s", "op": "subscribe"})
        assert error(reply)[0] == "bad_request" and "already used" in reply["error"]["message"]
        await watcher.write({"id": "u", "op": "unsubscribe", "subscription": "s"})
        assert await watcher.read() == {"id": "u", "ok": True, "result": {"unsubscribed": True}}
        await peer.ask(order("u0", "o2"))
        # Nothing more for "s": the next line is the answer to the next request.
        assert await watcher.ask({"id": "p2", "op": "ping"}) == {
            "id": "p2",
            "ok": True,
            "result": "pong",
        }
        reply = await watcher.ask({"id": "u2", "op": "unsubscribe", "subscription": "s"})
        assert result(reply) == {"unsubscribed": False}


def _small_receive_buffer_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_a_slow_subscriber_is_cut_off_and_writers_keep_going(engine: Engine) -> None:
    async with open_server(engine, port=0, subscriber_buffer=8) as server:
        sock = _small_receive_buffer_socket()
        await sock.connect(("127.0.0.1", server.port))
        async with trio.SocketStream(sock) as stream:
            slow = Peer(stream)
            await slow.write({"id": "s", "op": "subscribe"})
            with trio.fail_after(5):
                while server.statistics().subscriptions == 0:
                    await trio.sleep(0.01)
            # The subscriber reads nothing while ~12 MB of events are written.
            big = "x" * 60_000
            async with connect(server) as writer:
                with trio.fail_after(20):
                    await writer.write(*({"id": n, **create(f"s{n}", big)} for n in range(200)))
                    for _ in range(200):
                        assert result(await writer.read())["version"] == 1
                    while server.statistics().subscribers_cut_off == 0:
                        await trio.sleep(0.01)
            positions = []
            while "event" in (reply := await slow.read()):
                positions.append(reply["event"]["position"])
            assert reply["id"] == "s"
            code, message = error(reply)
            assert code == "overloaded"
            assert "subscription 's' was too slow" in message
            assert reply["error"]["position"] == positions[-1]
            assert positions == list(range(1, len(positions) + 1))
            assert len(positions) < 200
            # The connection itself is still fine.
            assert result(await slow.ask({"id": 1, "op": "ping"})) == "pong"


# -- stopping --------------------------------------------------------------------------------


async def test_stop_answers_what_was_read_then_closes(engine: Engine) -> None:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve_engine, engine, port=0))
        port = server.port
        async with connect(server) as peer:
            await peer.write({"id": "s", "op": "subscribe"})
            await peer.write(*({"id": n, **create(f"u{n}")} for n in range(50)))
            with trio.fail_after(5):
                while server.statistics().requests < 51:
                    await trio.sleep(0.001)
            server.stop(timeout=5)
            server.stop()
            acks, events, last = 0, 0, None
            while (line := await peer.line()) is not None:
                reply = json.loads(line)
                if "event" in reply:
                    events += 1
                elif reply["id"] == "s":
                    last = reply
                else:
                    assert result(reply)["version"] == 1
                    acks += 1
            assert acks == 50
            assert last is not None
            assert error(last) == ("unavailable", "the server is shutting down")
    # serve_engine returned by itself: the nursery closed without cancelling it.
    assert engine.head_position == 50
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_stop_cancels_what_outlives_the_timeout(engine: Engine) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(partial(serve_engine, engine, port=0))
            async with connect(server) as peer:
                await peer.write(
                    {
                        "id": 1,
                        "op": "query",
                        "type": "GetUserById",
                        "data": {"user_id": "u"},
                        "after": 99,
                        "timeout": 60,
                    }
                )
                with trio.fail_after(5):
                    while server.statistics().requests < 1:
                        await trio.sleep(0.001)
                start = trio.current_time()
                server.stop(timeout=0.2)
                reply = await peer.read()
                assert reply["id"] == 1
                assert error(reply) == (
                    "unavailable",
                    "the server is shutting down and stopped waiting for this request; "
                    "retry it once the server is back (or on another node)",
                )
                assert await peer.eof()
                assert trio.current_time() - start < 3
