"""The storage contract: one test suite every store implementation passes.

A backend joins by subclassing :class:`StoreContract` in a test module and
saying how to make its stores (:meth:`StoreContract.new_factory`); every
test here, the property-based ones included, then runs against it::

    class TestLmdbStore(StoreContract):
        def new_factory(self, directory: Path) -> StoreFactory:
            return LmdbStoreFactory(directory)

The class is not collected by itself (its name does not start with
``Test``). The property-based tests check a store against a small
independent model of the log, so two stores that pass agree with each
other too.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from motet.storage import (
    Append,
    Checkpoint,
    Conflict,
    EventStore,
    LmdbStore,
    MemoryStore,
    Metadata,
    NewEvent,
    Snapshot,
    StorageError,
    StoredEvent,
)
from motet.storage.records import Ack, BucketProgress, GroupProgress, ParkedEvent
from motet.storage.streams import category_of
from tests.support.logs import read_everything

__all__ = [
    "TS",
    "LmdbStoreFactory",
    "MemoryStoreFactory",
    "StoreContract",
    "StoreFactory",
    "append",
    "event",
    "events",
    "read_everything",
]

TS = 1_700_000_000.25


def event(n: int = 0, type: str = "Created", event_version: int = 1) -> NewEvent:
    return NewEvent(type, event_version, f"payload-{n}".encode())


def events(count: int, start: int = 0) -> list[NewEvent]:
    return [event(start + i) for i in range(count)]


def append(
    stream: str,
    expected: int,
    new_events: list[NewEvent],
    *,
    command_id: str | None = None,
    snapshot: Snapshot | None = None,
) -> Append:
    return Append(stream, expected, new_events, Metadata(command_id=command_id), snapshot)


# -- making stores ----------------------------------------------------------------------------


class StoreFactory:
    """Makes fresh stores of one kind and closes every one of them in
    :meth:`close_all`.

    ``factory()`` returns a new, empty store; ``factory(reopen_of=store)``
    closes a persistent store and opens it again (check :attr:`persistent`).
    Keyword options go to the store's constructor. A backend subclasses it
    and implements :meth:`_open`.
    """

    persistent = False
    """Whether stores of this kind survive being closed and reopened."""

    durability = "none"
    """What a store made with no options reports as its durability."""

    def __init__(self) -> None:
        self._stores: list[Any] = []
        self._made = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} made={self._made}>"

    def __call__(self, *, reopen_of: Any = None, **options: Any) -> Any:
        if reopen_of is None:
            self._made += 1
        elif not self.persistent:
            raise ValueError(f"{self!r} cannot reopen a store; check factory.persistent")
        store = self._open(self._made, reopen_of, options)
        self._stores.append(store)
        return store

    def _open(self, number: int, reopen_of: Any, options: dict[str, Any]) -> EventStore:
        raise NotImplementedError

    def close_all(self) -> None:
        for store in self._stores:
            store.close()


class MemoryStoreFactory(StoreFactory):
    """Makes :class:`MemoryStore` instances (options are ignored)."""

    def _open(self, number: int, reopen_of: Any, options: dict[str, Any]) -> EventStore:
        return MemoryStore()


class LmdbStoreFactory(StoreFactory):
    """Makes :class:`LmdbStore` instances in directories under ``directory``;
    keyword options (``durability``, ``map_size``) go to the constructor."""

    persistent = True
    durability = "sync"

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self._directory = directory

    def _open(self, number: int, reopen_of: Any, options: dict[str, Any]) -> EventStore:
        if reopen_of is not None:
            path = reopen_of.path
            # One LMDB environment must never be open twice in one process.
            reopen_of.close()
        else:
            path = self._directory / f"store-{number}"
        return LmdbStore(path, **options)


CLOSED_STORE_CALLS: dict[str, Callable[[Any], object]] = {
    "append_batch": lambda s: s.append_batch([append("A", 1, events(1))], TS),
    "read_stream": lambda s: s.read_stream("A"),
    "read_all": lambda s: s.read_all(),
    "read_category": lambda s: s.read_category("User"),
    "stream_version": lambda s: s.stream_version("A"),
    "streams": lambda s: s.streams(),
    "load_snapshot": lambda s: s.load_snapshot("A"),
    "get_ack": lambda s: s.get_ack("cmd-1"),
    "get_checkpoint": lambda s: s.get_checkpoint("users"),
    "put_checkpoint": lambda s: s.put_checkpoint("users", Checkpoint(1)),
    "checkpoint_names": lambda s: s.checkpoint_names(),
    "get_group": lambda s: s.get_group("mailer"),
    "put_group": lambda s: s.put_group("mailer", GroupProgress((BucketProgress(1),))),
    "group_names": lambda s: s.group_names(),
    "park": lambda s: s.park("mailer", ParkedEvent(1, "A", 5, "boom", TS)),
    "parked": lambda s: s.parked("mailer"),
    "unpark": lambda s: s.unpark("mailer", 1),
}


# -- properties: random batches against both stores and a model ---------------------------------

STREAMS = ("User-1", "User-10", "Order-1", "Order-10x")
CHECKPOINT_NAMES = ("users", "orders")

new_events = st.lists(
    st.builds(
        NewEvent,
        type=st.sampled_from(["Created", "Renamed", "Deleted"]),
        event_version=st.integers(1, 3),
        data=st.binary(max_size=24),
    ),
    max_size=4,
)
timestamps = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)


# Few characters, so generated ids are often prefixes of one another; \x01 and
# \x7f sit next to the separator and the end of ASCII in the LMDB key order.
stream_ids = st.text(alphabet="ab1-\x01\x7fé€", min_size=1, max_size=6)


def outcome(result: Ack | Conflict) -> object:
    """A comparable form of one append's result (exceptions compare by identity)."""
    if isinstance(result, Conflict):
        return ("conflict", result.stream, result.expected, result.actual, str(result))
    assert type(result) is Ack
    return result


