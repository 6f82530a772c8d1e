"""GET /events: Server-Sent Events, catch-up then live, resumed with Last-Event-ID."""

from __future__ import annotations

import json
from functools import partial

import trio

from motet.engine import Engine
from motet.engine.net.http import HttpServer, open_http_server, serve_http
from tests.http.support import Http, user


async def _create(http: Http, *ids: str) -> None:
    for user_id in ids:
        assert (await http.post("/commands/CreateUser", user(user_id))).status == 200


async def test_catch_up_then_live(http: Http) -> None:
    await _create(http, "u1", "u2")
    async with http.connect() as connection:
        events = connection.events("/events?from=0")
        with trio.fail_after(5):
            first = await anext(events)
            second = await anext(events)
            assert (first["id"], second["id"]) == ("1", "2")
            event = json.loads(first["data"])
            assert (event["position"], event["stream"], event["type"]) == (
                1,
                "User-u1",
                "UserCreated",
            )
            assert event["version"] == 1
            await _create(http, "u3")  # live: arrives without asking again
            live = await anext(events)
            assert live["id"] == "3"
            assert json.loads(live["data"])["stream"] == "User-u3"
        await events.aclose()


async def test_from_is_an_exclusive_lower_bound(http: Http) -> None:
    await _create(http, "u1", "u2", "u3")
    async with http.connect() as connection:
        events = connection.events("/events?from=2")
        with trio.fail_after(5):
            assert (await anext(events))["id"] == "3"
        await events.aclose()


async def test_last_event_id_resumes_after_it(http: Http) -> None:
    await _create(http, "u1", "u2", "u3", "u4")
    received = []
    async with http.connect() as connection:
        events = connection.events("/events")
        with trio.fail_after(5):
            for _ in range(2):
                received.append((await anext(events))["id"])
        await events.aclose()
    # A reconnecting EventSource repeats its URL and sends the last id it saw.
    async with http.connect() as connection:
        events = connection.events("/events?from=0", headers={"Last-Event-ID": received[-1]})
        with trio.fail_after(5):
            for _ in range(2):
                received.append((await anext(events))["id"])
        await events.aclose()
    assert received == ["1", "2", "3", "4"]


async def test_bad_positions_are_400(http: Http) -> None:
    for path, headers in (
        ("/events?from=-1", {}),
        ("/events?from=x", {}),
        ("/events?since=1", {}),
        ("/events", {"Last-Event-ID": "later"}),
    ):
        answer = await http.get(path, headers=headers)
        assert (answer.status, answer.code) == (400, "bad_request"), path


async def test_events_need_the_token(engine: Engine) -> None:
    async with open_http_server(engine, port=0, token="t") as server:
        answer = await Http(server.port).get("/events")
        assert answer.status == 401
        async with Http(server.port, token="t").connect() as connection:
            events = connection.events("/events")
            await engine.send(_command("u1"))
            with trio.fail_after(5):
                assert (await anext(events))["id"] == "1"
            await events.aclose()


def _command(user_id: str) -> object:
    from motet.engine.example import CreateUser

    return CreateUser(**user(user_id))


async def test_stopping_the_server_ends_the_stream_with_an_error_event(engine: Engine) -> None:
    await engine.send(_command("u1"))
    async with trio.open_nursery() as nursery:
        server: HttpServer = await nursery.start(partial(serve_http, engine, port=0))
        async with Http(server.port).connect() as connection:
            received = []
            with trio.fail_after(5):
                async for event in connection.events("/events"):
                    received.append(event)
                    if len(received) == 1:
                        server.stop()
    assert received[0]["id"] == "1"
    assert received[-1]["event"] == "error"
    error = json.loads(received[-1]["data"])
    assert error["position"] == 1
    assert "shutting down" in error["message"]


async def test_a_client_that_leaves_frees_its_connection(
    http: Http, http_server: HttpServer
) -> None:
    async with http.connect() as connection:
        events = connection.events("/events")
        await _create(http, "u1")
        with trio.fail_after(5):
            await anext(events)
        await events.aclose()
    with trio.fail_after(5):
        while http_server.statistics().connections:
            await trio.sleep(0.01)
    assert http_server.statistics().event_streams == 1


async def test_quiet_streams_get_heartbeats(engine: Engine) -> None:
    async with open_http_server(engine, port=0, heartbeat=0.05) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
            seen = b""
            with trio.fail_after(5):
                while b": keep-alive" not in seen:
                    seen += await stream.receive_some(65536)
            assert b"text/event-stream" in seen


async def test_the_error_position_is_the_last_event_delivered(engine: Engine) -> None:
    from motet.engine.example import PlaceOrder

    await engine.send(_command("u1"))
    for n in range(2000):
        await engine.send(PlaceOrder(user_id="u1", order_id=f"o{n}", amount=1.0))
    async with trio.open_nursery() as nursery:
        server: HttpServer = await nursery.start(partial(serve_http, engine, port=0))
        async with Http(server.port).connect() as connection:
            received = []
            with trio.fail_after(10):
                async for event in connection.events("/events"):
                    received.append(event)
                    if len(received) == 1:
                        server.stop()  # in the middle of the catch-up
    ids = [int(event["id"]) for event in received if "id" in event]
    assert ids == list(range(1, len(ids) + 1))
    assert received[-1]["event"] == "error"
    assert json.loads(received[-1]["data"])["position"] == ids[-1]
