"""The engine on a PostgreSQL store (a real throwaway cluster): the same
commands, queries, reads and restarts as on LMDB, and commits made by another
store handle reach the engine's projections."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from motet.engine import CommandRejected, open_engine
from motet.engine.example import (
    CreateUser,
    GetUserById,
    PlaceOrder,
    TopSpenders,
    UserCreated,
    app,
)
from motet.storage import Append, Metadata
from motet.storage.postgres_store import PostgresStore
from tests.support.postgres import Cluster, new_schema_url


@pytest.fixture
def url(postgres_cluster: Cluster) -> str:
    return new_schema_url(postgres_cluster)


def ann() -> CreateUser:
    return CreateUser(user_id="ann", name="Ann", email="ann@example.org", password="pw")


async def test_commands_queries_and_reads_on_postgresql(url: str) -> None:
    async with open_engine(url, app) as engine:
        assert isinstance(engine.store, PostgresStore)
        assert engine.status().durability == "sync"
        created = await engine.send(ann(), command_id="create-ann")
        acks = [
            await engine.send(PlaceOrder(user_id="ann", order_id=f"o{n}", amount=n))
            for n in range(1, 4)
        ]
        assert [a.position for a in [created, *acks]] == [1, 2, 3, 4]
        assert await engine.send(ann(), command_id="create-ann") == created
        with pytest.raises(CommandRejected, match="already exists"):
            await engine.send(ann())
        user = await engine.ask(GetUserById(user_id="ann"), after=acks[-1].position)
        assert (user.order_count, user.total_spent) == (3, 6.0)
        events = await engine.read_stream("User-ann")
        assert [e.version for e in events] == [1, 2, 3, 4]
        assert events[0].metadata.command_id == "create-ann"

    # A restart loads the aggregate from the store and folds the read model again.
    async with open_engine(url, app) as engine:
        ack = await engine.send(PlaceOrder(user_id="ann", order_id="o4", amount=4))
        assert (ack.version, ack.position) == (5, 5)
        top = await engine.ask(TopSpenders(limit=1), after=ack.position)
        assert [(u.user_id, u.total_spent) for u in top] == [("ann", 10.0)]


async def test_commits_of_another_store_handle_reach_the_projection(url: str) -> None:
    codec = app.codec()
    async with open_engine(url, app) as engine:
        other = PostgresStore(url)
        try:
            new = codec.encode_event(
                UserCreated(user_id="bob", name="Bob", email="bob@example.org", password_hash="x")
            )
            [ack] = await trio.to_thread.run_sync(
                other.append_batch, [Append("User-bob", 0, [new], Metadata())], 1.0
            )
        finally:
            other.close()
        user: Any = await engine.ask(GetUserById(user_id="bob"), after=ack.position, timeout=10)
        assert user.name == "Bob"
