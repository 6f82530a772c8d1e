"""Given the app, the clients answer in the embedded API's types: a query's
result as its handler's declared return type, event data as the app's event
types; without the app, the plain JSON values stay."""

from __future__ import annotations

from contextlib import aclosing

import trio

from motet.engine import Engine
from motet.engine.example import (
    GetUserById,
    GetUsersByCity,
    OrderPlaced,
    PlaceOrder,
    UserCreated,
    UserSummary,
    app,
)
from motet.engine.net.blocking import connect
from motet.engine.net.client import open_client
from motet.engine.net.server import Server
from tests.support.commands import create_user as create


async def test_the_trio_client_with_the_app_answers_as_the_engine(
    engine: Engine, server: Server
) -> None:
    async with open_client("127.0.0.1", server.port, app=app) as client:
        await client.send(create("u1", city="Oslo"))
        ack = await client.send(PlaceOrder(user_id="u1", order_id="o1", amount=20))
        user = await client.ask(GetUserById(user_id="u1"), after=ack.position)
        assert isinstance(user, UserSummary)
        assert user.name == "Name u1" and user.total_spent == 20.0
        assert user == await engine.ask(GetUserById(user_id="u1"))
        by_city = await client.ask(GetUsersByCity(city="Oslo"))
        assert by_city == await engine.ask(GetUsersByCity(city="Oslo"))
        assert all(isinstance(row, UserSummary) for row in by_city)

        events = await client.read_stream("User-u1")
        assert isinstance(events[0].data, UserCreated) and events[0].data.name == "Name u1"
        assert isinstance(events[1].data, OrderPlaced) and events[1].data.amount == 20
        embedded = await engine.read_stream("User-u1")
        assert [e.data for e in events] == [e.data for e in embedded]

        async with aclosing(client.subscribe(0)) as live:
            seen = []
            async for event in live:
                seen.append(event.data)
                if len(seen) == 2:
                    break
        assert seen == [e.data for e in embedded]


async def test_without_the_app_results_and_event_data_stay_plain_json(server: Server) -> None:
    async with open_client("127.0.0.1", server.port) as client:
        ack = await client.send(create("u1"))
        user = await client.ask(GetUserById(user_id="u1"), after=ack.position)
        assert isinstance(user, dict) and user["name"] == "Name u1"
        (event,) = await client.read_stream("User-u1")
        assert isinstance(event.data, dict) and event.data["type"] == "UserCreated"


async def test_the_blocking_client_with_the_app_answers_as_the_engine(
    engine: Engine, server: Server
) -> None:
    def script() -> tuple[object, object]:
        with connect("127.0.0.1", server.port, app=app) as client:
            ack = client.send(create("u1"))
            user = client.ask(GetUserById(user_id="u1"), after=ack.position)
            return user, client.read_stream("User-u1")[0].data

    user, data = await trio.to_thread.run_sync(script)
    assert isinstance(user, UserSummary) and user.name == "Name u1"
    assert user == await engine.ask(GetUserById(user_id="u1"))
    assert isinstance(data, UserCreated) and data.email == "u1@example.org"
