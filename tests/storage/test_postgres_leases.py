"""Partitions, leases and fencing in the PostgreSQL store (real PostgreSQL)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from motet.storage import Ack, Append, Metadata, NewEvent, StorageError, StoreFormatError
from motet.storage.errors import NotOwner
from motet.storage.partitions import partition_of, quotas
from motet.storage.postgres_sql import FORMAT
from motet.storage.postgres_store import PostgresStore
from tests.support.postgres import Cluster, new_schema_url

TS = 1_700_000_000.5


@pytest.fixture
def url(postgres_cluster: Cluster) -> str:
    return new_schema_url(postgres_cluster)


@pytest.fixture
def open_store(url: str) -> Iterator[Any]:
    stores: list[PostgresStore] = []

    def open_(**options: Any) -> PostgresStore:
        store = PostgresStore(url, **options)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def append(stream: str, expected: int, command_id: str | None = None) -> Append:
    return Append(
        stream, expected, [NewEvent("Happened", 1, b"x")], Metadata(command_id=command_id)
    )


def stream_in(partition: int, partitions: int) -> str:
    """A stream id that falls in ``partition``."""
    return next(
        f"Order-{i}" for i in range(10_000) if partition_of(f"Order-{i}", partitions) == partition
    )


def test_partition_of_is_a_stable_hash_and_quotas_spread_evenly() -> None:
    # CRC-32, not Python's salted hash(): the same in every process.
    assert partition_of("Order-1", 64) == zlib.crc32(b"Order-1") % 64
    assert quotas(["b", "a", "c"], 8) == {"a": 3, "b": 3, "c": 2}
    assert quotas([], 8) == {}
    assert sum(quotas([f"n{i}" for i in range(5)], 64).values()) == 64


def test_a_new_store_has_its_partitions_fixed_at_creation(url: str, open_store: Any) -> None:
    store = open_store(partitions=8)
    assert store.partitions == 8
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM motet_partitions").fetchone() == (8,)
        assert conn.execute("SELECT value FROM motet_meta WHERE key = 'format'").fetchone() == (
            FORMAT,
        )
    assert open_store().partitions == 8
    with pytest.raises(StoreFormatError, match=r"has 8 partitions, fixed when it was created"):
        PostgresStore(url, partitions=16)
    with pytest.raises(ValueError, match=r"partitions must be an int >= 1, got 0"):
        PostgresStore(url, partitions=0)


def test_a_format_1_store_is_upgraded_in_place_keeping_its_log(url: str, open_store: Any) -> None:
    first = open_store(partitions=4)
    first.append_batch([append("Order-1", 0, "c1")], TS)
    first.close()
    with psycopg.connect(url, autocommit=True) as conn:  # what a /1 store looks like
        conn.execute("DROP TABLE motet_partitions, motet_nodes")
        conn.execute("DELETE FROM motet_meta WHERE key = 'partitions'")
        conn.execute("UPDATE motet_meta SET value = 'motet-postgres/1' WHERE key = 'format'")

    again = open_store(partitions=4)

    assert again.get_ack("c1") == Ack("Order-1", 1, 1)
    assert again.partitions == 4
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM motet_meta WHERE key = 'format'").fetchone() == (
            FORMAT,
        )
        assert conn.execute("SELECT count(*) FROM motet_partitions").fetchone() == (4,)


def test_claims_take_free_leases_only_and_heartbeats_show_nodes_and_owners(
    open_store: Any,
) -> None:
    a, b = open_store(partitions=4), open_store()

    assert a.claim("a", [0, 1], ttl=10) == {0: 1, 1: 1}
    assert b.claim("b", [1, 2], ttl=10) == {2: 1}  # 1 is a's
    view = b.heartbeat("b", "127.0.0.1:2", "writer", ttl=10)
    a.heartbeat("a", "127.0.0.1:1", "writer", ttl=10)
    view = b.heartbeat("b", "127.0.0.1:2", "writer", ttl=10)

    assert view.held == {2: 1}
    assert [(n.id, n.address, n.role) for n in view.nodes] == [
        ("a", "127.0.0.1:1", "writer"),
        ("b", "127.0.0.1:2", "writer"),
    ]
    assert [(lease.owner, lease.epoch, lease.live) for lease in view.leases] == [
        ("a", 1, True),
        ("a", 1, True),
        ("b", 1, True),
        (None, 0, False),
    ]

    a.release("a", [1])
    assert b.claim("b", [1], ttl=10) == {1: 2}  # released: taken at once, next epoch
    a.leave("a")
    assert [n.id for n in b.heartbeat("b", "", "writer", ttl=10).nodes] == ["b"]
    with pytest.raises(ValueError, match=r"this store handle is node 'a', not 'b'"):
        a.claim("b", [3], ttl=10)


def test_a_stale_epoch_is_refused_in_the_append_transaction(open_store: Any) -> None:
    a, b = open_store(partitions=4), open_store()
    stream = stream_in(0, 4)
    other = stream_in(1, 4)
    a.claim("a", [0, 1], ttl=0.5)
    assert a.append_batch([append(stream, 0)], TS) == [Ack(stream, 1, 1)]

    time.sleep(0.8)  # a's leases expire; a does not notice (no heartbeat)
    assert b.claim("b", [0], ttl=10) == {0: 2}
    # a still believes it holds partition 0 at epoch 1: refused, nothing
    # written; its append to partition 1 (expired, not taken) commits.
    results = a.append_batch([append(stream, 1, "late"), append(other, 0)], TS)

    assert isinstance(results[0], NotOwner)
    assert "partition 0" in str(results[0]) and "epoch 1" in str(results[0])
    assert "(epoch 2, owner 'b')" in str(results[0])
    assert results[1] == Ack(other, 1, 2)
    assert a.get_ack("late") is None
    assert b.append_batch([append(stream, 1)], TS) == [Ack(stream, 2, 3)]
    # a's next heartbeat learns the loss: partition 0 leaves its fence.
    assert a.heartbeat("a", "", "writer", ttl=10).held == {1: 1}
    assert a.held == {1: 1}
    (unowned,) = a.append_batch([append(stream_in(3, 4), 0)], TS)
    assert isinstance(unowned, NotOwner)
    assert "holds no lease on it" in str(unowned)


def test_leases_have_a_connection_of_their_own_replaced_when_lost(
    url: str, open_store: Any
) -> None:
    store = open_store(partitions=4)
    assert store.claim("a", [0], ttl=10) == {0: 1}
    with psycopg.connect(url, autocommit=True) as conn:
        (killed,) = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'motet leases'"
        ).fetchone() or (0,)
    assert killed == 1
    # The lost connection is noticed and replaced within the call.
    assert store.heartbeat("a", "", "writer", ttl=10).held == {0: 1}
    store.close()
    with pytest.raises(StorageError, match="is closed"):
        store.heartbeat("a", "", "writer", ttl=10)
