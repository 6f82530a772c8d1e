"""Moving a log between stores: export to NDJSON, import from it.

An export file holds one JSON object per line (see docs/design.md, "Backup
and moving data"): the deletion record of every stream that was deleted or
had events removed, then every event of the log in position order with a
line for each run of positions removed on purpose where it falls, then one
summary line::

    {"deletion":{"stream":"User-u9","version":2,"deleted":true,"hard":false,
     "removed_through":0,"removed":0,"deleted_at":"2026-12-07T19:20:00Z"}}
    {"removed":[1,3]}
    {"position":4,"stream":"User-u1","version":1,"type":"UserCreated","event_version":1,
     "time":"2026-12-07T19:13:06.872028Z","metadata":{"command_id":"c1"},"data":{...}}
    ...
    {"motet_export":"motet-export/1","events":2,"last_position":5,"sha256":"...",
     "removed":3,"deletions":1}

``data`` is the event as the protocol's ``read`` answers it: decoded by the
app's codec (upcast to the newest version, which ``event_version`` names;
personal fields in clear, or redacted for a forgotten subject) and encoded
as JSON. The summary's ``sha256`` is the digest of every line before it
(newline included) as written, so an import can tell a truncated or edited
file from the one exported; ``removed`` and ``deletions`` are left out when
0, so an export of a log without deletions reads as it always did.

An import refills an empty store with the same positions, stream versions,
times and metadata (command ids included, so a retried command still gets
its original Ack), the same removed positions and deletion records (a
deleted stream still refuses appends), each event re-encoded by the target
app's codec and its personal fields encrypted under the target's subject
keys, as the engine's writer does. Both
directions read and write in batches, so memory stays bounded whatever the
size of the log.
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import msgspec

from .codec import Codec, event_version_of, tag_of
from .errors import (
    CodecError,
    ExportFileError,
    InvalidKey,
    MisplacedRecord,
    StorageError,
    StoreFormatError,
    StoreNotEmpty,
)
from .records import Metadata, NewEvent, RecordedEvent, StoredEvent, StreamDeletion
from .store import EventStore, check_command_id, check_deletion, check_stream_id

__all__ = [
    "DEFAULT_BATCH",
    "EXPORT_FORMAT",
    "KEY_CACHE",
    "MAX_LINE_BYTES",
    "ExportSummary",
    "Progress",
    "check_empty_directory",
    "export_events",
    "import_events",
    "import_into_directory",
    "move_into_place",
]

EXPORT_FORMAT = "motet-export/1"
"""The format name an export's summary line carries."""

DEFAULT_BATCH = 10_000
"""Events read (export) or committed (import) at a time."""

MAX_LINE_BYTES = 16 << 20
"""The longest line an import reads: no event of a sound export comes near
it, and a file without newlines must not be read into memory whole."""

KEY_CACHE = 10_000
"""Subject keys an export or import keeps in memory (least recently used
first out): a few tens of MiB, whatever the number of subjects."""

Progress = Callable[[int, float | None], None]
"""Called after each batch with the events done so far and the fraction of
the work done (``None`` when it cannot be told)."""


class _LineMetadata(
    msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, forbid_unknown_fields=True
):
    command_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


class _EventLine(msgspec.Struct, kw_only=True, frozen=True):
    """An event line as written (fields in this order)."""

    position: int
    stream: str
    version: int
    type: str
    event_version: int
    time: datetime.datetime
    metadata: _LineMetadata
    data: Any


