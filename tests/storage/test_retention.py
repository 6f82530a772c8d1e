"""``apply_retention`` on a store directly (what the engine does stream by
stream): the cut never goes past the latest snapshot of the current state
schema, and runs again remove nothing more."""

from __future__ import annotations

from motet.storage import Append, MemoryStore, Metadata, NewEvent, Snapshot
from motet.storage.retention import Retention, apply_retention, retention_cut

NOW = 1_000_000.0


def stream(
    store: MemoryStore, name: str, count: int, *, snapshot_at: int | None, age: float
) -> None:
    for version in range(count):
        snapshot = Snapshot(version + 1, 1, b"s") if version + 1 == snapshot_at else None
        store.append_batch(
            [Append(name, version, [NewEvent("E", 1, b"x")], Metadata(), snapshot)],
            NOW - age + version,
        )


def test_each_limit_is_bounded_by_the_usable_snapshot() -> None:
    store = MemoryStore()
    stream(store, "A-1", 10, snapshot_at=6, age=100.0)  # timestamps NOW-100 .. NOW-91

    assert retention_cut(store, "A-1", Retention(compact=True), 1, NOW) == 6
    assert retention_cut(store, "A-1", Retention(max_events=2), 1, NOW) == 6
    assert retention_cut(store, "A-1", Retention(max_events=7), 1, NOW) == 3
    assert retention_cut(store, "A-1", Retention(max_age=97.5), 1, NOW) == 3
    assert retention_cut(store, "A-1", Retention(max_age=1000.0), 1, NOW) == 0
    assert retention_cut(store, "A-1", Retention(compact=True), 2, NOW) == 0  # other schema


def test_apply_retention_counts_per_category_and_is_idempotent() -> None:
    store = MemoryStore()
    stream(store, "A-1", 4, snapshot_at=4, age=10.0)
    stream(store, "A-2", 4, snapshot_at=None, age=10.0)
    stream(store, "B-1", 4, snapshot_at=2, age=10.0)
    policies = {"A": (Retention(compact=True), 1), "B": (Retention(max_events=1), 1)}

    first = apply_retention(store, policies, NOW)
    second = apply_retention(store, policies, NOW)

    assert (first.streams, first.truncated, first.removed) == (3, 2, 6)
    assert first.by_category == {"A": 4, "B": 2}
    assert second.removed == 0
    assert [e.version for e in store.read_stream("B-1")] == [3, 4]
    assert store.stream_version("A-1") == 4 and store.read_stream("A-1") == []
