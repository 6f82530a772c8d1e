"""An in-memory store: the reference implementation of the storage contract.

It keeps everything in Python containers, so it is lost when the process
ends. Tests run the same contract suite against it and the LMDB store.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence

from .errors import StorageError
from .idempotency import AckRecord
from .records import Ack, Append, Checkpoint, GroupProgress, ParkedEvent, Snapshot, StoredEvent
from .store import AppendError, Durability, check_group_name, plan_appends
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
        self._log: list[StoredEvent] = []
        self._streams: dict[str, list[int]] = {}
        self._categories: dict[str, list[int]] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._acks: dict[str, AckRecord] = {}
        self._checkpoints: dict[str, Checkpoint] = {}
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

    def append_batch(self, appends: Sequence[Append], timestamp: float) -> list[Ack | AppendError]:
        self._check_open()
        plan = plan_appends(appends, len(self._log), timestamp, self.stream_version, self._acks.get)
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

    def read_stream(
        self, stream: str, after_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        self._check_open()
        positions = self._streams.get(stream, [])[max(after_version, 0) :]
        if limit is not None:
            positions = positions[: max(limit, 0)]
        return [self._log[p - 1] for p in positions]

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        self._check_open()
        start = max(after_position, 0)
        return self._log[start : start + max(limit, 0)]

    def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        self._check_open()
        positions = self._categories.get(category, [])
        start = bisect.bisect_right(positions, after_position)
        return [self._log[p - 1] for p in positions[start : start + max(limit, 0)]]

    def stream_version(self, stream: str) -> int:
        self._check_open()
        return len(self._streams.get(stream, ()))

    def streams(self) -> list[tuple[str, int]]:
        self._check_open()
        return sorted((s, len(p)) for s, p in self._streams.items())

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
