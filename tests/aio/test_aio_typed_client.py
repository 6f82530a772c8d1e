"""Given the app, the asyncio client answers in the app's types, as the trio
client does (against a real ``motet serve``)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

from motet.engine.example import (
    CreateUser,
    GetUserById,
    OrderPlaced,
    PlaceOrder,
    UserCreated,
    UserSummary,
    app,
)
from motet.engine.net.aio_client import open_client


def test_the_asyncio_client_with_the_app_decodes_results_and_events(motet_server: Any) -> None:
    server = motet_server("--durability", "none", "--no-metrics")

    async def main() -> None:
        async with open_client("127.0.0.1", server.port, app=app) as client:
            await client.send(
                CreateUser(user_id="u1", name="Ann", email="ann@example.org", password="pw")
            )
            ack = await client.send(PlaceOrder(user_id="u1", order_id="o1", amount=5))
            user = await client.ask(GetUserById(user_id="u1"), after=ack.position)
            assert isinstance(user, UserSummary) and user.name == "Ann"
            created, placed = await client.read_stream("User-u1")
            assert isinstance(created.data, UserCreated) and created.data.name == "Ann"
            assert isinstance(placed.data, OrderPlaced) and placed.data.amount == 5
            async with aclosing(client.subscribe(1)) as live:
                async for event in live:
                    assert event.data == placed.data
                    break
        async with open_client("127.0.0.1", server.port) as plain:
            assert (await plain.ask(GetUserById(user_id="u1")))["name"] == "Ann"

    asyncio.run(main())