class _ReadLine(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An event line as read: ``data`` stays raw until its type is known."""

    position: Annotated[int, msgspec.Meta(ge=1)]
    stream: str
    version: Annotated[int, msgspec.Meta(ge=1)]
    type: str
    event_version: Annotated[int, msgspec.Meta(ge=1)]
    time: Annotated[datetime.datetime, msgspec.Meta(tz=True)]
    metadata: _LineMetadata = _LineMetadata()
    data: msgspec.Raw


class _Deletion(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A stream's deletion record (see :class:`StreamDeletion`) as a line holds it."""

    stream: str
    version: Annotated[int, msgspec.Meta(ge=0)]
    deleted: bool
    hard: bool
    removed_through: Annotated[int, msgspec.Meta(ge=0)]
    removed: Annotated[int, msgspec.Meta(ge=0)]
    deleted_at: Annotated[datetime.datetime, msgspec.Meta(tz=True)] | None


class _DeletionLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    deletion: _Deletion


class _RemovedLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    removed: tuple[Annotated[int, msgspec.Meta(ge=1)], Annotated[int, msgspec.Meta(ge=1)]]


class ExportSummary(
    msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """An export's last line: what it holds, to check an import against."""

    motet_export: str
    """The format name, :data:`EXPORT_FORMAT`."""
    events: int
    """How many event lines come before it."""
    last_position: int
    """The log's head: the position of the last event, or of the last one
    removed when the newest were removed (0 for an empty log)."""
    sha256: str
    """Hex SHA-256 of every line before the summary, newline included, as written."""
    removed: int = 0
    """How many positions the removed-run lines cover."""
    deletions: int = 0
    """How many deletion lines come first."""


def export_events(
    store: EventStore,
    codec: Codec,
    out: BinaryIO,
    *,
    batch_size: int = DEFAULT_BATCH,
    decode: Callable[[StoredEvent], RecordedEvent] | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write every event of ``store`` up to its current head to ``out`` as
    NDJSON, then the summary line; return the summary.

    Events are decoded by ``decode`` (default: ``codec.decode_record``, the
    path the protocol's ``read`` takes; the codec's types and upcasters with
    ``store``'s subject keys, at most :data:`KEY_CACHE` of them in memory),
    so the file holds what a reader is shown.
    Deletion records and removed runs are written as they are when the
    export begins; commits made meanwhile (a server still running) are not
    included: the file is the log up to the head when the export began.
    Raises :class:`~motet.storage.errors.CodecError` naming the position of
    an event the codec cannot decode,
    :class:`~motet.storage.errors.StorageError` when the store fails or the
    log has a gap that is not recorded as removed (damage, or events removed
    ahead of the export while it ran: then export again).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    codec = codec.with_keys(store, key_cache_size=KEY_CACHE)
    decode = decode or codec.decode_record
    versions = {tag_of(cls): event_version_of(cls) for cls in codec.event_types}
    encoder = msgspec.json.Encoder()
    digest = hashlib.sha256()
    head = store.head_position
    runs = _up_to(store.removed_runs(), head)
    starts = [first for first, _ in runs]
    buffer = bytearray()
    utc = datetime.UTC
    from_timestamp = datetime.datetime.fromtimestamp
    deletions = 0
    after = ""
    while page := store.stream_deletions(after, batch_size):
        buffer.clear()
        for stream, deletion in page:
            deleted_at = deletion.deleted_at
            deletion_line = _DeletionLine(
                _Deletion(
                    stream=stream,
                    version=deletion.version,
                    deleted=deletion.deleted,
                    hard=deletion.hard,
                    removed_through=deletion.removed_through,
                    removed=deletion.removed,
                    deleted_at=None if deleted_at is None else from_timestamp(deleted_at, utc),
                )
            )
            encoder.encode_into(deletion_line, buffer, -1)
            buffer += b"\n"
        deletions += len(page)
        after = page[-1][0]
        digest.update(buffer)
        out.write(buffer)
    removed = 0

    def write_removed(first: int, last: int) -> None:
        # A gap must lie inside a run recorded as removed, else it is damage.
        nonlocal removed
        index = bisect.bisect_right(starts, first) - 1
        if index < 0 or runs[index][1] < last:
            raise StorageError(
                f"the log has a gap at positions {first}..{last} that is not recorded as "
                f"removed (the head is {head}); run 'motet verify'"
            )
        encoder.encode_into(_RemovedLine((first, last)), buffer, -1)
        buffer.extend(b"\n")
        removed += last - first + 1

    position = 0
    events = 0
    while position < head:
        stored = store.read_all(position, min(batch_size, head - position))
        if stored and stored[-1].position > head:
            stored = [event for event in stored if event.position <= head]
        buffer.clear()
        if not stored:
            write_removed(position + 1, head)
            position = head
        for event in stored:
            if event.position != position + 1:
                write_removed(position + 1, event.position - 1)
            try:
                record = decode(event)
            except CodecError as exc:
                raise CodecError(
                    f"the event at position {event.position} cannot be exported: {exc} "
                    "(export with the app that wrote it)"
                ) from exc
            metadata = record.metadata
            line = _EventLine(
                position=record.position,
                stream=record.stream,
                version=record.version,
                type=record.type,
                event_version=versions.get(record.type, record.event_version),
                time=from_timestamp(record.timestamp, utc),
                metadata=_LineMetadata(
                    command_id=metadata.command_id,
                    correlation_id=metadata.correlation_id,
                    causation_id=metadata.causation_id,
                ),
                data=record.data,
            )
            encoder.encode_into(line, buffer, -1)
            buffer += b"\n"
            position = event.position
        events += len(stored)
        digest.update(buffer)
        out.write(buffer)
        if progress is not None:
            progress(events, position / head)
    summary = ExportSummary(
        motet_export=EXPORT_FORMAT,
        events=events,
        last_position=position,
        sha256=digest.hexdigest(),
        removed=removed,
        deletions=deletions,
    )
    out.write(encoder.encode(summary) + b"\n")
    return summary


def _up_to(runs: list[tuple[int, int]], head: int) -> list[tuple[int, int]]:
    """``runs`` cut at position ``head``."""
    return [(first, min(last, head)) for first, last in runs if first <= head]


class _EventType:
    __slots__ = ("cls", "decoder", "version")

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.version = event_version_of(cls)
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(cls)


def import_events(
    file: BinaryIO,
    store: EventStore,
    codec: Codec,
    *,
    batch_size: int = DEFAULT_BATCH,
    encode: Callable[[Any], NewEvent] | None = None,
    progress: Progress | None = None,
    size: int | None = None,
) -> ExportSummary:
    """Read an export from ``file`` (binary, line by line) into the empty
    ``store``; return the file's summary once every event is committed.

    Each event is decoded into the app's type (an older ``event_version`` is
    upcast by the codec) and encoded by ``encode`` (default:
    ``codec.encode_event``), its personal fields encrypted under the
    subject keys of ``store`` (:meth:`Codec.seal_recorded`, the writer's
    sealing, by the codec's types with ``store``'s keys, at most
    :data:`KEY_CACHE` of them in memory), then committed with its position,
    version, time and metadata through :meth:`EventStore.append_recorded`,
    ``batch_size`` lines at a time, with the file's removed runs and deletion records. A batch's new
    keys are written before its events, the keys its ``SubjectForgotten``
    events delete after them. ``size`` (the file's length in bytes) lets
    ``progress`` say how far along it is.

    Raises :class:`~motet.storage.errors.StoreNotEmpty` when ``store`` holds
    events, and :class:`~motet.storage.errors.ExportFileError` naming the line
    of the first thing wrong in the file: a line that is not JSON or not an
    export line, a position that is not the next one (a gap no removed line
    declares), a deletion line after the events, a deletion record that
    cannot be, a stream version that is not contiguous, an event type or a
    payload the app does not know, a missing or mismatching summary line.
    The batches before the bad line stay committed (import into a new store,
    or see :func:`import_into_directory`, which leaves nothing behind).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    head = store.head_position
    if head:
        raise StoreNotEmpty(
            f"the target store is not empty (its log is at position {head}); "
            "import only into a new, empty store"
        )
    codec = codec.with_keys(store, key_cache_size=KEY_CACHE)
    encode = encode or codec.encode_event
    types = {tag_of(cls): _EventType(cls) for cls in codec.event_types}
    read_line = msgspec.json.Decoder(_ReadLine).decode
    read_summary = msgspec.json.Decoder(ExportSummary).decode
    read_removed = msgspec.json.Decoder(_RemovedLine).decode
    read_deletion = msgspec.json.Decoder(_DeletionLine).decode
    untyped = msgspec.json.Decoder().decode
    to_msgpack = msgspec.msgpack.Encoder().encode
    digest = hashlib.sha256()
    batch: list[StoredEvent] = []
    runs: list[tuple[int, int]] = []
    deletions: list[tuple[str, StreamDeletion]] = []
    lines: dict[int, int] = {}
    position = 0
    number = 0
    events = 0
    removed = 0
    deleted = 0
    done_bytes = 0
    summary: ExportSummary | None = None

    def flush() -> None:
        sealed, keys = codec.seal_recorded(batch)
        made = {subject: key for subject, key in keys.items() if key is not None}
        if made:
            # Durable before the events that need them.
            store.put_keys(made)
        try:
            store.append_recorded(sealed, removed=runs, deletions=deletions)
        except MisplacedRecord as exc:
            line = lines.get(exc.position, number)
            raise ExportFileError(f"line {line}: {exc}", line) from exc
        if len(made) < len(keys):
            # Forgotten: deleted once the SubjectForgotten event is in.
            store.put_keys({subject: None for subject in keys if subject not in made})
        codec.keyring.committed(keys)
        batch.clear()
        runs.clear()
        deletions.clear()
        lines.clear()
        if progress is not None:
            progress(events, done_bytes / size if size else None)

    while True:
        line = file.readline(MAX_LINE_BYTES + 1)
        if not line:
            break
        number += 1
        done_bytes += len(line)
        if summary is not None:
            raise ExportFileError(
                f"line {number}: the file goes on after its summary line (line {number - 1})",
                number,
            )
        if len(line) > MAX_LINE_BYTES:
            raise ExportFileError(
                f"line {number} is longer than {MAX_LINE_BYTES:,} bytes: not an export line",
                number,
            )
        try:
            item = read_line(line)
        except msgspec.ValidationError as exc:
            other = _line_kind(untyped(line))
            if other is None:
                raise ExportFileError(
                    f"line {number} is not an export event: {exc}", number
                ) from None
            try:
                if other == "motet_export":
                    summary = read_summary(line)
                    continue
                if other == "removed":
                    first, last = read_removed(line).removed
                    if first != position + 1 or last < first:
                        raise ExportFileError(
                            f"line {number}: removed positions {first}..{last} do not follow "
                            f"position {position} (they must start at {position + 1} and not "
                            "end before they start)",
                            number,
                        )
                    lines[first] = number
                    runs.append((first, last))
                    removed += last - first + 1
                    position = last
                else:
                    if position:
                        raise ExportFileError(
                            f"line {number}: a deletion record after the log's lines (deletion "
                            "lines come first)",
                            number,
                        )
                    record = read_deletion(line).deletion
                    deletion = StreamDeletion(
                        record.version,
                        record.deleted,
                        record.hard,
                        record.removed_through,
                        record.removed,
                        None if record.deleted_at is None else record.deleted_at.timestamp(),
                    )
                    try:
                        check_deletion(record.stream, deletion)
                    except ValueError as bad:
                        raise ExportFileError(f"line {number}: {bad}", number) from None
                    deletions.append((record.stream, deletion))
                    deleted += 1
            except msgspec.ValidationError as bad:
                what = {"motet_export": "summary", "removed": "removed", "deletion": "deletion"}
                raise ExportFileError(
                    f"line {number} is not a valid {what[other]} line: {bad}", number
                ) from None
            digest.update(line)
            if len(batch) + len(runs) + len(deletions) >= batch_size:
                flush()
            continue
        except msgspec.DecodeError as exc:
            raise ExportFileError(f"line {number} is not JSON: {exc}", number) from None
        if item.position != position + 1:
            why = (
                "a gap no removed line declares" if item.position > position + 1 else "out of order"
            )
            raise ExportFileError(
                f"line {number}: position {item.position} follows position {position} ({why}; "
                f"positions must be 1, 2, 3, ... in order)",
                number,
            )
        kind = types.get(item.type)
        if kind is None:
            known = ", ".join(sorted(types)) or "none"
            raise ExportFileError(
                f"line {number}: unknown event type {item.type!r} for this app "
                f"(it knows: {known}); import with the app that wrote it (--app)",
                number,
            )
        try:
            check_stream_id(item.stream)
            if item.metadata.command_id is not None:
                check_command_id(item.metadata.command_id)
            if item.event_version == kind.version:
                event = kind.decoder.decode(item.data)
            elif item.event_version > kind.version:
                raise CodecError(
                    f"event {item.type!r} has version {item.event_version}, newer than this "
                    f"app's version {kind.version}"
                )
            else:
                # An export of an older app: the codec's upcasters bring it up to date.
                event = codec.decode_payload(
                    item.type, item.event_version, to_msgpack(untyped(item.data))
                )
        except (msgspec.ValidationError, CodecError, InvalidKey) as exc:
            raise ExportFileError(f"line {number}: {item.type}: {exc}", number) from None
        new = encode(event)
        metadata = item.metadata
        batch.append(
            StoredEvent(
                item.position,
                item.stream,
                item.version,
                new.type,
                new.event_version,
                item.time.timestamp(),
                Metadata(metadata.command_id, metadata.correlation_id, metadata.causation_id),
                new.data,
            )
        )
        lines[item.position] = number
        digest.update(line)
        position = item.position
        events += 1
        if len(batch) + len(runs) + len(deletions) >= batch_size:
            flush()
    if summary is None:
        raise ExportFileError(
            f"the file ends at line {number} without its summary line: it is cut short "
            "or not a Motet export",
            number,
        )
    _check_summary(summary, number, (events, position, removed, deleted), digest.hexdigest())
    if batch or runs or deletions:
        flush()
    return summary


def _line_kind(fields: Any) -> str | None:
    """Which line other than an event JSON ``fields`` (a valid JSON line)
    means to be, by its first key: ``None`` for an event or anything else."""
    if isinstance(fields, dict) and "position" not in fields:
        for kind in ("motet_export", "removed", "deletion"):
            if kind in fields:
                return kind
    return None


def _check_summary(
    summary: ExportSummary, number: int, found: tuple[int, int, int, int], sha256: str
) -> None:
    events, position, removed, deletions = found
    where = f"line {number} (the summary)"
    if summary.motet_export != EXPORT_FORMAT:
        raise ExportFileError(
            f"{where}: the file is in format {summary.motet_export!r}; this version reads "
            f"{EXPORT_FORMAT!r}",
            number,
        )
    said = (summary.events, summary.last_position, summary.removed, summary.deletions)
    if said != found:
        raise ExportFileError(
            f"{where} says {summary.events:,} events up to position "
            f"{summary.last_position:,}, {summary.removed:,} removed positions and "
            f"{summary.deletions:,} deletion records, but the file holds {events:,} up to "
            f"{position:,}, {removed:,} and {deletions:,}: lines are missing",
            number,
        )
    if summary.sha256 != sha256:
        raise ExportFileError(
            f"{where}: the SHA-256 of the lines before it is {sha256}, the summary says "
            f"{summary.sha256}: the file was changed after it was exported",
            number,
        )


def import_into_directory(
    file: BinaryIO,
    path: str | os.PathLike[str],
    codec: Codec,
    **options: Any,
) -> ExportSummary:
    """Import an export into a new LMDB store at ``path`` (a directory that
    does not exist or is empty); see :func:`import_events` for ``options``.

    The store is built beside ``path`` and renamed into place once the whole
    file is in and durable, so a failed import leaves nothing behind. Raises
    :class:`~motet.storage.errors.StoreNotEmpty` when ``path`` holds anything.
    """
    from .lmdb_store import LmdbStore

    target = Path(path)
    check_empty_directory(target)
    staging = target.parent / f".{target.name}.importing-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)  # left by an import of ours that was killed
    # No fsync per batch: the whole store is synced once, at close, before it
    # is renamed into place.
    store = LmdbStore(staging, durability="none")
    try:
        summary = import_events(file, store, codec, **options)
        store.close()
    except BaseException:
        store.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into_place(staging, target)
    return summary


def check_empty_directory(target: Path) -> None:
    """Raise unless ``target`` does not exist or is an empty directory."""
    if target.is_dir():
        entries = sorted(os.listdir(target))
        if entries:
            shown = ", ".join(entries[:5])
            raise StoreNotEmpty(
                f"{target} is not empty (found: {shown}); give a new or empty directory, "
                "nothing is ever written over"
            )
    elif target.exists():
        raise StoreFormatError(f"{target} is a file, not a directory")


def move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished store ``staging`` to ``target`` (an empty
    directory or nothing) and make the rename durable."""
    try:
        if target.is_dir():
            target.rmdir()
        os.replace(staging, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot move the new store into {target}: {exc}") from exc
