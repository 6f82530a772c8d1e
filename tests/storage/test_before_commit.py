"""The stores' ``before_commit`` hook: called once per appended batch, in
the appending thread, when the batch is written but not yet committed (no
reader sees it yet), so the engine can use the flush to do other work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from motet.storage import Append, LmdbStore, NewEvent
from motet.storage.records import StoredEvent
from motet.storage.store import EventStore
from tests.support.postgres import Cluster, new_store


@pytest.fixture(params=["lmdb", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "lmdb":
        opened: EventStore = LmdbStore(tmp_path / "store")
    else:
        cluster: Cluster = request.getfixturevalue("postgres_cluster")
        opened = new_store(cluster)
    try:
        yield opened
    finally:
        opened.close()


def event(data: bytes) -> NewEvent:
    return NewEvent("E", 1, data)


def test_the_hook_runs_once_per_batch_before_readers_see_it(store: EventStore) -> None:
    seen: list[list[StoredEvent]] = []
    store.before_commit = lambda: seen.append(store.read_all(0, 100))  # type: ignore[attr-defined]
    store.append_batch([Append("A-1", 0, [event(b"a1"), event(b"a2")])], 1.0)
    store.append_batch([Append("A-1", 2, [event(b"a3")]), Append("B-1", 0, [event(b"b1")])], 2.0)
    # Each call saw the log as it was before its own batch.
    assert [[e.data for e in log] for log in seen] == [[], [b"a1", b"a2"]]
    assert [e.data for e in store.read_all(0, 100)] == [b"a1", b"a2", b"a3", b"b1"]


def test_without_a_hook_nothing_is_called(store: EventStore) -> None:
    assert store.before_commit is None  # type: ignore[attr-defined]
    (ack,) = store.append_batch([Append("A-1", 0, [event(b"a1")])], 1.0)
    assert ack.position == 1  # type: ignore[union-attr]
