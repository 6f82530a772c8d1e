"""A paused projection says so in its status, in the engine's status and over
the wire, and says ``running`` again once resumed."""

from __future__ import annotations

from motet.engine import Engine
from motet.engine.net.client import open_client
from motet.engine.net.server import Server
from tests.support.commands import create_user as create


def _state(engine: Engine) -> str:
    (users,) = [p for p in engine.status().projections if p.name == "users"]
    return users.state


async def test_a_paused_projection_reports_paused(engine: Engine, server: Server) -> None:
    projection = engine.projection("users")
    assert _state(engine) == "running"
    projection.pause()
    assert projection.status().state == "paused"
    assert _state(engine) == "paused"
    await engine.send(create("u1"))
    async with open_client("127.0.0.1", server.port) as client:
        (users,) = [p for p in (await client.status()).projections if p.name == "users"]
    assert (users.state, users.position, users.lag_events) == ("paused", 0, 1)
    projection.resume()
    await projection.wait_for(1)
    assert _state(engine) == "running"
