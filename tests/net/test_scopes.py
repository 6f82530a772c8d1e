"""Token scopes and wrong tokens on the line protocol, over real sockets: the
client token may command, query, ask the status and ping, but not read
streams or subscribe (the events hold every user's password hash); wrong
tokens are counted, logged, answered late and close the connection."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from motet.engine import Engine
from motet.engine.net.server import open_server
from tests.support.commands import create_user_request as create
from tests.support.peer import open_peer
from tests.support.tokens import CLIENT_TOKEN, FULL_TOKEN, auth_failures


async def test_the_client_token_may_command_and_query_but_not_read(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, token=FULL_TOKEN, client_token=CLIENT_TOKEN) as server,
        open_peer(server.port) as peer,
    ):
        assert (await peer.ask({"id": 0, "op": "auth", "token": CLIENT_TOKEN}))["ok"]
        assert (await peer.ask({"id": 1, **create("u1")}))["result"]["position"] == 1
        query = {"op": "query", "type": "GetUserById", "data": {"user_id": "u1"}}
        assert (await peer.ask({"id": 2, **query, "after": 1}))["result"]["name"]
        assert (await peer.ask({"id": 3, "op": "status"}))["ok"]
        assert (await peer.ask({"id": 4, "op": "ping"}))["result"] == "pong"
        for request in (
            {"id": 5, "op": "read", "stream": "User-u1"},
            {"id": 6, "op": "subscribe", "from": 0},
            {"id": 7, "op": "unsubscribe", "subscription": 6},
        ):
            reply = await peer.ask(request)
            assert reply["id"] == request["id"] and reply["ok"] is False, reply
            assert reply["error"]["code"] == "unauthorized"
            message = reply["error"]["message"]
            assert f"{request['op']} needs the full-access token (scope 'full')" in message
            assert "password_hash" not in str(reply)
        # The connection goes on; the full token opens the rest.
        assert (await peer.ask({"id": 8, "op": "auth", "token": FULL_TOKEN}))["ok"]
        events = (await peer.ask({"id": 9, "op": "read", "stream": "User-u1"}))["result"]
        assert [event["type"] for event in events["events"]] == ["UserCreated"]


async def test_the_full_token_may_subscribe(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, token=FULL_TOKEN, client_token=CLIENT_TOKEN) as server,
        open_peer(server.port) as peer,
    ):
        assert (await peer.ask({"id": 0, "op": "auth", "token": FULL_TOKEN}))["ok"]
        assert (await peer.ask({"id": 1, **create("u1")}))["ok"]
        await peer.write({"id": 2, "op": "subscribe", "from": 0})
        assert (await peer.read())["event"]["position"] == 1


def test_the_two_tokens_must_differ() -> None:
    from motet.engine.net.access import Tokens

    with pytest.raises(ValueError, match="must differ"):
        Tokens("same", "same")


async def test_wrong_tokens_are_slow_counted_logged_and_close_the_connection(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    delay = 0.2
    async with open_server(
        engine, port=0, token=FULL_TOKEN, client_token=CLIENT_TOKEN, auth_failure_delay=delay
    ) as server:
        closed: list[bool] = []

        async def guess(connection: int) -> None:
            async with open_peer(server.port) as peer:
                # Pipelined: five guesses, then a sixth line that must go unread.
                await peer.write(
                    *(
                        {"id": n, "op": "auth", "token": f"guess-{connection}-{n}"}
                        for n in range(5)
                    ),
                    {"id": 5, "op": "ping"},
                )
                for n in range(5):
                    reply = await peer.read(timeout=30)
                    assert (reply["id"], reply["error"]["code"]) == (n, "unauthorized")
                closed.append(await peer.eof(timeout=30))

        latencies: list[float] = []

        async def good_client() -> None:
            async with open_peer(server.port) as peer:
                assert (await peer.ask({"op": "auth", "token": CLIENT_TOKEN}))["ok"]
                while len(closed) < 10:
                    started = trio.current_time()
                    assert (await peer.ask({"op": "ping"}))["result"] == "pong"
                    latencies.append(trio.current_time() - started)
                    await trio.sleep(0.05)

        with caplog.at_level(logging.WARNING, logger="motet.auth"):
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(good_client)
                for connection in range(10):
                    nursery.start_soon(guess, connection)
            elapsed = trio.current_time() - started
    # 50 wrong tokens, at most 4 waiting at once, each 0.2 s: >= 2.5 s.
    assert elapsed >= 50 * delay / 4
    assert closed == [True] * 10
    assert auth_failures(engine) == 50
    assert len(latencies) > 10 and max(latencies) < delay
    lines = [record.getMessage() for record in caplog.records if record.name == "motet.auth"]
    # One line at the first failure, then at most one per 10 s.
    assert len(lines) == 1, lines
    assert "1 failed authentication attempt(s) on the line server" in lines[0]
    assert "127.0.0.1" in lines[0]


async def test_a_good_token_is_answered_without_delay(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, token=FULL_TOKEN) as server,
        open_peer(server.port) as peer,
    ):
        started = trio.current_time()
        assert (await peer.ask({"op": "auth", "token": FULL_TOKEN}))["ok"]
        assert trio.current_time() - started < 0.5
    assert auth_failures(engine) == 0


def test_scope_table_defaults_to_full_for_unknown_ops() -> None:
    from motet.engine.net.access import CLIENT, FULL, scope_refusal

    assert scope_refusal(FULL, "forget") is None
    assert scope_refusal(CLIENT, "command") is None
    refused: Any = scope_refusal(CLIENT, "forget")
    assert refused.needed == FULL and refused.code == "unauthorized"
