"""The storage contract every store implements, and the logic they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from .errors import Conflict
from .records import Ack, Append, Checkpoint, Snapshot, StoredEvent

__all__ = ["MAX_KEY_BYTES", "Durability", "EventStore", "check_key", "plan_appends"]

Durability = Literal["sync", "none"]
"""``"sync"``: fsync each commit before it is acknowledged; ``"none"``: no fsync
(a process crash loses nothing, an OS crash or power loss may lose the last commits)."""


class EventStore(Protocol):
    """A synchronous event store: a gap-free global log, per-stream versions,
    snapshots, a command-id index and projection checkpoints.

    Implementations are not thread-safe for writers: one writer at a time
    (the engine's group-commit writer). Reads may run concurrently with it.

    A new backend implements every member below and joins the contract
    suite in ``tests/storage/contract.py`` with one subclass.
    """

    blocking: bool
    """Whether calls may block on I/O (a network round trip). ``False`` for
    stores that answer from memory (the in-memory store; LMDB, whose reads
    are mmap'd): the runtime then calls their reads on the event loop's
    thread. ``True``: every call runs in a worker thread."""

    shared: bool
    """Whether other processes (or other handles) may append to this log, so
    the engine must watch it with :meth:`wait_for_commit` to see their
    commits; ``False`` when this handle is the log's only writer."""

    @property
    def durability(self) -> Durability:
        """``"sync"`` when each commit is durable (fsynced) before
        :meth:`append_batch` returns, ``"none"`` otherwise."""
        ...

    @property
    def head_position(self) -> int:
        """Position of the last committed event (0 for an empty log), as this
        handle last saw it; never blocks. Other processes' commits show up
        after :meth:`wait_for_commit` returns."""
        ...

    def wait_for_commit(self, after_position: int, timeout: float) -> int:
        """Block until the log's head is past ``after_position`` or
        ``timeout`` seconds pass; return the head. Commits made through
        any handle count (the in-memory store and LMDB poll or use a
        condition; a network store listens for a notification). Called in a
        worker thread; on a closed store it returns at once."""
        ...

    def append_batch(self, appends: Sequence[Append], timestamp: float) -> list[Ack | Conflict]:
        """Commit all ``appends`` in one transaction, in order.

        Each append gets its own result: an :class:`Ack`, or a
        :class:`Conflict` when its expected version does not match (that append
        writes nothing; the others are unaffected). Raises
        :class:`~motet.storage.errors.StorageError` when nothing could be committed.
        """
        ...

    def read_stream(
        self, stream: str, after_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events of ``stream`` with version > ``after_version``, oldest first."""
        ...

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Up to ``limit`` events with position > ``after_position``, in order.

        A record that does not decode ends the batch early; the call whose
        first record it is raises :class:`~motet.storage.errors.CodecError` naming
        its position.
        """
        ...

    def stream_version(self, stream: str) -> int:
        """Current version of ``stream`` (0 when it has no events)."""
        ...

    def streams(self) -> list[tuple[str, int]]:
        """Every stream with its current version, sorted by stream id."""
        ...

    def load_snapshot(self, stream: str) -> Snapshot | None:
        """The latest snapshot of ``stream``, if any."""
        ...

    def get_ack(self, command_id: str) -> Ack | None:
        """The result recorded for a command id, if that command was committed."""
        ...

    def get_checkpoint(self, name: str) -> Checkpoint | None:
        """A projection's saved checkpoint, if any."""
        ...

    def checkpoint_names(self) -> list[str]:
        """Names of the projections that saved a checkpoint, sorted."""
        ...

    def put_checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        """Save a projection's checkpoint (durably in ``sync`` mode)."""
        ...

    def close(self) -> None:
        """Release the store; later calls fail. Closing twice is harmless."""
        ...


def plan_appends(
    appends: Sequence[Append],
    head: int,
    timestamp: float,
    version_of: Callable[[str], int],
) -> tuple[list[Ack | Conflict], list[StoredEvent], int]:
    """Check expected versions and assign positions and versions for a batch.

    ``version_of`` gives a stream's committed version; appends earlier in the
    same batch count too. Returns the per-append results, the events to write
    in position order, and the new head position.
    """
    results: list[Ack | Conflict] = []
    records: list[StoredEvent] = []
    versions: dict[str, int] = {}
    for append in appends:
        stream = append.stream
        current = versions.get(stream)
        if current is None:
            current = version_of(stream)
        if append.expected_version != current:
            results.append(Conflict(stream, append.expected_version, current))
            versions[stream] = current
            continue
        metadata = append.metadata
        for event in append.events:
            head += 1
            current += 1
            records.append(
                StoredEvent(
                    head,
                    stream,
                    current,
                    event.type,
                    event.event_version,
                    timestamp,
                    metadata,
                    event.data,
                )
            )
        versions[stream] = current
        results.append(Ack(stream, current, head))
    return results, records, head


MAX_KEY_BYTES = 500
"""Longest stream id or command id, in UTF-8 bytes (LMDB keys are at most 511)."""


def check_key(kind: str, value: str) -> None:
    """Raise ``ValueError`` naming the problem when ``value`` cannot be used as
    a stream id or command id (``kind`` names which, for the message)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise ValueError(f"{kind} must not contain NUL characters, got {value!r}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValueError(f"{kind} must be valid Unicode text, got {value!r}") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(f"{kind} is longer than {MAX_KEY_BYTES} bytes: {value[:40]!r}...")
