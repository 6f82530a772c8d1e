"""An in-memory store: the reference implementation of the storage contract.

It keeps everything in Python containers, so it is lost when the process
ends. Tests run the same contract suite against it and the LMDB store.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Mapping, Sequence
from typing import cast

from .deletion import deletion_after, position_runs, truncation_after
from .errors import StorageError
from .idempotency import AckRecord
from .records import (
    Ack,
    Append,
    Checkpoint,
    GroupProgress,
    ParkedEvent,
    Snapshot,
    StoredEvent,
    StreamDeletion,
)
from .store import (
    AppendError,
    Durability,
    check_deletion,
    check_group_name,
    plan_appends,
    plan_recorded,
)
from .streams import category_of

__all__ = ["MemoryStore"]


class MemoryStore:
    """An :class:`~motet.storage.store.EventStore` held in memory.

    With ``shared=True`` it stands for a log that others append to as well
    (e.g. from another thread, as a test of what a shared network store
    does): an engine on it then watches :meth:`wait_for_commit` for commits
    its own writer did not make. Appends from several threads must not
    overlap (one writer at a time, as for every store).
    """

    blocking = False

    def __init__(self, *, shared: bool = False) -> None:
        self.shared = shared
        # A removed event leaves None at its position (and in its stream's
        # list of positions, indexed by version - 1).
        self._log: list[StoredEvent | None] = []
        self._streams: dict[str, list[int | None]] = {}
        self._categories: dict[str, list[int]] = {}
        self._deletions: dict[str, StreamDeletion] = {}
        self._removed: set[int] = set()
        self._snapshots: dict[str, Snapshot] = {}
        self._acks: dict[str, AckRecord] = {}
        self._checkpoints: dict[str, Checkpoint] = {}
        self._keys: dict[str, bytes] = {}
        self._groups: dict[str, GroupProgress] = {}
        self._parked: dict[str, dict[int, ParkedEvent]] = {}
        self._closed = False
        self._committed = threading.Condition()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"head={self.head_position}"
        return f"<MemoryStore {state} streams={len(self._streams)}>"

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    @property
    def durability(self) -> Durability:
        """Always ``"none"``: nothing here survives the process."""
        return "none"

    @property
    def head_position(self) -> int:
        return len(self._log)

    def wait_for_commit(self, after_position: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._committed:
            while len(self._log) <= after_position and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._committed.wait(left)
        return len(self._log)

    def append_batch(
        self,
        appends: Sequence[Append],
        timestamp: float,
        keys: Mapping[str, bytes | None] | None = None,
    ) -> list[Ack | AppendError]:
        self._check_open()
        deletions = self._deletions

        def deleted_of(stream: str) -> bool:
            record = deletions.get(stream)
            return record is not None and record.deleted

        plan = plan_appends(
            appends, len(self._log), timestamp, self.stream_version, self._acks.get, deleted_of
        )
        if keys:
            # Before the log: a reader that sees an event finds its key.
            self._put_keys(keys)
        # One extend: a reader in another thread sees the whole batch or none
        # of it, and the log before the stream index that points into it.
        self._log.extend(plan.records)
        for record in plan.records:
            self._streams.setdefault(record.stream, []).append(record.position)
            self._categories.setdefault(category_of(record.stream), []).append(record.position)
        self._snapshots.update(plan.snapshots)
        self._acks.update(plan.acks)
        if plan.records:
            with self._committed:
                self._committed.notify_all()
        return plan.results

    def append_recorded(
        self,
        records: Sequence[StoredEvent],
        *,
        removed: Sequence[tuple[int, int]] = (),
        deletions: Sequence[tuple[str, StreamDeletion]] = (),
    ) -> None:
        self._check_open()
        for stream, deletion in deletions:
            check_deletion(stream, deletion)
        taken = {stream: deletion.removed_through for stream, deletion in deletions}

        def version_of(stream: str) -> int:
            return max(len(self._streams.get(stream, ())), taken.get(stream, 0))

        plan = plan_recorded(records, len(self._log), version_of, self._acks.get, removed)
        # Checked above: nothing below fails.
        for stream, deletion in deletions:
            positions = self._streams.setdefault(stream, [])
            positions.extend([None] * (deletion.removed_through - len(positions)))
            self._deletions[stream] = deletion
        runs = iter(plan.removed)
        run = next(runs, None)
        for record in records:
            while run is not None and run[0] < record.position:
                self._extend_removed(run)
                run = next(runs, None)
            self._log.append(record)
            positions = self._streams.setdefault(record.stream, [])
            positions.extend([None] * (record.version - 1 - len(positions)))
            positions.append(record.position)
            self._categories.setdefault(category_of(record.stream), []).append(record.position)
        while run is not None:
            self._extend_removed(run)
            run = next(runs, None)
        self._acks.update(plan.acks)
        if records or removed:
            with self._committed:
                self._committed.notify_all()

    def _extend_removed(self, run: tuple[int, int]) -> None:
        first, last = run
        self._removed.update(range(first, last + 1))
        self._log.extend([None] * (last - first + 1))

    def stream_deletions(
        self, after: str = "", limit: int = 1000
    ) -> list[tuple[str, StreamDeletion]]:
        self._check_open()
        key = after.encode()
        found = sorted(
            (stream.encode(), stream, record)
            for stream, record in self._deletions.items()
            if stream.encode() > key
        )
        return [(stream, record) for _, stream, record in found[: max(limit, 0)]]

    def delete_stream(self, stream: str, *, hard: bool, timestamp: float) -> StreamDeletion:
        self._check_open()
        positions = self._streams.get(stream, [])
        removed = self._remove(positions, len(positions)) if hard else 0
        record = deletion_after(
            stream,
            self._deletions.get(stream),
            len(positions),
            removed,
            hard=hard,
            timestamp=timestamp,
        )
        if hard:
            self._snapshots.pop(stream, None)
        self._deletions[stream] = record
        return record

    def truncate_stream(self, stream: str, through_version: int) -> int:
        self._check_open()
        positions = self._streams.get(stream, [])
        through = min(max(through_version, 0), len(positions))
        removed = self._remove(positions, through)
        if removed:
            self._deletions[stream] = truncation_after(
                self._deletions.get(stream), len(positions), through, removed
            )
        return removed

    def _remove(self, positions: list[int | None], through: int) -> int:
        """Remove the events of versions 1..``through`` (``positions`` is
        their stream's list); return how many were still there."""
        removed = 0
        for index in range(through):
            position = positions[index]
            if position is None:
                continue
            # In this order, so that a reader in another thread never meets
            # a None it was not told to skip.
            positions[index] = None
            self._removed.add(position)
            self._log[position - 1] = None
            removed += 1
        return removed

    def stream_deletion(self, stream: str) -> StreamDeletion | None:
        self._check_open()
        return self._deletions.get(stream)

    def removed_runs(self) -> list[tuple[int, int]]:
        self._check_open()
        return position_runs(self._removed)

    def read_stream(
        self, stream: str, after_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        self._check_open()
        positions = self._streams.get(stream, [])[max(after_version, 0) :]
        log = self._log
        # A position left in a stream's list is never None in the log.
        found = [cast(StoredEvent, log[p - 1]) for p in positions if p is not None]
        return found if limit is None else found[: max(limit, 0)]

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        self._check_open()
        start = max(after_position, 0)
        limit = max(limit, 0)
        if not self._removed:
            return cast("list[StoredEvent]", self._log[start : start + limit])
        found: list[StoredEvent] = []
        log = self._log
        while start < len(log) and len(found) < limit:
            chunk = log[start : start + limit]
            found.extend(event for event in chunk if event is not None)
            start += len(chunk)
        return found[:limit]

    def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        self._check_open()
        positions = self._categories.get(category, [])
        found: list[StoredEvent] = []
        for position in positions[bisect.bisect_right(positions, after_position) :]:
            if len(found) >= limit:
                break
            event = self._log[position - 1]
            if event is not None:  # not removed on purpose
                found.append(event)
        return found

    def stream_version(self, stream: str) -> int:
        self._check_open()
        return len(self._streams.get(stream, ()))

    def streams(self) -> list[tuple[str, int]]:
        self._check_open()
        deletions = self._deletions
        return sorted(
            (s, len(p))
            for s, p in self._streams.items()
            if not ((record := deletions.get(s)) is not None and record.hard)
        )

    def load_snapshot(self, stream: str) -> Snapshot | None:
        self._check_open()
        return self._snapshots.get(stream)

    def get_ack(self, command_id: str) -> Ack | None:
        self._check_open()
        record = self._acks.get(command_id)
        return None if record is None else Ack(record.stream, record.version, record.position)

    def get_ack_record(self, command_id: str) -> AckRecord | None:
        """The Ack recorded for ``command_id`` with the fingerprint of the
        command that earned it (see :mod:`motet.storage.idempotency`)."""
        self._check_open()
        return self._acks.get(command_id)

    def get_checkpoint(self, name: str) -> Checkpoint | None:
        self._check_open()
        return self._checkpoints.get(name)

    def put_checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        self._check_open()
        self._checkpoints[name] = checkpoint

    def checkpoint_names(self) -> list[str]:
        self._check_open()
        return sorted(self._checkpoints)

    def get_key(self, subject: str) -> bytes | None:
        self._check_open()
        return self._keys.get(subject)

    def get_keys(self, subjects: Sequence[str]) -> dict[str, bytes]:
        self._check_open()
        keys = self._keys
        return {subject: keys[subject] for subject in subjects if subject in keys}

    def put_keys(self, keys: Mapping[str, bytes | None]) -> None:
        self._check_open()
        self._put_keys(keys)

    def _put_keys(self, keys: Mapping[str, bytes | None]) -> None:
        for subject, record in keys.items():
            if record is None:
                self._keys.pop(subject, None)
            else:
                self._keys[subject] = bytes(record)

    def get_group(self, name: str) -> GroupProgress | None:
        self._check_open()
        return self._groups.get(name)

    def put_group(self, name: str, progress: GroupProgress) -> None:
        self._check_open()
        check_group_name(name)
        self._groups[name] = progress

    def group_names(self) -> list[str]:
        self._check_open()
        return sorted({*self._groups, *(n for n, parked in self._parked.items() if parked)})

    def park(self, name: str, event: ParkedEvent) -> None:
        self._check_open()
        check_group_name(name)
        self._parked.setdefault(name, {})[event.position] = event

    def parked(self, name: str) -> list[ParkedEvent]:
        self._check_open()
        return sorted(self._parked.get(name, {}).values(), key=lambda e: e.position)

    def unpark(self, name: str, position: int) -> bool:
        self._check_open()
        return self._parked.get(name, {}).pop(position, None) is not None

    def close(self) -> None:
        with self._committed:
            self._closed = True
            self._committed.notify_all()
