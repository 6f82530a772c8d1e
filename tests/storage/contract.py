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

import re
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
    InvalidKey,
    LmdbStore,
    MemoryStore,
    Metadata,
    MisplacedRecord,
    NewEvent,
    Snapshot,
    StorageError,
    StoredEvent,
    StreamDeleted,
    StreamDeletion,
)
from motet.storage.errors import CommandIdReused, NotFound
from motet.storage.idempotency import AckRecord
from motet.storage.records import (
    Ack,
    BucketProgress,
    CommandFingerprint,
    GroupProgress,
    ParkedEvent,
)
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


def fingerprinted(
    stream: str, expected: int, command_id: str, fingerprint: CommandFingerprint
) -> Append:
    """A one-event append of the command with ``fingerprint`` under ``command_id``."""
    return Append(
        stream, expected, events(1), Metadata(command_id=command_id), fingerprint=fingerprint
    )


def re_search(pattern: str, error: object) -> bool:
    """Whether ``pattern`` is found in the message of ``error``."""
    return re.search(pattern, str(error)) is not None


def recorded(
    position: int, stream: str, version: int, command_id: str | None = None
) -> StoredEvent:
    """An already-positioned event, as an import brings it."""
    return StoredEvent(
        position,
        stream,
        version,
        "Created",
        2,
        TS + position,
        Metadata(command_id, f"corr-{position}", None),
        f"payload-{position}".encode(),
    )


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
    "append_recorded": lambda s: s.append_recorded([recorded(1, "A", 1)]),
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
    "delete_stream": lambda s: s.delete_stream("A", hard=False, timestamp=TS),
    "truncate_stream": lambda s: s.truncate_stream("A", 1),
    "stream_deletion": lambda s: s.stream_deletion("A"),
    "removed_runs": lambda s: s.removed_runs(),
    "get_group": lambda s: s.get_group("mailer"),
    "put_group": lambda s: s.put_group("mailer", GroupProgress((BucketProgress(1),))),
    "group_names": lambda s: s.group_names(),
    "park": lambda s: s.park("mailer", ParkedEvent(1, "A", 5, "boom", TS)),
    "parked": lambda s: s.parked("mailer"),
    "unpark": lambda s: s.unpark("mailer", 1),
    "stream_deletions": lambda s: s.stream_deletions(),
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


def outcome(result: Ack | Conflict | StreamDeleted) -> object:
    """A comparable form of one append's result (exceptions compare by identity)."""
    if isinstance(result, Conflict):
        return ("conflict", result.stream, result.expected, result.actual, str(result))
    if isinstance(result, StreamDeleted):
        return ("deleted", result.stream)
    assert type(result) is Ack
    return result


