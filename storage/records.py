"""The records the storage layer stores and returns.

Event payloads and states travel through storage as already-encoded bytes;
:mod:`motet.storage.codec` turns them into and out of the application's types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = [
    "Ack",
    "Append",
    "BucketProgress",
    "Checkpoint",
    "CommandFingerprint",
    "GroupProgress",
    "Metadata",
    "NewEvent",
    "ParkedEvent",
    "RecordedEvent",
    "Snapshot",
    "StoredEvent",
    "StreamDeletion",
]


class Metadata(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True, gc=False):
    """Where an event came from: the command that produced it and its causal chain."""

    command_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


class CommandFingerprint(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What tells a command apart for its command id: its type tag and a
    digest of its encoding (see :mod:`motet.storage.idempotency`)."""

    type: str
    digest: bytes


class NewEvent(msgspec.Struct, frozen=True, gc=False):
    """An event about to be appended: its stable type tag, the version of that
    type's schema, and the msgpack-encoded payload."""

    type: str
    event_version: int
    data: bytes


class Snapshot(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An aggregate's state after ``version`` events, encoded with state schema
    ``schema_version``."""

    version: int
    schema_version: int
    state: bytes


class Append(msgspec.Struct, gc=False):
    """One command's worth of writes to one stream, committed atomically.

    ``expected_version`` is the stream version the events were decided on; the
    append is refused with :class:`~motet.storage.errors.Conflict` when the stream
    is elsewhere. ``events`` may be empty when only ``snapshot`` is written.
    ``fingerprint`` identifies the command behind a ``metadata.command_id``,
    kept beside its Ack so that a retry can be told from another command.
    ``subjects`` names the data subjects whose personal data the snapshot
    may hold: the writer seals it under their keys (see
    :mod:`motet.storage.keyring`); stores ignore it. ``fenced=False`` exempts
    the append from a partitioned store's lease fence: a process manager's
    records, which every writer node may append and whose expected version
    alone keeps them single (see :mod:`motet.actors.process_manager`).
    """

    stream: str
    expected_version: int
    events: Sequence[NewEvent]
    metadata: Metadata = Metadata()
    snapshot: Snapshot | None = None
    fingerprint: CommandFingerprint | None = None
    subjects: tuple[str, ...] = ()
    fenced: bool = True


class Ack(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A command's acknowledgement, and where its append landed: the
    ``stream``, its new ``version``, and the global ``position`` of its last
    event (pass it as ``after=`` to read your writes). For a snapshot-only
    append both stay where they were. The command-id index keeps this same
    record, so a retried command gets its original Ack back."""

    stream: str
    version: int
    position: int


class StoredEvent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An event as recorded in the log, payload still encoded.

    This struct, msgpack-encoded as an array, is also the log's value format:
    the position is repeated in the value so a record read on its own (or a
    misplaced one) can be checked against its key.
    """

    position: int
    stream: str
    version: int
    type: str
    event_version: int
    timestamp: float
    metadata: Metadata
    data: bytes


class Checkpoint(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A projection's progress: the last position it applied and, optionally,
    its read model encoded with model schema ``schema_version``."""

    position: int
    schema_version: int = 0
    model: bytes | None = None


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as the engine hands it out: a log record with its payload
    decoded into the application's event type (upcast to the newest version)."""

    position: int
    stream: str
    version: int
    type: str
    event_version: int
    timestamp: float
    metadata: Metadata
    data: Any


class StreamDeletion(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What the store keeps of a stream that was deleted or had events
    removed (see docs/design.md, "Deleting streams and retention").

    ``version`` is the stream's version when this record was last written
    (so a stream whose events are all removed keeps its version and never
    hands a version out twice); ``deleted`` says the stream refuses appends
    (a tombstone, written by a soft or a hard delete) and ``hard`` that its
    events were removed with it; ``removed_through`` is the highest version
    removed (every version up to it is gone: a hard delete removes up to
    ``version``, retention an oldest part) and ``removed`` how many events
    of the stream were removed; ``deleted_at`` is when it was deleted (wall
    clock, seconds), ``None`` while it is not.
    """

    version: int
    deleted: bool = False
    hard: bool = False
    removed_through: int = 0
    removed: int = 0
    deleted_at: float | None = None


class BucketProgress(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """How far a consumer group got in one hash bucket of streams: every
    event of the bucket at or below ``position`` is done (acked or parked),
    and so are the positions in ``done`` above it (acked out of order,
    while an earlier event of another stream in the bucket was in flight)."""

    position: int = 0
    done: tuple[int, ...] = ()


class GroupProgress(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A consumer group's durable progress: one :class:`BucketProgress` per
    hash bucket (the bucket of a stream is a stable hash of its id modulo
    ``len(buckets)``)."""

    buckets: tuple[BucketProgress, ...]


class ParkedEvent(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An event a consumer group gave up on after ``attempts`` failed
    deliveries, with the last ``error``; kept until it is replayed (and
    acked) or skipped. ``replaying`` is set while a replay is in flight, so
    a replay interrupted by a restart is delivered again."""

    position: int
    stream: str
    attempts: int
    error: str
    parked_at: float
    replaying: bool = False
