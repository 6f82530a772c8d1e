"""The clients' consumer API: ``consume`` on the trio, asyncio and blocking
clients, acks and nacks through the event objects, refused joins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from motet.engine.example import OrderPlaced, app
from motet.engine.net import aio_client
from motet.engine.net.blocking import connect
from motet.engine.net.client import open_client
from motet.engine.net.server import Server
from motet.storage.errors import InvalidMessage, NotFound
from tests.support.commands import create_user, place_order


async def test_the_trio_client_consumes_acks_and_nacks(server: Server) -> None:
    async with open_client("127.0.0.1", server.port, app=app) as client:
        for u in range(3):
            await client.send(create_user(f"u{u}"))
            await client.send(place_order(f"u{u}", "o1", 3.0))
        seen: dict[int, int] = {}
        async with client.consume("mailer", category="User", types=["OrderPlaced"]) as events:
            async for event in events:
                assert isinstance(event.data, OrderPlaced)
                seen[event.position] = seen.get(event.position, 0) + 1
                if event.stream == "User-u1" and seen[event.position] == 1:
                    await event.nack("try again")
                    continue
                await event.ack()
                if len(seen) == 3 and sum(seen.values()) == 4:
                    break
            with pytest.raises(NotFound, match="is not in flight for member"):
                await event.ack()
        assert sorted(seen.values()) == [1, 1, 2]
        [group] = (await client.status()).groups
        assert group.members == [] and group.lag_events == 0 and group.redelivered == 1
        with pytest.raises(InvalidMessage, match="types must name at least one event type"):
            async with client.consume("mailer", types=[]):
                pass
        page, scanned = await client.read_log(0, category="User", types=["OrderPlaced"])
        assert [e.stream for e in page] == ["User-u0", "User-u1", "User-u2"]
        assert scanned == 6


def test_the_asyncio_and_blocking_clients_consume(motet_server: Any) -> None:
    server = motet_server("--durability", "none", "--no-metrics")
    with connect("127.0.0.1", server.port) as client:
        for u in range(4):
            client.send(create_user(f"u{u}"))
        with client.consume("blocking", category="User") as events:
            streams = set()
            for event in events:
                event.ack()
                streams.add(event.stream)
                if len(streams) == 4:
                    break
        assert client.status().groups[0].acked == 4

    async def main() -> list[str]:
        async with aio_client.open_client("127.0.0.1", server.port) as client:
            got = []
            async with client.consume("aio", types=["UserCreated"], prefetch=2) as events:
                async for event in events:
                    got.append(event.stream)
                    if event.stream == "User-u0" and got.count("User-u0") == 1:
                        await event.nack("later", retry_after=0.05)
                        continue
                    await event.ack()
                    if len(got) == 5:
                        break
            with pytest.raises(InvalidMessage, match=r"category is the part of a stream id"):
                async with client.consume("aio", category="a-b"):
                    pass
            return got

    got = asyncio.run(main())
    assert sorted(got) == ["User-u0", "User-u0", "User-u1", "User-u2", "User-u3"]