class StoreMatchesModel(RuleBasedStateMachine):
    """Feeds random batches, deletions and truncations to a store and checks
    it, after every step, against an independent model of the log."""

    def __init__(self, new_factory: Callable[[Path], StoreFactory]) -> None:
        super().__init__()
        # Hypothesis does not reset function-scoped fixtures between examples,
        # so each example makes (and removes) its own directory.
        self.directory = tempfile.mkdtemp(prefix="motet-hypothesis-")
        self.factory = new_factory(Path(self.directory))
        self.store = self.factory(durability="none") if self.factory.persistent else self.factory()
        # The events still in the log, the last position handed out, each
        # stream's version, and what was deleted or removed.
        self.log: list[StoredEvent] = []
        self.head = 0
        self.versions: dict[str, int] = {}
        self.deleted: set[str] = set()
        self.hard: set[str] = set()
        self.removed: set[int] = set()
        self.snapshots: dict[str, Snapshot] = {}
        self.acks: dict[str, Ack] = {}
        self.checkpoints: dict[str, Checkpoint] = {}
        self.command_ids: list[str] = []

    def teardown(self) -> None:
        self.factory.close_all()
        shutil.rmtree(self.directory)

    def model_version(self, stream: str) -> int:
        return self.versions.get(stream, 0)

    @rule(data=st.data(), timestamp=timestamps)
    def append_a_batch(self, data: st.DataObject, timestamp: float) -> None:
        running = {stream: self.model_version(stream) for stream in STREAMS}
        head = self.head
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

            if stream in self.deleted:
                expected.append(("deleted", stream))
                continue
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
        self.head = head
        self.versions.update({s: v for s, v in running.items() if v})

    def remove(self, stream: str, through: int) -> None:
        gone = [e for e in self.log if e.stream == stream and e.version <= through]
        self.removed.update(e.position for e in gone)
        self.log = [e for e in self.log if not (e.stream == stream and e.version <= through)]

    @precondition(lambda self: bool(self.versions))
    @rule(data=st.data(), hard=st.booleans())
    def delete_a_stream(self, data: st.DataObject, hard: bool) -> None:
        stream = data.draw(st.sampled_from(sorted(self.versions)), label="stream")
        record = self.store.delete_stream(stream, hard=hard, timestamp=TS)
        self.deleted.add(stream)
        if hard:
            self.hard.add(stream)
            self.remove(stream, self.versions[stream])
            self.snapshots.pop(stream, None)
        assert record.deleted
        assert record.hard == (stream in self.hard)
        assert record.version == self.versions[stream]
        assert self.store.stream_deletion(stream) == record

    @precondition(lambda self: bool(self.versions))
    @rule(data=st.data())
    def truncate_a_stream(self, data: st.DataObject) -> None:
        stream = data.draw(st.sampled_from(sorted(self.versions)), label="stream")
        through = data.draw(st.integers(0, self.versions[stream] + 1), label="through")
        before = len(self.log)
        self.remove(stream, through)
        assert self.store.truncate_stream(stream, through) == before - len(self.log)

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
            n = self.model_version(stream)
            for after_version in sorted({0, 1, n // 2, max(n - 1, 0), n, n + 1}):
                for limit in (None, 0, 1, 2):
                    expected = [e for e in whole if e.version > after_version]
                    if limit is not None:
                        expected = expected[:limit]
                    found = store.read_stream(stream, after_version=after_version, limit=limit)
                    assert found == expected, (store, stream, after_version, limit)
        head = self.head
        for after_position in sorted({0, 1, head // 2, max(head - 1, 0), head, head + 1}):
            for limit in (0, 1, 3, 1000):
                expected = [e for e in self.log if e.position > after_position][:limit]
                found = store.read_all(after_position=after_position, limit=limit)
                assert found == expected, (store, after_position, limit)

    @invariant()
    def gaps_are_exactly_the_removed_positions_and_streams_are_contiguous(self) -> None:
        store = self.store
        log = read_everything(store, page=7)
        positions = [e.position for e in log]
        assert sorted(positions + sorted(self.removed)) == list(range(1, store.head_position + 1))
        removed = {p for first, last in store.removed_runs() for p in range(first, last + 1)}
        assert removed == self.removed
        for stream in STREAMS:
            from_stream = store.read_stream(stream)
            assert from_stream == [e for e in log if e.stream == stream]
            versions = [e.version for e in from_stream]
            version = self.model_version(stream)
            assert versions == list(range(version - len(versions) + 1, version + 1))
            assert store.stream_version(stream) == version

    @invariant()
    def the_store_holds_exactly_the_model(self) -> None:
        store = self.store
        versions = sorted(
            (stream, version)
            for stream, version in self.versions.items()
            if stream not in self.hard
        )
        assert read_everything(store, page=7) == self.log
        assert store.head_position == self.head
        for category in {category_of(stream) for stream in STREAMS}:
            assert store.read_category(category) == [
                e for e in self.log if category_of(e.stream) == category
            ]
        assert store.streams() == versions
        for stream in STREAMS:
            assert store.load_snapshot(stream) == self.snapshots.get(stream)
            record = store.stream_deletion(stream)
            assert (record is not None and record.deleted) == (stream in self.deleted)
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

    def test_a_command_id_reused_by_another_command_is_refused_alone(self, store: Any) -> None:
        first = CommandFingerprint("CreateUser", b"first-digest-16b")
        other_data = CommandFingerprint("CreateUser", b"other-digest-16b")
        other_type = CommandFingerprint("UpdateUser", first.digest)
        (ack,) = store.append_batch([fingerprinted("User-1", 0, "k", first)], TS)

        results = store.append_batch(
            [
                fingerprinted("User-1", 1, "k", first),  # a retry: the first Ack
                fingerprinted("User-1", 1, "k", other_data),
                fingerprinted("User-1", 1, "k", other_type),
                fingerprinted("User-2", 0, "k", first),
                append("User-3", 0, events(1)),
            ],
            TS,
        )

        assert results[0] == ack == Ack("User-1", 1, 1)
        assert [type(r) for r in results[1:4]] == [CommandIdReused] * 3
        already = r"command_id 'k' was already used by a CreateUser command on stream 'User-1'"
        assert re_search(already + r".*got a CreateUser command with other data", results[1])
        assert re_search(already + r".*got a UpdateUser command", results[2])
        assert re_search(already + r".*got a CreateUser command on 'User-2'", results[3])
        assert results[4] == Ack("User-3", 1, 2)
        assert store.head_position == 2
        assert store.get_ack("k") == ack
        assert store.get_ack_record("k") == AckRecord("User-1", 1, 1, "CreateUser", first.digest)

    def test_a_command_id_reused_in_the_same_batch_is_refused_alone(self, store: Any) -> None:
        first = CommandFingerprint("CreateUser", b"first-digest-16b")
        other = CommandFingerprint("CreateUser", b"other-digest-16b")

        results = store.append_batch(
            [
                fingerprinted("User-1", 0, "k", first),
                fingerprinted("User-1", 1, "k", first),
                fingerprinted("User-1", 1, "k", other),
            ],
            TS,
        )

        assert results[0] == results[1] == Ack("User-1", 1, 1)
        assert isinstance(results[2], CommandIdReused)
        assert store.head_position == 1

    def test_the_fingerprint_of_a_command_id_outlives_reopening(
        self, store_factory: StoreFactory
    ) -> None:
        first = CommandFingerprint("CreateUser", b"first-digest-16b")
        store = store_factory()
        store.append_batch([fingerprinted("User-1", 0, "k", first)], TS)

        # A store that keeps nothing across reopening is checked as it is.
        reopened = store_factory(reopen_of=store) if store_factory.persistent else store

        assert reopened.get_ack_record("k") == AckRecord("User-1", 1, 1, "CreateUser", first.digest)
        (refused,) = reopened.append_batch(
            [fingerprinted("User-1", 1, "k", CommandFingerprint("CreateUser", b"x" * 16))], TS
        )
        assert isinstance(refused, CommandIdReused)

    def test_a_command_id_recorded_without_a_fingerprint_takes_any_retry_on_its_stream(
        self, store: Any
    ) -> None:
        # What a store written before fingerprints holds: a retry cannot be
        # told from another command, so only the stream is compared.
        (ack,) = store.append_batch([append("User-1", 0, events(1), command_id="k")], TS)
        fingerprint = CommandFingerprint("CreateUser", b"first-digest-16b")

        results = store.append_batch(
            [
                fingerprinted("User-1", 1, "k", fingerprint),
                fingerprinted("User-2", 0, "k", fingerprint),
            ],
            TS,
        )

        assert results[0] == ack
        assert isinstance(results[1], CommandIdReused)
        assert store.get_ack_record("k") == AckRecord("User-1", 1, 1)

    # -- already-positioned records (imports) ----------------------------------------------------

    def test_recorded_events_are_stored_exactly_as_given(self, store_factory: StoreFactory) -> None:
        source = store_factory()
        source.append_batch(
            [append("A", 0, events(2), command_id="cmd-1"), append("B", 0, events(1))], TS
        )
        source.append_batch([append("A", 2, events(1), command_id="cmd-2")], TS + 1)
        copy = store_factory()

        copy.append_recorded(read_everything(source)[:2])
        copy.append_recorded(read_everything(source)[2:])

        assert read_everything(copy) == read_everything(source)
        assert copy.streams() == source.streams() == [("A", 3), ("B", 1)]
        assert copy.read_stream("A") == source.read_stream("A")
        assert copy.head_position == 4
        assert copy.get_ack("cmd-1") == source.get_ack("cmd-1") == Ack("A", 2, 2)
        assert copy.get_ack("cmd-2") == Ack("A", 3, 4)
        # Appends carry on after the imported head and versions.
        (ack,) = copy.append_batch([append("B", 1, events(1))], TS)
        assert ack == Ack("B", 2, 5)
        (retried,) = copy.append_batch([append("A", 0, events(1), command_id="cmd-1")], TS)
        assert retried == Ack("A", 2, 2)

    @settings(
        max_examples=30, deadline=None, suppress_health_check=[HealthCheck.differing_executors]
    )
    @given(
        batches=st.lists(
            st.lists(
                st.tuples(st.sampled_from(STREAMS), st.integers(1, 3), st.booleans()),
                min_size=1,
                max_size=5,
            ),
            min_size=1,
            max_size=5,
        ),
        cuts=st.lists(st.integers(1, 30), max_size=6),
    )
    def test_any_log_copied_in_any_batches_is_the_same_log(
        self, batches: list[list[tuple[str, int, bool]]], cuts: list[int]
    ) -> None:
        directory = tempfile.mkdtemp(prefix="motet-hypothesis-")
        factory = self.new_factory(Path(directory))
        try:
            source, copy = factory(), factory()
            commands = 0
            for batch in batches:
                appends = []
                for stream, count, with_id in batch:
                    commands += 1
                    command_id = f"cmd-{commands}" if with_id else None
                    version = source.stream_version(stream) + sum(
                        len(a.events) for a in appends if a.stream == stream
                    )
                    appends.append(append(stream, version, events(count), command_id=command_id))
                source.append_batch(appends, TS + commands)
            log = read_everything(source)
            start = 0
            for cut in [*sorted(set(cuts)), len(log)]:
                if start < cut <= len(log):
                    copy.append_recorded(log[start:cut])
                    start = cut

            assert read_everything(copy) == log
            assert copy.streams() == source.streams()
            assert copy.head_position == source.head_position
            for n in range(1, commands + 1):
                assert copy.get_ack(f"cmd-{n}") == source.get_ack(f"cmd-{n}")
        finally:
            factory.close_all()
            shutil.rmtree(directory)

    def test_a_command_split_over_two_batches_is_acknowledged_at_its_last_event(
        self, store: Any
    ) -> None:
        store.append_recorded([recorded(1, "A", 1, "cmd"), recorded(2, "A", 2, "cmd")])
        store.append_recorded([recorded(3, "A", 3, "cmd"), recorded(4, "B", 1, "other")])

        assert store.get_ack("cmd") == Ack("A", 3, 3)
        assert store.get_ack("other") == Ack("B", 1, 4)

    @pytest.mark.parametrize(
        ("batch", "position", "message"),
        [
            ([recorded(3, "A", 2)], 3, r"position 3 does not follow the log's head 1"),
            (
                [recorded(2, "B", 1), recorded(4, "B", 2)],
                4,
                r"position 4 does not follow the log's head 2",
            ),
            ([recorded(1, "B", 1)], 1, r"position 1 does not follow the log's head 1"),
            (
                [recorded(2, "B", 1), recorded(3, "A", 3)],
                3,
                r"version 3 of stream 'A', which is at version 1: versions must be contiguous",
            ),
            ([recorded(2, "A", 1)], 2, r"version 1 of stream 'A', which is at version 1"),
            (
                [recorded(2, "B", 1, "cmd-1")],
                2,
                r"command_id 'cmd-1', already acknowledged at position 1",
            ),
            (
                [recorded(2, "B", 1, "x"), recorded(3, "C", 1, "x")],
                3,
                r"command_id 'x', already acknowledged at position 2 \(stream 'B' version 1\)",
            ),
        ],
    )
    def test_a_misplaced_record_is_refused_and_nothing_of_its_batch_is_written(
        self, store: Any, batch: list[StoredEvent], position: int, message: str
    ) -> None:
        store.append_recorded([recorded(1, "A", 1, "cmd-1")])

        with pytest.raises(MisplacedRecord, match=message) as caught:
            store.append_recorded(batch)

        assert caught.value.position == position
        assert read_everything(store) == [recorded(1, "A", 1, "cmd-1")]
        assert store.streams() == [("A", 1)]
        assert store.head_position == 1
        assert store.get_ack("x") is None

    def test_a_recorded_event_whose_ids_cannot_be_keys_is_refused(self, store: Any) -> None:
        with pytest.raises(InvalidKey, match="stream id must not contain NUL"):
            store.append_recorded([recorded(1, "A\x00", 1)])
        with pytest.raises(InvalidKey, match="command_id must be a non-empty string"):
            store.append_recorded([recorded(1, "A", 1, "")])

        assert store.head_position == 0
        assert read_everything(store) == []

    def test_an_empty_import_batch_changes_nothing(self, store: Any) -> None:
        store.append_recorded([])

        assert store.head_position == 0

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

    # -- subject keys ---------------------------------------------------------------------

    def test_a_subject_without_a_key_has_none(self, store: Any) -> None:
        assert store.get_key("u1") is None

    def test_keys_written_with_a_batch_read_back_and_deletes_take_them_away(
        self, store: Any
    ) -> None:
        store.append_batch([append("A", 0, events(1))], TS, {"u1": b"k1", "u2": b"k2"})
        assert store.get_key("u1") == b"k1"
        assert store.get_key("u2") == b"k2"

        store.append_batch([append("A", 1, events(1))], TS, {"u1": None, "u3": b"k3"})

        assert store.get_key("u1") is None
        assert store.get_key("u2") == b"k2"
        assert store.get_key("u3") == b"k3"
        assert [e.position for e in store.read_all()] == [1, 2]

    def test_get_keys_reads_many_subjects_at_once_leaving_out_those_without_one(
        self, store: Any
    ) -> None:
        assert store.get_keys([]) == {}
        assert store.get_keys(["u1"]) == {}
        store.put_keys({"u1": b"k1", "u2": b"k2", "u3": b"k3"})
        store.put_keys({"u2": None})
        assert store.get_keys(["u3", "nobody", "u1", "u2", "u1"]) == {"u1": b"k1", "u3": b"k3"}

    def test_keys_are_written_even_when_the_batch_s_appends_are_refused(self, store: Any) -> None:
        # The key changes belong to the transaction, not to one append: a
        # forget whose event conflicts has still deleted the key.
        store.append_batch([append("A", 0, events(1))], TS, {"u1": b"k1"})
        results = store.append_batch([append("A", 0, events(1))], TS, {"u1": None})
        assert isinstance(results[0], Conflict)
        assert store.get_key("u1") is None

    def test_put_keys_writes_and_deletes_in_one_go_and_deleting_a_missing_key_is_harmless(
        self, store: Any
    ) -> None:
        store.put_keys({"u1": b"k1", "u2": b"k2"})
        store.put_keys({"u1": None, "nobody": None, "u2": b"k2-new"})
        assert store.get_key("u1") is None
        assert store.get_key("nobody") is None
        assert store.get_key("u2") == b"k2-new"
        assert store.head_position == 0

    def test_keys_are_kept_apart_from_the_log(self, store: Any) -> None:
        store.append_batch([append("u1", 0, events(1))], TS, {"u1": b"k1"})
        store.append_batch([], TS, {"u2": b"k2"})
        assert store.get_key("u2") == b"k2"
        assert store.streams() == [("u1", 1)]
        assert store.head_position == 1

    def test_keys_survive_reopening(self, store_factory: StoreFactory) -> None:
        store = store_factory()
        store.append_batch([append("A", 0, events(1))], TS, {"u1": b"k1", "u2": b"k2"})
        store.put_keys({"u2": None})
        if store_factory.persistent:
            store = store_factory(reopen_of=store)
        assert store.get_key("u1") == b"k1"
        assert store.get_key("u2") is None

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

    # -- deleting streams and removing old events ----------------------------------------

    def interleaved(self, store: Any, streams: int = 4, rounds: int = 5) -> None:
        """``rounds`` events on each of ``streams`` streams, interleaved."""
        for version in range(rounds):
            results = store.append_batch(
                [append(f"S-{n}", version, [event(version)]) for n in range(streams)], TS
            )
            assert all(type(r) is Ack for r in results)

    def test_a_soft_delete_refuses_appends_and_keeps_the_events(self, store: Any) -> None:
        self.interleaved(store)
        before = read_everything(store)

        record = store.delete_stream("S-1", hard=False, timestamp=TS + 1)
        results = store.append_batch([append("S-1", 5, events(1)), append("S-2", 5, events(1))], TS)

        assert record == StreamDeletion(version=5, deleted=True, deleted_at=TS + 1)
        assert store.stream_deletion("S-1") == record
        assert store.stream_deletion("S-2") is None
        assert isinstance(results[0], StreamDeleted)
        assert str(results[0]) == "stream 'S-1' was deleted and takes no more events"
        assert results[1] == Ack("S-2", 6, 21)
        assert read_everything(store) == [*before, *store.read_stream("S-2", 5)]
        assert store.stream_version("S-1") == 5
        assert ("S-1", 5) in store.streams()

    def test_a_hard_delete_removes_the_stream_and_keeps_every_other_position(
        self, store: Any
    ) -> None:
        self.interleaved(store)
        store.append_batch([append("S-1", 5, [], snapshot=Snapshot(5, 1, b"state"))], TS)
        before = read_everything(store)

        record = store.delete_stream("S-1", hard=True, timestamp=TS)

        assert (record.hard, record.removed, record.removed_through) == (True, 5, 5)
        assert read_everything(store) == [e for e in before if e.stream != "S-1"]
        assert store.read_stream("S-1") == []
        assert store.load_snapshot("S-1") is None
        assert store.stream_version("S-1") == 5
        assert store.removed_runs() == [(2, 2), (6, 6), (10, 10), (14, 14), (18, 18)]
        assert [s for s, _ in store.streams()] == ["S-0", "S-2", "S-3"]
        assert store.head_position == 20

    def test_deleting_neighbouring_streams_merges_their_removed_runs(self, store: Any) -> None:
        self.interleaved(store, streams=3, rounds=2)
        store.delete_stream("S-0", hard=True, timestamp=TS)
        store.delete_stream("S-2", hard=True, timestamp=TS)
        store.delete_stream("S-1", hard=True, timestamp=TS)

        assert store.removed_runs() == [(1, 6)]
        assert store.read_all() == []
        assert store.head_position == 6

    def test_removing_the_newest_events_never_moves_the_head_back(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory()
        self.interleaved(store, streams=2, rounds=1)
        store.delete_stream("S-1", hard=True, timestamp=TS)
        if store_factory.persistent:
            store = store_factory(reopen_of=store)

        results = store.append_batch([append("S-0", 1, events(1))], TS)

        assert store.head_position == 3
        assert results == [Ack("S-0", 2, 3)]

    def test_a_truncated_stream_keeps_its_version_and_takes_appends(self, store: Any) -> None:
        self.interleaved(store, streams=2)

        removed = store.truncate_stream("S-0", 3)
        again = store.truncate_stream("S-0", 3)
        everything = store.truncate_stream("S-1", 99)
        results = store.append_batch([append("S-1", 5, events(1))], TS)

        assert (removed, again, everything) == (3, 0, 5)
        assert [e.version for e in store.read_stream("S-0")] == [4, 5]
        assert [e.version for e in store.read_stream("S-0", 3, limit=1)] == [4]
        assert store.stream_deletion("S-0") == StreamDeletion(
            version=5, removed_through=3, removed=3
        )
        assert results == [Ack("S-1", 6, 11)]
        assert store.streams() == [("S-0", 5), ("S-1", 6)]

    def test_a_log_with_deletions_is_copied_with_its_gaps_and_records(
        self, store_factory: StoreFactory
    ) -> None:
        source = store_factory()
        self.interleaved(source, streams=4, rounds=3)
        source.delete_stream("S-1", hard=True, timestamp=TS + 1)
        source.delete_stream("S-2", hard=False, timestamp=TS + 2)
        source.truncate_stream("S-3", 2)
        source.append_batch([append("S-0", 3, events(1))], TS)
        source.delete_stream("S-0", hard=True, timestamp=TS + 3)
        runs = source.removed_runs()
        deletions = source.stream_deletions()
        copy = store_factory()

        # Deletion records first, then events and runs in two batches.
        copy.append_recorded([], deletions=deletions[:1])
        log = read_everything(source)
        copy.append_recorded(log[:2], removed=runs[:2], deletions=deletions[1:])
        copy.append_recorded(log[2:], removed=runs[2:])
        if store_factory.persistent:
            copy = store_factory(reopen_of=copy)

        assert read_everything(copy) == log
        assert copy.removed_runs() == runs
        assert copy.head_position == source.head_position == 13
        assert copy.stream_deletions() == deletions
        assert copy.streams() == source.streams()
        for stream in ("S-0", "S-1", "S-2", "S-3"):
            assert copy.stream_version(stream) == source.stream_version(stream)
            assert copy.read_stream(stream) == source.read_stream(stream)
        results = copy.append_batch(
            [append("S-2", 3, events(1)), append("S-1", 3, events(1)), append("S-3", 3, events(1))],
            TS,
        )
        assert [type(r) for r in results] == [StreamDeleted, StreamDeleted, Ack]
        assert results[2] == Ack("S-3", 4, 14)

    def test_stream_deletions_are_read_in_pages_in_byte_order(self, store: Any) -> None:
        for stream in ("b", "a", "\u00e9", "B"):
            store.append_batch([append(stream, 0, events(1))], TS)
            store.delete_stream(stream, hard=False, timestamp=TS)

        first = store.stream_deletions(limit=2)
        rest = store.stream_deletions(first[-1][0])

        assert [s for s, _ in first] == ["B", "a"]
        assert [s for s, _ in rest] == ["b", "\u00e9"]
        assert rest[0][1] == StreamDeletion(1, deleted=True, deleted_at=TS)
        assert store.stream_deletions(limit=0) == []

    @pytest.mark.parametrize(
        ("removed", "position", "message"),
        [
            ([(3, 3)], 3, r"the removed run 3\.\.3 does not follow position 1"),
            ([(2, 1)], 2, r"the removed run 2\.\.1 does not follow position 1"),
            ([(2, 3), (3, 4)], 3, r"the removed run 3\.\.4 does not follow position 3"),
        ],
    )
    def test_a_removed_run_out_of_place_is_refused_with_its_batch(
        self, store: Any, removed: list[tuple[int, int]], position: int, message: str
    ) -> None:
        store.append_recorded([recorded(1, "A", 1)])

        with pytest.raises(MisplacedRecord, match=message) as caught:
            store.append_recorded([], removed=removed, deletions=[("B", StreamDeletion(2))])

        assert caught.value.position == position
        assert store.removed_runs() == []
        assert store.stream_deletions() == []
        assert store.head_position == 1

    def test_a_run_and_a_record_at_the_same_position_are_refused(self, store: Any) -> None:
        with pytest.raises(MisplacedRecord, match=r"the removed run 1\.\.2 does not follow"):
            store.append_recorded([recorded(1, "A", 1), recorded(2, "A", 2)], removed=[(1, 2)])
        with pytest.raises(MisplacedRecord, match="version 1 of stream 'A', which is at version 2"):
            store.append_recorded(
                [recorded(1, "A", 1)], deletions=[("A", StreamDeletion(2, removed_through=2))]
            )

        assert store.head_position == 0
        assert store.stream_deletions() == []

    @pytest.mark.parametrize(
        ("record", "message"),
        [
            (StreamDeletion(2, removed_through=3), "does not add up"),
            (StreamDeletion(2, deleted=True, hard=True, deleted_at=TS), "is hard but leaves"),
            (StreamDeletion(2, deleted=True), "must have a deletion time"),
        ],
    )
    def test_an_impossible_deletion_record_is_refused(
        self, store: Any, record: StreamDeletion, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            store.append_recorded([], deletions=[("A", record)])

        assert store.stream_deletions() == []

    def test_deleting_a_stream_that_never_had_events_is_not_found(self, store: Any) -> None:
        with pytest.raises(NotFound, match="stream 'nobody' has no events"):
            store.delete_stream("nobody", hard=True, timestamp=TS)
        assert store.stream_deletion("nobody") is None
        assert store.truncate_stream("nobody", 3) == 0

    def test_a_hard_delete_after_a_soft_one_removes_the_events_and_keeps_the_time(
        self, store: Any
    ) -> None:
        self.interleaved(store, streams=1, rounds=3)
        store.delete_stream("S-0", hard=False, timestamp=TS)
        record = store.delete_stream("S-0", hard=True, timestamp=TS + 5)

        assert record == StreamDeletion(
            version=3, deleted=True, hard=True, removed_through=3, removed=3, deleted_at=TS
        )
        assert read_everything(store) == []

    def test_a_retried_command_of_a_deleted_stream_gets_its_first_ack(self, store: Any) -> None:
        first = store.append_batch([append("S-0", 0, events(1), command_id="c1")], TS)
        store.delete_stream("S-0", hard=True, timestamp=TS)

        retried = store.append_batch([append("S-0", 0, events(1), command_id="c1")], TS)

        assert retried == first == [Ack("S-0", 1, 1)]
        assert store.get_ack("c1") == Ack("S-0", 1, 1)

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

    def test_categories_of_non_ascii_streams_split_at_the_first_separator(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory()
        store.append_batch(
            [
                append("Größe-1", 0, events(1)),
                append("Größen-1", 0, events(1)),
                append("Größe", 0, events(1)),
                append("日本-a-b", 0, events(1)),
                append("Größe-ü", 0, events(1)),
            ],
            TS,
        )
        assert [e.stream for e in store.read_category("Größe")] == ["Größe-1", "Größe", "Größe-ü"]
        assert [e.stream for e in store.read_category("Größen")] == ["Größen-1"]
        assert [e.position for e in store.read_category("日本")] == [4]
        assert store.read_category("Gr") == []
