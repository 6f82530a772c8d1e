"""The storage contract every store implements, and the logic they share."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol

from .errors import CommandIdReused, Conflict, InvalidKey, MisplacedRecord, NotOwner, StreamDeleted
from .idempotency import AckRecord, ack_record, retried_ack
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

AppendError = Conflict | InvalidKey | CommandIdReused | StreamDeleted | NotOwner
"""The per-append errors of a batch (each refuses its append alone;
:class:`NotOwner` comes from a partitioned store only, see
:mod:`motet.storage.partitions`)."""

__all__ = [
    "MAX_COMMAND_ID_BYTES",
    "MAX_GROUP_BYTES",
    "MAX_KEY_BYTES",
    "MAX_STREAM_BYTES",
    "AppendError",
    "AppendPlan",
    "Durability",
    "EventStore",
    "RecordedPlan",
    "check_aggregate_id",
    "check_command_id",
    "check_deletion",
    "check_group_name",
    "check_key",
    "check_stream_id",
    "plan_appends",
    "plan_recorded",
]

Durability = Literal["sync", "none"]
"""``"sync"``: fsync each commit before it is acknowledged; ``"none"``: no fsync
(a process crash loses nothing, an OS crash or power loss may lose the last commits)."""


class EventStore(Protocol):
    """A synchronous event store: a global log of unique, increasing
    positions (gap-free but for events removed on purpose, see
    :mod:`motet.storage.deletion`), per-stream versions, snapshots, a
    command-id index, stream deletions and projection checkpoints.

    Implementations are not thread-safe for writers: one writer at a time
    (the engine's group-commit writer). Reads may run concurrently with it.

    A new backend implements every member below and joins the contract
    suite in ``tests/storage/contract.py`` with one subclass.

    A store may also have a ``before_commit`` attribute (``None`` or a
    callable, set by the engine's writer): :meth:`append_batch` then calls
    it, in the calling thread, once the batch is written and only making it
    durable is left (LMDB: before its transaction commits; PostgreSQL:
    before COMMIT). It must not raise; a store without the attribute, or
    that cannot tell that moment, simply never calls it.
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

    def append_batch(
        self,
        appends: Sequence[Append],
        timestamp: float,
        keys: Mapping[str, bytes | None] | None = None,
    ) -> list[Ack | AppendError]:
        """Commit all ``appends`` in one transaction, in order, with the key
        records ``keys`` (subject → record; ``None`` deletes the subject's
        key) written in that same transaction, whatever each append's fate:
        an event is never committed without the key that decrypts it.

        Each append gets its own result: an :class:`Ack`, or the
        :data:`AppendError` that refused it alone (a :class:`Conflict` when its
        expected version does not match, an id the store cannot key, a command
        id of another command): that append writes nothing, the others are
        unaffected. Raises
        :class:`~motet.storage.errors.StorageError` when nothing could be committed.
        """
        ...

    def append_recorded(
        self,
        records: Sequence[StoredEvent],
        *,
        removed: Sequence[tuple[int, int]] = (),
        deletions: Sequence[tuple[str, StreamDeletion]] = (),
    ) -> None:
        """Commit events that already have their positions, versions, times and
        metadata (an import, a copy of another log), all in one transaction,
        with the runs of positions ``removed`` on purpose in the copied log and
        the streams' ``deletions`` records (tombstones, removed versions).

        ``deletions`` are written first, as they are; a stream's versions up
        to its record's ``removed_through`` count as taken. Then records and
        removed runs ``(first, last)`` together must follow the log's head
        without a gap (a run moves the head to its ``last``, as a removal of
        the newest events does), each record at its stream's next version;
        the command id in a record's metadata is indexed
        with the Ack of that record (the last event of its command wins, as an
        append's Ack is its last event), so a retried command gets its original
        Ack. Raises :class:`~motet.storage.errors.MisplacedRecord` naming the
        first record that does not fit, and
        :class:`~motet.storage.errors.InvalidKey` for an id that cannot be a
        key, or a deletion record that cannot be; then nothing of the batch
        is written. Raises
        :class:`~motet.storage.errors.StorageError` when nothing could be
        committed. Snapshots and checkpoints are not written: they are derived
        from the log.
        """
        ...

    def stream_deletions(
        self, after: str = "", limit: int = 1000
    ) -> list[tuple[str, StreamDeletion]]:
        """Up to ``limit`` streams with a deletion record (deleted or with
        events removed), the first ones whose id sorts after ``after`` (by
        UTF-8 bytes), with their records, in that order."""
        ...

    def delete_stream(self, stream: str, *, hard: bool, timestamp: float) -> StreamDeletion:
        """Delete ``stream`` in one transaction and return its record: a
        tombstone, after which appends to it are refused with
        :class:`StreamDeleted`; with ``hard`` its events, index rows and
        snapshot are removed as well (their positions recorded as removed,
        every other event keeps its position). Deleting again is harmless.
        Raises :class:`~motet.storage.errors.NotFound` for a stream that
        never had an event."""
        ...

    def truncate_stream(self, stream: str, through_version: int) -> int:
        """Remove the events of ``stream`` with version <= ``through_version``
        in one transaction (retention); return how many were removed. The
        stream keeps its version and its snapshot, and stays open for appends."""
        ...

    def stream_deletion(self, stream: str) -> StreamDeletion | None:
        """What was deleted or removed of ``stream``, ``None`` when nothing."""
        ...

    def removed_runs(self) -> list[tuple[int, int]]:
        """Every removed position as sorted, disjoint runs ``(first, last)``."""
        ...

    def read_stream(
        self, stream: str, after_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events of ``stream`` with version > ``after_version``, oldest first
        (removed ones left out)."""
        ...

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Up to ``limit`` events with position > ``after_position``, in order;
        removed positions are skipped (so positions may jump).

        A record that does not decode ends the batch early; the call whose
        first record it is raises :class:`~motet.storage.errors.CodecError` naming
        its position.
        """
        ...

    def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """Up to ``limit`` events of the streams of ``category`` (the part of
        a stream id before its first ``-``, see :func:`~.streams.category_of`)
        with position > ``after_position``, in log order. Served by a
        category index written in the append's transaction, so a rare
        category costs what it holds, not the log's length."""
        ...

    def stream_version(self, stream: str) -> int:
        """Current version of ``stream`` (0 when it never had events); removed
        events still count."""
        ...

    def streams(self) -> list[tuple[str, int]]:
        """Every stream with events left, and every truncated one (not hard
        deleted), with its current version, sorted by stream id."""
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

    def get_key(self, subject: str) -> bytes | None:
        """The key record of a data subject (see :mod:`motet.storage.keyring`),
        or ``None`` when it has none. Keys are kept apart from the events, so
        deleting one shreds the subject's personal data without touching the log."""
        ...

    def get_keys(self, subjects: Sequence[str]) -> dict[str, bytes]:
        """The key records of those of ``subjects`` that have one, read
        together (one round trip for a network store): a subject without a
        key is left out of the result."""
        ...

    def put_keys(self, keys: Mapping[str, bytes | None]) -> None:
        """Write key records (``None``: delete that subject's key; deleting a
        missing key is harmless) in one transaction, durably in ``sync`` mode."""
        ...

    def get_group(self, name: str) -> GroupProgress | None:
        """A consumer group's saved progress, if it saved any."""
        ...

    def put_group(self, name: str, progress: GroupProgress) -> None:
        """Replace a consumer group's progress whole (durably in ``sync``
        mode). Raises :class:`InvalidKey` for a name that cannot be a key."""
        ...

    def group_names(self) -> list[str]:
        """Names of the consumer groups that saved progress or parked an
        event, sorted."""
        ...

    def park(self, name: str, event: ParkedEvent) -> None:
        """Record (or replace) ``event`` as parked by group ``name``, durably
        in ``sync`` mode."""
        ...

    def parked(self, name: str) -> list[ParkedEvent]:
        """The events group ``name`` parked, by position."""
        ...

    def unpark(self, name: str, position: int) -> bool:
        """Forget the parked event at ``position`` of group ``name``; whether
        there was one."""
        ...

    def close(self) -> None:
        """Release the store; later calls fail. Closing twice is harmless."""
        ...


class AppendPlan(NamedTuple):
    """What :func:`plan_appends` decided for a batch: what each store writes."""

    results: list[Ack | AppendError]
    """One per append, in order: its Ack, or the error that refused it alone."""
    records: list[StoredEvent]
    """The events to write, in position order."""
    head: int
    """The head position once the batch is written."""
    acks: list[tuple[str, AckRecord]]
    """(command id, record) for each append whose command id is new."""
    snapshots: list[tuple[str, Snapshot]]
    """(stream, snapshot) for each accepted append that carries one."""
    versions: dict[str, int]
    """The version of each stream the batch looked at, once it is written."""


def plan_appends(
    appends: Sequence[Append],
    head: int,
    timestamp: float,
    version_of: Callable[[str], int],
    ack_of: Callable[[str], Ack | None] = lambda command_id: None,
    deleted_of: Callable[[str], bool] | None = None,
    known: Mapping[str, int] | None = None,
) -> AppendPlan:
    """Check every append of a batch and assign positions and versions.

    An append fails alone, with its own error as its result, when its stream
    is elsewhere than its expected version (:class:`Conflict`), when its stream
    id or command id cannot be a key (:class:`InvalidKey`), or when its command
    id already belongs to a different command (:class:`CommandIdReused`), or
    when its stream was deleted (:class:`StreamDeleted`, as ``deleted_of``
    says; None: no stream was ever deleted); the rest of the batch is
    unaffected. An append whose command id already has the same command's
    Ack gets that Ack and writes nothing.

    ``version_of`` gives a stream's committed version and ``ack_of`` the
    stored record of a command id (an :class:`Ack`, possibly an
    :class:`AckRecord`); appends earlier in the same batch count too.
    ``known`` holds committed versions a store already knows (from the
    ``versions`` of its earlier plans): a stream found there is neither
    checked again nor looked up with ``version_of``.
    """
    results: list[Ack | AppendError] = []
    records: list[StoredEvent] = []
    acks: list[tuple[str, AckRecord]] = []
    snapshots: list[tuple[str, Snapshot]] = []
    versions: dict[str, int] = {}
    batch_acks: dict[str, AckRecord] = {}
    add = records.append
    for append in appends:
        stream = append.stream
        command_id = append.metadata.command_id if append.events else None
        # A stream seen before (in this batch, or committed by an earlier one)
        # was checked then.
        current = versions.get(stream)
        if current is None and known is not None:
            current = known.get(stream)
        try:
            if current is None:
                check_stream_id(stream, "stream id")
            if command_id is not None:
                check_command_id(command_id)
        except InvalidKey as exc:
            results.append(exc)
            continue
        if command_id is not None:
            earlier = batch_acks.get(command_id) or ack_of(command_id)
            if earlier is not None:
                try:
                    results.append(
                        retried_ack(command_id, earlier, None, stream, append.fingerprint)
                    )
                except CommandIdReused as exc:
                    results.append(exc)
                continue
        if deleted_of is not None and deleted_of(stream):
            results.append(StreamDeleted(stream))
            continue
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
            add(
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
        result = Ack(stream, current, head)
        results.append(result)
        if append.snapshot is not None:
            snapshots.append((stream, append.snapshot))
        if command_id is not None:
            record = ack_record(result, append.fingerprint)
            batch_acks[command_id] = record
            acks.append((command_id, record))
    return AppendPlan(results, records, head, acks, snapshots, versions)


class RecordedPlan(NamedTuple):
    """What :func:`plan_recorded` decided for an import batch."""

    acks: list[tuple[str, AckRecord]]
    """(command id, Ack) to index, at most one per command id."""
    removed: list[tuple[int, int]]
    """The batch's removed runs, neighbouring ones merged."""
    head: int
    """The head position once the batch is written."""


def check_deletion(stream: str, record: StreamDeletion) -> None:
    """Raise :class:`InvalidKey` for a stream id that cannot be a key and
    ``ValueError`` for a deletion record that cannot be true (what an
    import writes as it is)."""
    check_stream_id(stream, "stream id")
    if not 0 <= record.removed_through <= record.version or not (
        0 <= record.removed <= record.removed_through
    ):
        raise ValueError(
            f"the deletion record of stream {stream!r} does not add up: version "
            f"{record.version}, removed through version {record.removed_through}, "
            f"{record.removed} removed"
        )
    if record.hard and not (record.deleted and record.removed_through == record.version):
        raise ValueError(
            f"the deletion record of stream {stream!r} is hard but leaves versions "
            f"{record.removed_through + 1}..{record.version} or is no tombstone"
        )
    if record.deleted != (record.deleted_at is not None):
        raise ValueError(
            f"the deletion record of stream {stream!r} must have a deletion time if and "
            "only if it is deleted"
        )


def plan_recorded(
    records: Sequence[StoredEvent],
    head: int,
    version_of: Callable[[str], int],
    ack_of: Callable[[str], Ack | None] = lambda command_id: None,
    removed: Sequence[tuple[int, int]] = (),
) -> RecordedPlan:
    """Check already-positioned ``records`` and ``removed`` runs against a
    log whose head is ``head`` (see :meth:`EventStore.append_recorded`).

    ``version_of`` gives a stream's committed version (its removed versions
    included) and ``ack_of`` the Ack already indexed for a command id. A
    command id already indexed may only be carried on by the very next event
    of its stream (its command's events split over two batches). Raises
    :class:`MisplacedRecord` for the first record or run that does not fit,
    :class:`InvalidKey` for an unusable id.
    """
    versions: dict[str, int] = {}
    acks: dict[str, AckRecord] = {}
    runs: list[tuple[int, int]] = []
    pending = iter(sorted(removed))
    run = next(pending, None)

    def take_runs(before: int) -> None:
        nonlocal head, run
        while run is not None and run[0] < before:
            first, last = run
            if first != head + 1 or last < first:
                raise MisplacedRecord(
                    f"the removed run {first}..{last} does not follow position {head}: "
                    f"positions must be {head + 1}, {head + 2}, ... without gaps",
                    first,
                )
            if runs and runs[-1][1] == first - 1:
                runs[-1] = (runs[-1][0], last)
            else:
                runs.append((first, last))
            head = last
            run = next(pending, None)

    for record in records:
        position = record.position
        take_runs(position)
        if position != head + 1:
            raise MisplacedRecord(
                f"the record at position {position} does not follow the log's head "
                f"{head}: positions must be {head + 1}, {head + 2}, ... without gaps",
                position,
            )
        head = position
        stream = record.stream
        check_stream_id(stream, "stream id")
        current = versions.get(stream)
        if current is None:
            current = version_of(stream)
        if record.version != current + 1:
            raise MisplacedRecord(
                f"the record at position {position} is version {record.version} of stream "
                f"{stream!r}, which is at version {current}: versions must be contiguous",
                position,
            )
        versions[stream] = record.version
        command_id = record.metadata.command_id
        if command_id is None:
            continue
        check_command_id(command_id)
        earlier = acks.get(command_id) or ack_of(command_id)
        if earlier is not None and not (
            earlier.stream == stream
            and earlier.version == record.version - 1
            and earlier.position == position - 1
        ):
            raise MisplacedRecord(
                f"the record at position {position} carries command_id {command_id!r}, "
                f"already acknowledged at position {earlier.position} (stream "
                f"{earlier.stream!r} version {earlier.version}); one command's events are "
                "consecutive",
                position,
            )
        acks[command_id] = AckRecord(stream, record.version, position)
    take_runs(1 << 63)
    return RecordedPlan(list(acks.items()), runs, head)


LMDB_MAX_KEY_BYTES = 511
"""The longest key LMDB takes (its compile-time default, which py-lmdb keeps)."""

MAX_KEY_BYTES = LMDB_MAX_KEY_BYTES
"""The longest key a store takes, in UTF-8 bytes."""

MAX_STREAM_BYTES = MAX_KEY_BYTES - 1 - 8
"""The longest stream id, in UTF-8 bytes: the stream index's key is the stream
id, a NUL and an 8-byte version, and must fit in :data:`MAX_KEY_BYTES`."""

MAX_COMMAND_ID_BYTES = MAX_KEY_BYTES
"""The longest command id, in UTF-8 bytes (the command-id index's key)."""


MAX_GROUP_BYTES = 200
"""The longest consumer group name, in UTF-8 bytes (a key prefix of its
parked events, which add a NUL and an 8-byte position)."""


def check_key(kind: str, value: str, max_bytes: int = MAX_KEY_BYTES) -> None:
    """Raise :class:`InvalidKey` (a ``ValueError``) naming the problem when
    ``value`` cannot be used as a key of at most ``max_bytes`` UTF-8 bytes
    (``kind`` names which key, for the message)."""
    if not isinstance(value, str) or not value:
        raise InvalidKey(f"{kind} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise InvalidKey(f"{kind} must not contain NUL characters, got {value!r}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise InvalidKey(f"{kind} must be valid Unicode text, got {value!r}") from None
    if size > max_bytes:
        raise InvalidKey(
            f"{kind} is {size} bytes of UTF-8, longer than the limit of {max_bytes} bytes: "
            f"{value[:40]!r}..."
        )


def check_stream_id(stream: str, kind: str = "stream") -> None:
    """Raise :class:`InvalidKey` unless ``stream`` can be a stream id
    (at most :data:`MAX_STREAM_BYTES` bytes); ``kind`` names it in the message."""
    check_key(kind, stream, MAX_STREAM_BYTES)


def check_command_id(command_id: str) -> None:
    """Raise :class:`InvalidKey` unless ``command_id`` can be a command id
    (at most :data:`MAX_COMMAND_ID_BYTES` bytes)."""
    check_key("command_id", command_id, MAX_COMMAND_ID_BYTES)


def check_group_name(name: str) -> None:
    """Raise :class:`InvalidKey` unless ``name`` can name a consumer group
    (at most :data:`MAX_GROUP_BYTES` bytes, no NUL)."""
    check_key("group", name, MAX_GROUP_BYTES)


def check_aggregate_id(aggregate: str, aggregate_id: str) -> None:
    """Raise :class:`InvalidKey` unless ``aggregate_id`` can name an aggregate
    of type ``aggregate``: its stream id ``"<aggregate>-<id>"`` must fit in
    :data:`MAX_STREAM_BYTES`, so the id may take that minus the name and the dash."""
    check_key(f"{aggregate} id", aggregate_id, MAX_STREAM_BYTES - len(aggregate.encode()) - 1)
