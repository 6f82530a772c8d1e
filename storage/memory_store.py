"""An in-memory store: the reference implementation of the storage contract.

It keeps everything in Python containers, so it is lost when the process
ends. Tests run the same contract suite against it and the LMDB store.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import StorageError
from .idempotency import AckRecord
from .records import Append, AppendResult, Checkpoint, Snapshot, StoredEvent
from .store import AppendError, plan_appends

__all__ = ["MemoryStore"]


class MemoryStore:
    """An :class:`~motet.storage.store.EventStore` held in memory."""

    durability = "none"

    def __init__(self) -> None:
        self._log: list[StoredEvent] = []
        self._streams: dict[str, list[int]] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._acks: dict[str, AckRecord] = {}
        self._checkpoints: dict[str, Checkpoint] = {}
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"head={self.head_position}"
        return f"<MemoryStore {state} streams={len(self._streams)}>"

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    @property
    def head_position(self) -> int:
        return len(self._log)

    def append_batch(
        self, appends: Sequence[Append], timestamp: float
    ) -> list[AppendResult | AppendError]:
        self._check_open()
        plan = plan_appends(appends, len(self._log), timestamp, self.stream_version, self._acks.get)
        for record in plan.records:
            self._log.append(record)
            self._streams.setdefault(record.stream, []).append(record.position)
        self._snapshots.update(plan.snapshots)
        self._acks.update(plan.acks)
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

    def stream_version(self, stream: str) -> int:
        self._check_open()
        return len(self._streams.get(stream, ()))

    def streams(self) -> list[tuple[str, int]]:
        self._check_open()
        return sorted((s, len(p)) for s, p in self._streams.items())

    def load_snapshot(self, stream: str) -> Snapshot | None:
        self._check_open()
        return self._snapshots.get(stream)

    def get_ack(self, command_id: str) -> AppendResult | None:
        self._check_open()
        record = self._acks.get(command_id)
        return (
            None if record is None else AppendResult(record.stream, record.version, record.position)
        )

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

    def close(self) -> None:
        self._closed = True
