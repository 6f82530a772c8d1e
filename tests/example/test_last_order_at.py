"""``last_order_at`` in the user queries is ISO 8601 UTC, as event times are
on the wire, while ``OrderPlaced.at`` stays the Unix seconds it was stored as."""

from __future__ import annotations

import datetime

from motet.engine import Engine
from motet.engine.example import GetUserById, OrderPlaced, PlaceOrder, TopSpenders
from motet.engine.net.client import open_client
from motet.engine.net.server import Server
from tests.support.commands import create_user as create


async def test_last_order_at_is_an_iso_utc_string(engine: Engine, server: Server) -> None:
    await engine.send(create("u1"))
    assert (await engine.ask(GetUserById(user_id="u1"), after=1)).last_order_at is None
    ack = await engine.send(PlaceOrder(user_id="u1", order_id="o1", amount=3))
    user = await engine.ask(GetUserById(user_id="u1"), after=ack.position)

    (placed,) = [r for r in await engine.read_stream("User-u1") if r.type == "OrderPlaced"]
    assert isinstance(placed.data, OrderPlaced) and isinstance(placed.data.at, float)
    assert isinstance(user.last_order_at, str) and user.last_order_at.endswith("Z")
    moment = datetime.datetime.fromisoformat(user.last_order_at)
    assert moment.utcoffset() == datetime.timedelta(0)
    assert abs(moment.timestamp() - placed.data.at) < 1e-5  # ISO keeps microseconds

    async with open_client("127.0.0.1", server.port) as client:
        over_the_wire = await client.ask(GetUserById(user_id="u1"))
        (top,) = await client.ask(TopSpenders(limit=1))
    assert over_the_wire["last_order_at"] == top["last_order_at"] == user.last_order_at