class StoreMatchesModel(RuleBasedStateMachine):
    """Feeds random batches to a store and checks it, after every step,
    against an independent model of the log."""

    def __init__(self, new_factory: Callable[[Path], StoreFactory]) -> None:
        super().__init__()
        # Hypothesis does not reset function-scoped fixtures between examples,
        # so each example makes (and removes) its own directory.
        self.directory = tempfile.mkdtemp(prefix="motet-hypothesis-")
        self.factory = new_factory(Path(self.directory))
        self.store = self.factory(durability="none") if self.factory.persistent else self.factory()
        self.log: list[StoredEvent] = []
        self.snapshots: dict[str, Snapshot] = {}
        self.acks: dict[str, Ack] = {}
        self.checkpoints: dict[str, Checkpoint] = {}
        self.command_ids: list[str] = []

    def teardown(self) -> None:
        self.factory.close_all()
        shutil.rmtree(self.directory)

    def model_version(self, stream: str) -> int:
        return sum(1 for e in self.log if e.stream == stream)

    @rule(data=st.data(), timestamp=timestamps)
    def append_a_batch(self, data: st.DataObject, timestamp: float) -> None:
        running = {stream: self.model_version(stream) for stream in STREAMS}
        head = len(self.log)
        appends: list[Append] = []
        expected: list[object] = []
        for _ in range(data.draw(st.integers(0, 5), label="appends")):
            stream = data.draw(st.sampled_from(STREAMS), label="stream")
            current = running[stream]
            # Mostly right, sometimes stale or ahead.
            expected_version = data.draw(
                st.one_of(st.just(current), st.just(current), st.integers(0, current + 2)),
                label="expected_version",
            )
            new = data.draw(new_events, label="events")
            command_id = None
            if data.draw(st.booleans(), label="with_command_id"):
                command_id = f"cmd-{len(self.command_ids) + 1}"
                self.command_ids.append(command_id)
            snapshot = (
                Snapshot(current + len(new), 1, data.draw(st.binary(max_size=8)))
                if data.draw(st.booleans(), label="with_snapshot")
                else None
            )
            metadata = Metadata(command_id=command_id, correlation_id="corr")
            appends.append(Append(stream, expected_version, new, metadata, snapshot))

            if expected_version != current:
                message = (
                    f"stream {stream!r} is at version {current}, "
                    f"expected version {expected_version}"
                )
                expected.append(("conflict", stream, expected_version, current, message))
                continue
            for e in new:
                head += 1
                current += 1
                self.log.append(
                    StoredEvent(
                        head, stream, current, e.type, e.event_version, timestamp, metadata, e.data
                    )
                )
            running[stream] = current
            result = Ack(stream, current, head)
            expected.append(result)
            if snapshot is not None:
                self.snapshots[stream] = snapshot
            if command_id is not None and new:
                self.acks[command_id] = result

        found = [outcome(r) for r in self.store.append_batch(appends, timestamp)]

        assert found == expected

    @rule(
        name=st.sampled_from(CHECKPOINT_NAMES),
        position=st.integers(0, 50),
        schema_version=st.integers(0, 3),
        model=st.none() | st.binary(max_size=16),
    )
    def put_a_checkpoint(
        self, name: str, position: int, schema_version: int, model: bytes | None
    ) -> None:
        checkpoint = Checkpoint(position, schema_version, model)
        self.store.put_checkpoint(name, checkpoint)
        self.checkpoints[name] = checkpoint

    @precondition(lambda self: self.factory.persistent)
    @rule()
    def reopen_the_store(self) -> None:
        self.store = self.factory(reopen_of=self.store, durability="none")

    @invariant()
    def reads_from_any_point_return_the_right_slice(self) -> None:
        store = self.store
        for stream in STREAMS:
            whole = [e for e in self.log if e.stream == stream]
            n = len(whole)
            for after_version in sorted({0, 1, n // 2, max(n - 1, 0), n, n + 1}):
                for limit in (None, 0, 1, 2):
                    expected = whole[after_version:]
                    if limit is not None:
                        expected = expected[:limit]
                    found = store.read_stream(stream, after_version=after_version, limit=limit)
                    assert found == expected, (store, stream, after_version, limit)
        head = len(self.log)
        for after_position in sorted({0, 1, head // 2, max(head - 1, 0), head, head + 1}):
            for limit in (0, 1, 3, 1000):
                expected = self.log[after_position : after_position + limit]
                found = store.read_all(after_position=after_position, limit=limit)
                assert found == expected, (store, after_position, limit)

    @invariant()
    def the_log_is_gap_free_and_streams_are_contiguous(self) -> None:
        store = self.store
        log = read_everything(store, page=7)
        assert [e.position for e in log] == list(range(1, store.head_position + 1))
        for stream in STREAMS:
            from_stream = store.read_stream(stream)
            assert from_stream == [e for e in log if e.stream == stream]
            assert [e.version for e in from_stream] == list(range(1, len(from_stream) + 1))
            assert store.stream_version(stream) == len(from_stream)

    @invariant()
    def the_store_holds_exactly_the_model(self) -> None:
        store = self.store
        versions = sorted(
            (stream, self.model_version(stream)) for stream in STREAMS if self.model_version(stream)
        )
        assert read_everything(store, page=7) == self.log
        assert store.head_position == len(self.log)
        for category in {category_of(stream) for stream in STREAMS}:
            assert store.read_category(category) == [
                e for e in self.log if category_of(e.stream) == category
            ]
        assert store.streams() == versions
        for stream in STREAMS:
            assert store.load_snapshot(stream) == self.snapshots.get(stream)
        for command_id in self.command_ids:
            assert store.get_ack(command_id) == self.acks.get(command_id)
        for name in CHECKPOINT_NAMES:
            assert store.get_checkpoint(name) == self.checkpoints.get(name)
        assert store.checkpoint_names() == sorted(self.checkpoints)


# -- the contract ------------------------------------------------------------------------------


class StoreContract:
    """Every store's behaviour; subclass it with :meth:`new_factory`."""

    def new_factory(self, directory: Path) -> StoreFactory:
        """A factory of the backend's stores, which may keep files under
        ``directory`` (fresh and empty)."""
        raise NotImplementedError

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Iterator[StoreFactory]:
        """A factory of the backend's stores, closed at teardown."""
        factory = self.new_factory(tmp_path)
        try:
            yield factory
        finally:
            factory.close_all()

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Any:
        """A fresh, empty store of the backend."""
        return store_factory()

    # -- an empty store ---------------------------------------------------------------

    def test_an_empty_store_has_nothing(self, store: Any) -> None:
        assert store.head_position == 0
        assert store.read_all() == []
        assert store.read_stream("User-1") == []
        assert store.stream_version("User-1") == 0
        assert store.streams() == []
        assert store.load_snapshot("User-1") is None
        assert store.get_ack("cmd-1") is None
        assert store.get_checkpoint("users") is None

    def test_an_empty_batch_changes_nothing(self, store: Any) -> None:
        assert store.append_batch([], TS) == []
        assert store.head_position == 0
        assert store.read_all() == []

    # -- appending and reading ----------------------------------------------------------

    def test_appended_events_read_back_exactly(self, store: Any) -> None:
        metadata = Metadata(command_id="cmd-1", correlation_id="corr-1", causation_id="cause-1")
        new = [NewEvent("UserCreated", 1, b"\x81\xa1a\x01"), NewEvent("UserRenamed", 3, b"")]

        results = store.append_batch([Append("User-1", 0, new, metadata)], TS)

        assert results == [Ack("User-1", 2, 2)]
        expected = [
            StoredEvent(1, "User-1", 1, "UserCreated", 1, TS, metadata, b"\x81\xa1a\x01"),
            StoredEvent(2, "User-1", 2, "UserRenamed", 3, TS, metadata, b""),
        ]
        assert store.read_stream("User-1") == expected
        assert store.read_all() == expected
        assert store.stream_version("User-1") == 2
        assert store.streams() == [("User-1", 2)]
        assert store.head_position == 2

    def test_positions_are_gap_free_from_1_in_commit_order(self, store: Any) -> None:
        store.append_batch([append("A", 0, events(2)), append("B", 0, events(1, 10))], TS)
        store.append_batch([append("A", 2, events(1, 20))], TS + 1)
        store.append_batch([append("C", 0, events(3, 30)), append("B", 1, events(1, 40))], TS + 2)

        log = store.read_all()
        assert [e.position for e in log] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert [(e.stream, e.version) for e in log] == [
            ("A", 1),
            ("A", 2),
            ("B", 1),
            ("A", 3),
            ("C", 1),
            ("C", 2),
            ("C", 3),
            ("B", 2),
        ]
        assert [e.data for e in log] == [
            b"payload-0",
            b"payload-1",
            b"payload-10",
            b"payload-20",
            b"payload-30",
            b"payload-31",
            b"payload-32",
            b"payload-40",
        ]
        assert [e.timestamp for e in log] == [TS, TS, TS, TS + 1, TS + 2, TS + 2, TS + 2, TS + 2]
        assert store.head_position == 8

    def test_each_append_gets_its_own_result(self, store: Any) -> None:
        results = store.append_batch(
            [append("A", 0, events(3)), append("B", 0, events(1)), append("A", 3, events(2))], TS
        )

        # The position is that of the append's own last event.
        assert results == [
            Ack("A", 3, 3),
            Ack("B", 1, 4),
            Ack("A", 5, 6),
        ]
        assert all(type(r) is Ack for r in results)

    def test_streams_lists_every_stream_sorted_with_its_version(self, store: Any) -> None:
        store.append_batch(
            [append("b", 0, events(2)), append("a", 0, events(1)), append("c", 0, events(3))], TS
        )
        store.append_batch([append("a", 1, events(4))], TS)

        assert store.streams() == [("a", 5), ("b", 2), ("c", 3)]

    # -- optimistic concurrency -----------------------------------------------------------

    def test_a_conflicting_append_writes_nothing_while_the_others_commit(self, store: Any) -> None:
        store.append_batch([append("B", 0, events(2))], TS)

        results = store.append_batch(
            [
                append("A", 0, events(1, 10)),
                append("B", 5, events(3, 20), command_id="cmd-b", snapshot=Snapshot(5, 1, b"s")),
                append("C", 0, events(2, 30)),
            ],
            TS + 1,
        )

        assert results[0] == Ack("A", 1, 3)
        conflict = results[1]
        assert isinstance(conflict, Conflict)
        assert (conflict.stream, conflict.expected, conflict.actual) == ("B", 5, 2)
        assert str(conflict) == "stream 'B' is at version 2, expected version 5"
        # C's positions follow A's directly: the refused append took none.
        assert results[2] == Ack("C", 2, 5)
        assert [e.position for e in store.read_all()] == [1, 2, 3, 4, 5]
        assert [e.data for e in store.read_stream("B")] == [b"payload-0", b"payload-1"]
        assert store.stream_version("B") == 2
        assert store.load_snapshot("B") is None
        assert store.get_ack("cmd-b") is None
        assert store.head_position == 5

    def test_a_stale_expected_version_conflicts_with_the_committed_one(self, store: Any) -> None:
        store.append_batch([append("A", 0, events(2))], TS)

        (result,) = store.append_batch([append("A", 0, events(1))], TS)
        assert isinstance(result, Conflict)
        assert (result.expected, result.actual) == (0, 2)

        (result,) = store.append_batch([append("A", 3, events(1))], TS)
        assert isinstance(result, Conflict)
        assert (result.expected, result.actual) == (3, 2)

        assert store.head_position == 2

    def test_later_appends_in_a_batch_are_checked_against_the_running_version(
        self, store: Any
    ) -> None:
        results = store.append_batch(
            [
                append("A", 0, events(2)),
                append("A", 2, events(1, 10)),  # sees the two events above
                append("A", 0, events(1, 20)),  # stale: A is at 3 by now
                append("A", 9, events(1, 30)),  # wrong, and does not move A either
                append("A", 3, events(1, 40)),
            ],
            TS,
        )

        assert results[0] == Ack("A", 2, 2)
        assert results[1] == Ack("A", 3, 3)
        assert isinstance(results[2], Conflict)
        assert (results[2].expected, results[2].actual) == (0, 3)
        assert isinstance(results[3], Conflict)
        assert (results[3].expected, results[3].actual) == (9, 3)
        assert results[4] == Ack("A", 4, 4)
        assert [e.data for e in store.read_stream("A")] == [
            b"payload-0",
            b"payload-1",
            b"payload-10",
            b"payload-40",
        ]

    def test_a_batch_where_every_append_conflicts_writes_nothing(self, store: Any) -> None:
        results = store.append_batch([append("A", 1, events(1)), append("B", 2, events(2))], TS)

        assert all(isinstance(r, Conflict) for r in results)
        assert store.head_position == 0
        assert store.read_all() == []
        assert store.streams() == []

    # -- snapshots ---------------------------------------------------------------------------

    def test_a_snapshot_only_append_stores_the_snapshot_and_no_events(self, store: Any) -> None:
        store.append_batch([append("A", 0, events(2)), append("B", 0, events(1))], TS)
        snapshot = Snapshot(2, 1, b"state-at-2")

        (result,) = store.append_batch([append("A", 2, [], snapshot=snapshot)], TS)

        # The stream's version and the log's head stay where they were.
        assert result == Ack("A", 2, 3)
        assert store.head_position == 3
        assert store.stream_version("A") == 2
        assert len(store.read_all()) == 3
        assert store.load_snapshot("A") == snapshot
        assert store.load_snapshot("B") is None

    def test_a_snapshot_written_with_events_is_stored(self, store: Any) -> None:
        snapshot = Snapshot(3, 2, b"state-at-3")

        store.append_batch([append("A", 0, events(3), snapshot=snapshot)], TS)

        assert store.load_snapshot("A") == snapshot

    def test_a_later_snapshot_replaces_the_earlier_one(self, store: Any) -> None:
        store.append_batch([append("A", 0, events(2), snapshot=Snapshot(2, 1, b"old"))], TS)
        store.append_batch([append("A", 2, events(2), snapshot=Snapshot(4, 1, b"new"))], TS)

        assert store.load_snapshot("A") == Snapshot(4, 1, b"new")

        store.append_batch([append("A", 4, [], snapshot=Snapshot(4, 2, b"newer schema"))], TS)

        assert store.load_snapshot("A") == Snapshot(4, 2, b"newer schema")

    def test_a_conflicting_snapshot_only_append_stores_nothing(self, store: Any) -> None:
        store.append_batch([append("A", 0, events(2), snapshot=Snapshot(2, 1, b"kept"))], TS)

        (result,) = store.append_batch([append("A", 1, [], snapshot=Snapshot(1, 1, b"stale"))], TS)

        assert isinstance(result, Conflict)
        assert store.load_snapshot("A") == Snapshot(2, 1, b"kept")

    def test_an_append_with_no_events_and_no_snapshot_writes_nothing(self, store: Any) -> None:
        (result,) = store.append_batch([append("A", 0, [])], TS)

        assert result == Ack("A", 0, 0)
        assert store.streams() == []
        assert store.head_position == 0

    # -- the command-id index ---------------------------------------------------------------------

    def test_the_command_id_index_returns_the_original_result(self, store: Any) -> None:
        (first,) = store.append_batch([append("A", 0, events(2), command_id="cmd-1")], TS)
        store.append_batch(
            [append("B", 0, events(1), command_id="cmd-2"), append("A", 2, events(1))], TS
        )

        assert store.get_ack("cmd-1") == first == Ack("A", 2, 2)
        assert store.get_ack("cmd-2") == Ack("B", 1, 3)
        assert store.get_ack("cmd-3") is None

    def test_command_ids_are_recorded_only_for_appends_that_wrote_events(self, store: Any) -> None:
        store.append_batch([append("A", 0, events(1))], TS)

        store.append_batch(
            [
                append("A", 0, events(1), command_id="conflicted"),
                append("A", 1, [], command_id="snapshot-only", snapshot=Snapshot(1, 1, b"s")),
            ],
            TS,
        )

        assert store.get_ack("conflicted") is None
        assert store.get_ack("snapshot-only") is None

    # -- checkpoints ------------------------------------------------------------------------------

    def test_checkpoints_are_saved_replaced_and_kept_apart(self, store: Any) -> None:
        store.put_checkpoint("users", Checkpoint(3))
        store.put_checkpoint("orders", Checkpoint(7, 2, b"model-bytes"))

        assert store.get_checkpoint("users") == Checkpoint(3, 0, None)
        assert store.get_checkpoint("orders") == Checkpoint(7, 2, b"model-bytes")
        assert store.get_checkpoint("user") is None

        store.put_checkpoint("users", Checkpoint(12, 1, b""))

        assert store.get_checkpoint("users") == Checkpoint(12, 1, b"")
        assert store.get_checkpoint("orders") == Checkpoint(7, 2, b"model-bytes")

    # -- ranges and limits ------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("after_version", "limit", "versions"),
        [
            (0, None, [1, 2, 3, 4, 5]),
            (2, None, [3, 4, 5]),
            (4, None, [5]),
            (5, None, []),
            (9, None, []),
            (0, 2, [1, 2]),
            (1, 2, [2, 3]),
            (3, 10, [4, 5]),
            (0, 1, [1]),
            (0, 0, []),
            (2, 0, []),
        ],
    )
    def test_read_stream_after_version_is_exclusive_and_limit_caps(
        self, store: Any, after_version: int, limit: int | None, versions: list[int]
    ) -> None:
        # Another stream interleaved, so positions and versions differ.
        for i in range(5):
            store.append_batch([append("A", i, events(1, i)), append("Other", i, events(1))], TS)

        found = store.read_stream("A", after_version=after_version, limit=limit)

        assert [e.version for e in found] == versions
        assert [e.position for e in found] == [2 * v - 1 for v in versions]
        assert all(e.stream == "A" for e in found)

    @pytest.mark.parametrize(
        ("after_position", "limit", "positions"),
        [
            (0, 1000, [1, 2, 3, 4, 5, 6]),
            (3, 1000, [4, 5, 6]),
            (5, 1000, [6]),
            (6, 1000, []),
            (60, 1000, []),
            (0, 2, [1, 2]),
            (2, 3, [3, 4, 5]),
            (4, 5, [5, 6]),
            (0, 0, []),
            (3, 0, []),
        ],
    )
    def test_read_all_after_position_is_exclusive_and_limit_caps(
        self, store: Any, after_position: int, limit: int, positions: list[int]
    ) -> None:
        store.append_batch([append("A", 0, events(3)), append("B", 0, events(3))], TS)

        found = store.read_all(after_position=after_position, limit=limit)

        assert [e.position for e in found] == positions

    def test_read_all_returns_at_most_1000_events_by_default(self, store: Any) -> None:
        store.append_batch([append("A", 0, events(1005))], TS)

        first = store.read_all()
        rest = store.read_all(after_position=first[-1].position)

        assert [e.position for e in first] == list(range(1, 1001))
        assert [e.position for e in rest] == list(range(1001, 1006))
        assert len(store.read_stream("A")) == 1005

    def test_paging_through_the_log_reads_each_event_once(self, store: Any) -> None:
        for i in range(7):
            store.append_batch([append("A", 3 * i, events(3, 3 * i))], TS)

        paged = read_everything(store, page=4)

        assert paged == store.read_all()
        assert [e.position for e in paged] == list(range(1, 22))

    # -- stream ids that are prefixes of each other -----------------------------------------------

    def test_streams_whose_ids_are_prefixes_of_each_other_stay_separate(self, store: Any) -> None:
        ids = ["User-1", "User-10", "User-100", "User-1-a", "User-"]
        for round_ in range(3):
            store.append_batch(
                [
                    append(stream, round_ * (i + 1), events(i + 1, 100 * i))
                    for i, stream in enumerate(ids)
                ],
                TS,
            )
        store.append_batch(
            [
                append(stream, 3 * (i + 1), [], snapshot=Snapshot(0, 1, stream.encode()))
                for i, stream in enumerate(ids)
            ],
            TS,
        )

        for i, stream in enumerate(ids):
            found = store.read_stream(stream)
            assert {e.stream for e in found} == {stream}
            assert [e.version for e in found] == list(range(1, 3 * (i + 1) + 1))
            assert store.stream_version(stream) == 3 * (i + 1)
            assert store.read_stream(stream, after_version=3 * (i + 1)) == []
            assert store.load_snapshot(stream) == Snapshot(0, 1, stream.encode())
        assert store.streams() == sorted((s, 3 * (i + 1)) for i, s in enumerate(ids))
        # Prefixes of existing ids that were never written to are empty streams.
        for missing in ["User", "User-1-", "User-1000", "User-2"]:
            assert store.stream_version(missing) == 0
            assert store.read_stream(missing) == []
            assert store.load_snapshot(missing) is None

        (conflict,) = store.append_batch([append("User-1", 0, events(1))], TS)
        assert isinstance(conflict, Conflict)
        assert conflict.actual == 3

    # -- closing ----------------------------------------------------------------------------------

    @pytest.mark.parametrize("call", CLOSED_STORE_CALLS.values(), ids=CLOSED_STORE_CALLS.keys())
    def test_a_closed_store_raises_storage_error(
        self, store: Any, call: Callable[[Any], object]
    ) -> None:
        store.append_batch([append("A", 0, events(1))], TS)
        store.close()

        with pytest.raises(StorageError, match="closed"):
            call(store)

    def test_closing_twice_is_harmless(self, store: Any) -> None:
        store.close()
        store.close()

        with pytest.raises(StorageError, match="closed"):
            store.read_all()

    def test_repr_shows_the_head_and_whether_closed(self, store: Any) -> None:
        assert "head=0" in repr(store)
        store.append_batch([append("A", 0, events(3))], TS)
        assert "head=3" in repr(store)

        store.close()

        assert "closed" in repr(store)
        assert "head=" not in repr(store)

    # -- what the runtime needs to know about a store -----------------------------------------

    def test_a_store_says_whether_it_blocks_is_shared_and_how_durable_it_is(
        self, store: Any, store_factory: StoreFactory
    ) -> None:
        assert isinstance(store.blocking, bool)
        assert isinstance(store.shared, bool)
        assert store.durability == store_factory.durability
        assert store.durability in ("sync", "none")

    def test_checkpoint_names_lists_every_saved_checkpoint_sorted(self, store: Any) -> None:
        assert store.checkpoint_names() == []
        store.put_checkpoint("users", Checkpoint(3))
        store.put_checkpoint("orders", Checkpoint(7, 2, b"m"))
        store.put_checkpoint("users", Checkpoint(4))

        assert store.checkpoint_names() == ["orders", "users"]

    def test_wait_for_commit_returns_the_head_once_it_is_past_the_position(
        self, store: Any
    ) -> None:
        store.append_batch([append("A", 0, events(2))], TS)

        started = time.monotonic()
        assert store.wait_for_commit(1, 5.0) == 2
        assert store.wait_for_commit(0, 5.0) == 2
        assert time.monotonic() - started < 1.0

    def test_wait_for_commit_gives_up_after_the_timeout(self, store: Any) -> None:
        store.append_batch([append("A", 0, events(1))], TS)

        started = time.monotonic()
        assert store.wait_for_commit(1, 0.2) == 1
        assert 0.15 <= time.monotonic() - started < 2.0

    def test_wait_for_commit_wakes_for_a_commit_made_meanwhile(self, store: Any) -> None:
        def commit_later() -> None:
            time.sleep(0.1)
            store.append_batch([append("A", 0, events(3))], TS)

        writer = threading.Thread(target=commit_later)
        started = time.monotonic()
        writer.start()
        try:
            assert store.wait_for_commit(0, 5.0) == 3
        finally:
            writer.join()
        assert time.monotonic() - started < 2.0

    def test_wait_for_commit_on_a_closed_store_returns_at_once(self, store: Any) -> None:
        store.close()

        started = time.monotonic()
        store.wait_for_commit(0, 5.0)
        assert time.monotonic() - started < 1.0

    # -- properties ------------------------------------------------------------------------------

    def test_random_batches_match_a_model_of_the_log(self) -> None:
        new_factory = self.new_factory
        run_state_machine_as_test(
            lambda: StoreMatchesModel(new_factory),
            settings=settings(max_examples=50, stateful_step_count=20, deadline=None),
        )

    @settings(
        max_examples=50, deadline=None, suppress_health_check=[HealthCheck.differing_executors]
    )
    @given(
        batches=st.lists(
            st.lists(st.tuples(stream_ids, st.integers(1, 3)), min_size=1, max_size=6),
            min_size=1,
            max_size=4,
        )
    )
    def test_any_stream_ids_stay_separate_and_sort_alike(
        self, batches: list[list[tuple[str, int]]]
    ) -> None:
        directory = tempfile.mkdtemp(prefix="motet-hypothesis-")
        factory = self.new_factory(Path(directory))
        store = factory()
        try:
            written: dict[str, int] = {}
            log: list[tuple[str, int]] = []
            for batch in batches:
                appends = []
                for stream, count in batch:
                    appends.append(append(stream, written.get(stream, 0), events(count)))
                    log += [(stream, written.get(stream, 0) + v) for v in range(1, count + 1)]
                    written[stream] = written.get(stream, 0) + count
                assert all(type(r) is Ack for r in store.append_batch(appends, TS))
            assert store.streams() == sorted(written.items())
            for stream, version in written.items():
                assert store.stream_version(stream) == version
                found = store.read_stream(stream)
                assert [(e.stream, e.version) for e in found] == [
                    (stream, v) for v in range(1, version + 1)
                ]
            assert [(e.stream, e.version) for e in read_everything(store)] == log
        finally:
            factory.close_all()
            shutil.rmtree(directory)

    # -- consumer groups ----------------------------------------------------------------

    def test_a_group_progress_is_replaced_whole_and_survives_reopening(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory()
        assert store.get_group("mailer") is None
        assert store.group_names() == []
        first = GroupProgress((BucketProgress(3), BucketProgress(0, (2, 5))))
        second = GroupProgress((BucketProgress(7), BucketProgress(6, (9,)), BucketProgress()))

        store.put_group("mailer", first)
        store.put_group("mailer-2", first)
        store.put_group("mailer", second)

        assert store.get_group("mailer") == second
        assert store.get_group("mailer-2") == first
        assert store.group_names() == ["mailer", "mailer-2"]
        if store_factory.persistent:
            store = store_factory(reopen_of=store)
            assert store.get_group("mailer") == second
            assert store.group_names() == ["mailer", "mailer-2"]

    def test_parked_events_are_kept_per_group_by_position_until_unparked(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory()
        late = ParkedEvent(300, "User-1", 5, "ValueError: bad", TS)
        early = ParkedEvent(4, "Order-9", 6, "timeout", TS + 1)
        other = ParkedEvent(4, "User-2", 1, "nope", TS)

        store.park("mailer", late)
        store.park("mailer", early)
        store.park("billing", other)
        replaying = ParkedEvent(300, "User-1", 5, "ValueError: bad", TS, replaying=True)
        store.park("mailer", replaying)

        assert store.parked("mailer") == [early, replaying]
        assert store.parked("billing") == [other]
        assert store.parked("mail") == []
        assert store.group_names() == ["billing", "mailer"]
        assert store.get_group("billing") is None
        if store_factory.persistent:
            store = store_factory(reopen_of=store)
            assert store.parked("mailer") == [early, replaying]
        assert store.unpark("mailer", 4) is True
        assert store.unpark("mailer", 4) is False
        assert store.unpark("nobody", 4) is False
        assert store.parked("mailer") == [replaying]
        assert store.parked("billing") == [other]

    def test_group_names_that_cannot_be_keys_are_refused(self, store: Any) -> None:
        progress = GroupProgress((BucketProgress(),))
        with pytest.raises(ValueError, match=r"^group must be a non-empty string, got ''$"):
            store.put_group("", progress)
        with pytest.raises(ValueError, match="group must not contain NUL characters"):
            store.park("a\x00b", ParkedEvent(1, "A", 1, "e", TS))
        with pytest.raises(ValueError, match="longer than the limit of 200 bytes"):
            store.put_group("g" * 201, progress)
        assert store.group_names() == []

    # -- the category index -------------------------------------------------------------

    def test_a_category_reads_its_streams_events_in_log_order(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory()
        store.append_batch(
            [
                append("User-1", 0, events(2)),
                append("Order-1", 0, events(1)),
                append("User-a-b", 0, events(1)),
                append("Users-2", 0, events(1)),
                append("User", 0, events(1)),
            ],
            TS,
        )
        store.append_batch([append("User-1", 2, events(1)), append("Order-2", 0, events(2))], TS)

        users = store.read_category("User")
        assert [(e.position, e.stream, e.version) for e in users] == [
            (1, "User-1", 1),
            (2, "User-1", 2),
            (4, "User-a-b", 1),
            (6, "User", 1),
            (7, "User-1", 3),
        ]
        assert store.read_category("User", after_position=2, limit=2) == users[2:4]
        assert store.read_category("User", after_position=7) == []
        assert [e.position for e in store.read_category("Order")] == [3, 8, 9]
        assert [e.stream for e in store.read_category("Users")] == ["Users-2"]
        assert store.read_category("Use") == []
        assert store.read_category("User", limit=0) == []
        if store_factory.persistent:
            store = store_factory(reopen_of=store)
            assert store.read_category("User") == users
