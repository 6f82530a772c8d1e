"""Engines as nodes of one PostgreSQL store (a real cluster, real sockets):
partition leases spread over the nodes, commands forwarded to the owner,
hand-over on close, and ``unavailable`` for a partition nobody owns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from motet.engine import App, Engine, Unavailable, open_engine
from motet.engine.example import CreateUser, PlaceOrder, app
from motet.engine.net.server import serve_engine
from motet.storage import Append, Metadata, NewEvent
from motet.storage.errors import NotOwner
from motet.storage.partitions import partition_of
from motet.storage.postgres_store import PostgresStore
from tests.support.postgres import Cluster, new_schema_url

PARTITIONS = 4
TTL = 1.0


@pytest.fixture
def url(postgres_cluster: Cluster) -> str:
    return new_schema_url(postgres_cluster)


@asynccontextmanager
async def node(
    url: str, node_id: str, *, served: App = app, lease_ttl: float = TTL, **options: Any
) -> AsyncIterator[Engine]:
    """An engine of ``served`` as node ``node_id``, its line server on a free
    port advertised."""
    async with (
        open_engine(
            url,
            served,
            node_id=node_id,
            lease_ttl=lease_ttl,
            store_options={"partitions": PARTITIONS},
            **options,
        ) as engine,
        trio.open_nursery() as nursery,
    ):
        server = await nursery.start(partial(serve_engine, engine, port=0))
        assert engine.node is not None
        engine.node.advertise = f"127.0.0.1:{server.port}"
        yield engine
        server.stop()


async def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.05)


def user_in(partition: int) -> str:
    return next(
        f"u{i}" for i in range(10_000) if partition_of(f"User-u{i}", PARTITIONS) == partition
    )


def create(user: str) -> CreateUser:
    return CreateUser(user_id=user, name=user, email=f"{user}@example.org", password="pw")


async def test_partitions_spread_commands_are_forwarded_and_handed_over(url: str) -> None:
    async with node(url, "a") as a:
        assert a.node is not None
        assert a.status().node is not None
        assert a.status().node.partitions == [0, 1, 2, 3]  # alone: everything
        async with node(url, "b") as b:
            assert b.node is not None
            await wait_until(lambda: len(a.node.owned) == 2 and len(b.node.owned) == 2)
            # a sees b's claims at its next heartbeat.
            await wait_until(
                lambda: (
                    {n.id: n.partitions for n in a.status().nodes}
                    == {"a": a.node.owned, "b": b.node.owned}
                )
            )
            assert b.status().node == b.node.status()
            theirs = user_in(b.node.owned[0])
            ours = user_in(a.node.owned[0])

            # Sent to a, run by b (its owner): same Ack either way, and a retry
            # with the same command id on either node appends nothing.
            ack = await a.send(create(theirs), command_id="c1")
            assert await b.send(create(theirs), command_id="c1") == ack
            assert await a.send(create(theirs), command_id="c1") == ack
            local = await a.send(create(ours), command_id="c2")
            again = await b.send(PlaceOrder(user_id=ours, order_id="o1", amount=5))
            assert (local.version, again.version) == (1, 2)
            assert a.node.forwarded == 2 and b.node.forwarded == 1
            metrics = a.metrics.exposition().decode() if a.metrics else ""
            assert "motet_node_partitions 2.0" in metrics
            assert "motet_commands_forwarded_total 2.0" in metrics
        # b closed: it handed its partitions over, a claims them at its next beat.
        await wait_until(lambda: a.node.owned == [0, 1, 2, 3], seconds=3 * TTL)
        assert [n.id for n in a.status().nodes] == ["a"]
        ack = await a.send(PlaceOrder(user_id=theirs, order_id="o2", amount=1))
        assert ack.version == 2


async def test_a_reader_node_owns_nothing_and_refuses_commands(url: str) -> None:
    async with node(url, "reader", role="reader") as reader:
        with pytest.raises(Unavailable, match=r"role 'reader' and takes no commands"):
            await reader.send(create("ann"))
        status = reader.status()
        assert status.node is not None
        assert (status.node.role, status.node.partitions) == ("reader", [])
        assert [(n.id, n.role) for n in status.nodes] == [("reader", "reader")]


async def test_a_partition_without_a_live_owner_answers_unavailable_soon(url: str) -> None:
    async with node(url, "w") as writer:
        assert writer.node is not None
        assert writer.node.owned == [0, 1, 2, 3]
        ghost = PostgresStore(url)
        try:
            # A second writer that never serves: w hands it half the partitions.
            await trio.to_thread.run_sync(ghost.heartbeat, "ghost", "", "writer", 60.0)
            await wait_until(lambda: writer.node.owned == [0, 1])
            assert await trio.to_thread.run_sync(ghost.claim, "ghost", [2], 60.0) == {
                2: 2
            }  # w had epoch 1

            # Partition 3 is free and w is at its share: nobody takes it. The
            # command waits for a heartbeat or two, then answers unavailable.
            started = trio.current_time()
            with pytest.raises(Unavailable, match=r"partition 3 .* has no live owner yet"):
                await writer.send(create(user_in(3)))
            assert trio.current_time() - started < 3 * TTL
            with pytest.raises(Unavailable, match=r"owned by node 'ghost', which advertises no"):
                await writer.send(create(user_in(2)))

            # The ghost leaves: w takes everything back; a waiting command runs.
            await trio.to_thread.run_sync(ghost.leave, "ghost")
            assert (await writer.send(create(user_in(3)))).version == 1
            await wait_until(lambda: writer.node.owned == [0, 1, 2, 3])
        finally:
            ghost.close()


async def test_a_node_restarted_under_its_id_takes_its_leases_back_at_once(url: str) -> None:
    earlier = PostgresStore(url, partitions=PARTITIONS)  # a process that died holding leases
    try:
        earlier.heartbeat("a", "", "writer", 60.0)
        assert earlier.claim("a", [0, 1, 2, 3], 60.0) == {0: 1, 1: 1, 2: 1, 3: 1}
        async with node(url, "a") as again:
            assert again.node is not None
            assert again.node.owned == [0, 1, 2, 3]  # not after 60 s
            assert (await again.send(create("ann"))).version == 1
            # The new epochs fence the earlier process off.
            (refused,) = earlier.append_batch(
                [Append("User-bob", 0, [NewEvent("UserCreated", 1, b"x")], Metadata())], 1.0
            )
            assert isinstance(refused, NotOwner)
    finally:
        earlier.close()


async def test_a_dead_nodes_partitions_are_claimed_when_its_leases_end(url: str) -> None:
    # A process that died holding every lease, renewed last just now for 1 s.
    dead = PostgresStore(url, partitions=PARTITIONS)
    try:
        dead.heartbeat("dead", "", "writer", 1.0)
        dead.claim("dead", [0, 1, 2, 3], 1.0)
        claimed_at = trio.current_time()
        # Renewing every 1.8 s (lease TTL 6 s), the survivor sees the leases
        # live at its first heartbeat; its next renewal is ~1 s after they end.
        async with node(url, "survivor", lease_ttl=6.0) as survivor:
            assert survivor.node is not None
            assert survivor.node.owned == []
            # Claimed right when they end, not at the next renewal.
            await wait_until(lambda: survivor.node.owned == [0, 1, 2, 3], seconds=1.6)
            assert trio.current_time() - claimed_at > 0.9  # not before they ended
            assert (await survivor.send(create("ann"))).version == 1
    finally:
        dead.close()


async def test_node_options_are_checked(url: str) -> None:
    with pytest.raises(ValueError, match="node_id needs a store shared by nodes"):
        async with open_engine(None, app, node_id="x"):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match=r"an advertised address is HOST:PORT, got 'nowhere'"):
        async with open_engine(url, app, node_id="x", advertise="nowhere"):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match=r"lease_ttl must be > 0 seconds, got 0"):
        async with open_engine(url, app, node_id="x", lease_ttl=0):
            pass  # pragma: no cover


async def test_process_managers_on_two_nodes_record_each_outcome_once(url: str) -> None:
    # Every writer node runs every process manager, and an instance's stream
    # may sit in a partition the node does not lease: its records are not
    # fenced (their expected version keeps them single), so neither node
    # stalls on them, and each unpaid order is cancelled exactly once.
    from motet.engine.example import shop
    from motet.engine.example.shop_app import SubmitOrder

    orders = [f"o{i}" for i in range(12)]
    async with node(url, "a", served=shop) as a, node(url, "b", served=shop) as b:
        assert a.node is not None and b.node is not None
        await wait_until(lambda: len(a.node.owned) == 2 and len(b.node.owned) == 2)
        for i, order_id in enumerate(orders):
            sender = a if i % 2 else b
            await sender.send(
                SubmitOrder(order_id=order_id, customer_id=f"c{i}", amount=10.0, pay_within=0.5)
            )

        def cancelled() -> list[str]:
            return [e.stream for e in a.store.read_all(0, 100_000) if e.type == "OrderCancelled"]

        await wait_until(lambda: len(cancelled()) >= len(orders), seconds=30)
        for engine in (a, b):
            manager = engine.process_managers["OrderFulfilment"]
            await wait_until(lambda m=manager: m.position == a.store.head_position, seconds=30)
            assert manager.error is None
        assert sorted(cancelled()) == sorted(f"Order-{o}" for o in orders)


async def test_any_node_forgets_a_subject_whose_stream_another_node_leases(url: str) -> None:
    async with node(url, "a") as a, node(url, "b") as b:
        assert a.node is not None and b.node is not None
        await wait_until(lambda: len(a.node.owned) == 2 and len(b.node.owned) == 2)
        subject = next(
            f"u{i}"
            for i in range(10_000)
            if partition_of(f"Subject-u{i}", PARTITIONS) in b.node.owned
        )
        await a.send(create(subject))
        forgotten = await a.forget(subject)
        assert not forgotten.already_forgotten
        events = a.store.read_stream(f"Subject-{subject}")
        assert [e.type for e in events] == ["SubjectForgotten"]
        assert a.store.get_key(subject) is None


async def test_a_peer_closed_while_a_forward_holds_it_answers_unavailable() -> None:
    # The node drops the peer of a node that left (its heartbeat expired)
    # while a forward to it may already hold it: that forward must be told
    # the owner is unavailable (retryable), not fail on a closed nursery.
    from motet.engine.node import _Peer

    peer = _Peer("127.0.0.1:9", 2, None, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve)
        peer.close()
        with pytest.raises(Unavailable, match=r"connections to 127\.0\.0\.1:9 are closed"):
            await peer.client()
