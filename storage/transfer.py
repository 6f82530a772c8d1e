"""Moving a log between stores: export to NDJSON, import from it.

An export file holds one JSON object per line (see docs/design.md, "Export
format"): every event of the log in position order, then one summary line::

    {"position":1,"stream":"User-u1","version":1,"type":"UserCreated","event_version":1,
     "time":"2026-12-07T19:13:06.872028Z","metadata":{"command_id":"c1"},"data":{...}}
    ...
    {"motet_export":"motet-export/1","events":2,"last_position":2,"sha256":"..."}

``data`` is the event as the protocol's ``read`` answers it: decoded by the
app's codec (upcast to the newest version, which ``event_version`` names)
and encoded as JSON. The summary's ``sha256`` is the digest of every event
line (newline included) as written, so an import can tell a truncated or
edited file from the one exported.

An import refills an empty store with the same positions, stream versions,
times and metadata (command ids included, so a retried command still gets
its original Ack), each event re-encoded by the target app's codec. Both
directions read and write in batches, so memory stays bounded whatever the
size of the log.
"""

from __future__ import annotations

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
from .records import Metadata, NewEvent, RecordedEvent, StoredEvent
from .store import EventStore, check_command_id, check_stream_id

__all__ = [
    "DEFAULT_BATCH",
    "EXPORT_FORMAT",
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


class ExportSummary(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An export's last line: what it holds, to check an import against."""

    motet_export: str
    """The format name, :data:`EXPORT_FORMAT`."""
    events: int
    """How many event lines come before it."""
    last_position: int
    """The position of the last event (0 for an empty log)."""
    sha256: str
    """Hex SHA-256 of every event line, newline included, as written."""


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
    path the protocol's ``read`` takes), so the file holds what a reader is
    shown. Commits made meanwhile (a server still running) are not included:
    the file is the log up to the head when the export began. Raises
    :class:`~motet.storage.errors.CodecError` naming the position of an event
    the codec cannot decode, :class:`~motet.storage.errors.StorageError` when
    the store fails.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    decode = decode or codec.decode_record
    versions = {tag_of(cls): event_version_of(cls) for cls in codec.event_types}
    encoder = msgspec.json.Encoder()
    digest = hashlib.sha256()
    head = store.head_position
    position = 0
    buffer = bytearray()
    utc = datetime.UTC
    from_timestamp = datetime.datetime.fromtimestamp
    while position < head:
        stored = store.read_all(position, min(batch_size, head - position))
        if not stored or stored[0].position != position + 1:
            found = stored[0].position if stored else "nothing"
            raise StorageError(
                f"the log has a gap after position {position} (found {found}, the head is "
                f"{head}); run 'motet verify'"
            )
        buffer.clear()
        for event in stored:
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
        position = stored[-1].position
        digest.update(buffer)
        out.write(buffer)
        if progress is not None:
            progress(position, position / head)
    summary = ExportSummary(
        motet_export=EXPORT_FORMAT,
        events=position,
        last_position=position,
        sha256=digest.hexdigest(),
    )
    out.write(encoder.encode(summary) + b"\n")
    return summary


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
    ``codec.encode_event``), then committed with its position, version,
    time and metadata through :meth:`EventStore.append_recorded`, ``batch_size``
    at a time. ``size`` (the file's length in bytes) lets ``progress`` say how
    far along it is.

    Raises :class:`~motet.storage.errors.StoreNotEmpty` when ``store`` holds
    events, and :class:`~motet.storage.errors.ExportFileError` naming the line
    of the first thing wrong in the file: a line that is not JSON or not an
    event, a position that is not the next one, a stream version that is not
    contiguous, an event type or a payload the app does not know, a missing
    or mismatching summary line. The batches before the bad line stay
    committed (import into a new store, or see :func:`import_into_directory`,
    which leaves nothing behind).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    head = store.head_position
    if head:
        raise StoreNotEmpty(
            f"the target store is not empty (its log is at position {head}); "
            "import only into a new, empty store"
        )
    encode = encode or codec.encode_event
    types = {tag_of(cls): _EventType(cls) for cls in codec.event_types}
    read_line = msgspec.json.Decoder(_ReadLine).decode
    read_summary = msgspec.json.Decoder(ExportSummary).decode
    untyped = msgspec.json.Decoder().decode
    to_msgpack = msgspec.msgpack.Encoder().encode
    digest = hashlib.sha256()
    batch: list[StoredEvent] = []
    position = 0
    number = 0
    done_bytes = 0
    summary: ExportSummary | None = None

    def flush() -> None:
        try:
            store.append_recorded(batch)
        except MisplacedRecord as exc:
            # Lines and positions go 1, 2, 3 ... together (checked below).
            raise ExportFileError(f"line {exc.position}: {exc}", exc.position) from exc
        batch.clear()
        if progress is not None:
            progress(position, done_bytes / size if size else None)

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
            if b'"motet_export"' in line:
                try:
                    summary = read_summary(line)
                except msgspec.ValidationError as bad:
                    raise ExportFileError(
                        f"line {number} is not a valid summary line: {bad}", number
                    ) from None
                continue
            raise ExportFileError(f"line {number} is not an export event: {exc}", number) from None
        except msgspec.DecodeError as exc:
            raise ExportFileError(f"line {number} is not JSON: {exc}", number) from None
        if item.position != position + 1:
            why = "a gap" if item.position > position + 1 else "out of order"
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
        digest.update(line)
        position = item.position
        if len(batch) >= batch_size:
            flush()
    if summary is None:
        raise ExportFileError(
            f"the file ends at line {number} without its summary line: it is cut short "
            "or not a Motet export",
            number,
        )
    _check_summary(summary, number, position, digest.hexdigest())
    if batch:
        flush()
    return summary


def _check_summary(summary: ExportSummary, number: int, position: int, sha256: str) -> None:
    where = f"line {number} (the summary)"
    if summary.motet_export != EXPORT_FORMAT:
        raise ExportFileError(
            f"{where}: the file is in format {summary.motet_export!r}; this version reads "
            f"{EXPORT_FORMAT!r}",
            number,
        )
    if summary.events != position or summary.last_position != position:
        raise ExportFileError(
            f"{where} says {summary.events:,} events up to position "
            f"{summary.last_position:,}, but the file holds {position:,}: lines are missing",
            number,
        )
    if summary.sha256 != sha256:
        raise ExportFileError(
            f"{where}: the SHA-256 of the event lines is {sha256}, the summary says "
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
