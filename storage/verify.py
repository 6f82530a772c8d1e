"""A full check of an LMDB store: is every record where and what it should be?

:func:`verify_store` reads a store read-only (safe beside a running server)
and reports every problem it finds, each with where it is:

- the file against LMDB's own metadata (truncation), then LMDB's structure;
- every log record: its checksum, that it decodes, that its position matches
  its key, positions 1, 2, 3 … without gaps but where events were removed
  on purpose (a hard delete or retention records the removed positions as
  runs: a gap must be exactly a recorded run, and no record may sit inside
  one);
- per stream, versions 1, 2, 3 … in log order (from the first version not
  removed, as its deletion record says), and the stream index and the
  log agreeing both ways (every event indexed under its stream and version,
  every index row pointing at that event);
- every Ack pointing at an existing event of its stream and version, or at a
  removed position;
- snapshots and checkpoints decoding, and not ahead of their stream or the log.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec

from .errors import CodecError, MotetError
from .idempotency import AckRecord
from .index_tail import index_mark, log_head
from .integrity import unseal
from .records import Checkpoint, Snapshot, StoredEvent, StreamDeletion

__all__ = ["Problem", "Verification", "verify_store"]

_U64 = struct.Struct(">Q")
_MAX_PROBLEMS = 1000
_MAX = 1 << 64


class Problem(NamedTuple):
    """One thing wrong in a store: where (a database and key) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class Verification(NamedTuple):
    """What :func:`verify_store` found."""

    problems: list[Problem]
    events: int
    streams: int
    acks: int
    truncated: bool
    """Whether the problem list stopped at its cap (more may be wrong)."""
    removed: int = 0
    """Positions removed on purpose (hard deletes, retention)."""

    @property
    def sound(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems


def verify_store(
    path: str | os.PathLike[str], *, max_problems: int = _MAX_PROBLEMS
) -> Verification:
    """Check the whole store at ``path`` (see the module docstring)."""
    from .lmdb_store import LmdbStore

    try:
        store = LmdbStore(path, readonly=True)
    except MotetError as exc:
        return Verification([Problem("store", str(exc))], 0, 0, 0, False)
    checker = _Checker(store, max_problems)
    try:
        checker.run()
    except _TooMany:
        pass
    except MotetError as exc:
        checker.problems.append(Problem("store", str(exc)))
    except Exception as exc:  # LMDB's structure itself is damaged
        checker.problems.append(Problem("store", f"cannot be read further: {exc!r}"))
    finally:
        store.close()
    return Verification(
        checker.problems,
        checker.events,
        len(checker.versions),
        checker.acks,
        checker.full,
        checker.removed,
    )


class _TooMany(Exception):
    pass


def _key_text(key: bytes) -> str:
    try:
        return repr(key.decode())
    except UnicodeDecodeError:
        return key.hex()


class _Checker:
    def __init__(self, store: Any, max_problems: int) -> None:
        self.store = store
        self.max_problems = max_problems
        self.problems: list[Problem] = []
        self.full = False
        self.events = 0
        self.acks = 0
        self.versions: dict[str, int] = {}
        self.deletions: dict[str, StreamDeletion] = {}
        self.runs: list[tuple[int, int]] = []
        self.removed = 0

    def problem(self, where: str, what: str) -> None:
        if len(self.problems) >= self.max_problems:
            self.full = True
            raise _TooMany
        self.problems.append(Problem(where, what))

    def run(self) -> None:
        store = self.store
        with store._read() as txn:
            self.read_removals(txn)
            self.check_log(txn)
            self.check_index(txn)
            self.check_acks(txn)
            self.check_snapshots(txn)
            self.check_checkpoints(txn)

    def items(self, txn: Any, db: Any) -> Iterator[tuple[bytes, bytes]]:
        for key, value in txn.cursor(db):
            yield bytes(key), bytes(value)

    def event_at(self, txn: Any, position: int) -> StoredEvent | None:
        raw = txn.get(_U64.pack(position), db=self.store._log)
        if raw is None:
            return None
        try:
            return msgspec.msgpack.decode(unseal(bytes(raw)), type=StoredEvent)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            return None  # reported by check_log

    def read_removals(self, txn: Any) -> None:
        """Read the deletion records and the removed runs (checked as read)."""
        store = self.store
        if store._deletions is not None:
            decoder = msgspec.msgpack.Decoder(StreamDeletion)
            for key, value in self.items(txn, store._deletions):
                try:
                    self.deletions[key.decode()] = decoder.decode(value)
                except (UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                    self.problem(f"deletion record {_key_text(key)}", f"does not decode: {exc}")
        if store._removed is None:
            return
        previous = 0
        for key, value in self.items(txn, store._removed):
            if len(key) != 8 or len(value) != 8:
                self.problem(f"removed run {key.hex()}", "is malformed")
                continue
            (first,), (last,) = _U64.unpack(key), _U64.unpack(value)
            if first < 1 or last < first or first <= previous:
                self.problem(
                    f"removed run from position {first}",
                    f"is not a run after the previous one (to {last}, previous ended at "
                    f"{previous})",
                )
                continue
            self.runs.append((first, last))
            self.removed += last - first + 1
            previous = last

    def removed_between(self, after: int, before: int) -> bool:
        """Whether every position strictly between ``after`` and ``before``
        is inside a removed run."""
        needed = after + 1
        index = bisect.bisect_right(self.runs, (needed, _MAX))
        if index:
            index -= 1
        for first, last in self.runs[index:]:
            if needed >= before:
                break
            if first > needed:
                return False
            if last >= needed:
                needed = last + 1
        return needed >= before

    def check_log(self, txn: Any) -> None:
        decoder = msgspec.msgpack.Decoder(StoredEvent)
        index = self.store._index
        head = log_head(txn, self.store._log)
        if self.runs:
            head = max(head, self.runs[-1][1])  # the newest events were removed
        try:
            # Records after the mark are not in the stream index yet.
            indexed = index_mark(txn, self.store._meta, head)
        except CodecError as exc:
            self.problem("meta record 'indexed'", str(exc))
            indexed = head
        if indexed > head:
            self.problem(
                "meta record 'indexed'",
                f"says the stream index is complete through position {indexed}, past the "
                f"log's last position {head}",
            )
        expected = 1
        runs = iter(self.runs)
        run = next(runs, None)
        for key, value in self.items(txn, self.store._log):
            if len(key) != 8:
                self.problem(f"log key {key.hex()}", "is not an 8-byte position")
                continue
            (position,) = _U64.unpack(key)
            where = f"log position {position}"
            while run is not None and run[1] < position:
                run = next(runs, None)
            if run is not None and run[0] <= position:
                self.problem(where, f"is in the removed run {run[0]}..{run[1]} but still there")
            if position != expected and not self.removed_between(expected - 1, position):
                self.problem(where, f"positions jump from {expected - 1} to {position} (a gap)")
            expected = position + 1
            self.events += 1
            try:
                event = decoder.decode(unseal(value))
            except ValueError as exc:
                self.problem(where, f"the record is damaged: {exc}")
                continue
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.problem(where, f"the record does not decode: {exc}")
                continue
            if event.position != position:
                self.problem(where, f"the record says it is position {event.position}")
            previous = self.versions.get(event.stream)
            if previous is None:
                deletion = self.deletions.get(event.stream)
                previous = 0 if deletion is None else deletion.removed_through
            if event.version != previous + 1:
                self.problem(
                    where,
                    f"stream {event.stream!r} goes from version {previous} to {event.version}",
                )
            self.versions[event.stream] = max(previous, event.version)
            if position > indexed:
                continue
            row = txn.get(event.stream.encode() + b"\x00" + _U64.pack(event.version), db=index)
            if row is None:
                self.problem(
                    where, f"{event.stream!r} version {event.version} is not in the stream index"
                )
            elif bytes(row) != key:
                self.problem(
                    where,
                    f"the stream index puts {event.stream!r} version {event.version} at "
                    f"{bytes(row).hex()}",
                )

    def check_index(self, txn: Any) -> None:
        for key, value in self.items(txn, self.store._index):
            stream_bytes, nul, version_bytes = key[:-8], key[-9:-8], key[-8:]
            where = f"stream index {_key_text(stream_bytes[:-1])}"
            if len(key) < 10 or nul != b"\x00" or len(value) != 8:
                self.problem(f"stream index key {key.hex()}", "is malformed")
                continue
            stream = stream_bytes[:-1].decode(errors="replace")
            (version,) = _U64.unpack(version_bytes)
            (position,) = _U64.unpack(value)
            event = self.event_at(txn, position)
            if event is None:
                if txn.get(value, db=self.store._log) is None:
                    self.problem(
                        f"{where} version {version}",
                        f"points at position {position}, not in the log",
                    )
                continue
            if event.stream != stream or event.version != version:
                self.problem(
                    f"{where} version {version}",
                    f"points at position {position}, which holds {event.stream!r} version "
                    f"{event.version}",
                )

    def check_acks(self, txn: Any) -> None:
        decoder = msgspec.msgpack.Decoder(AckRecord)
        for key, value in self.items(txn, self.store._commands):
            self.acks += 1
            where = f"ack of command id {_key_text(key)}"
            try:
                ack = decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.problem(where, f"does not decode: {exc}")
                continue
            event = self.event_at(txn, ack.position)
            if event is None:
                if txn.get(
                    _U64.pack(ack.position), db=self.store._log
                ) is None and not self.removed_between(ack.position - 1, ack.position + 1):
                    self.problem(where, f"points at position {ack.position}, not in the log")
                continue
            if event.stream != ack.stream or event.version != ack.version:
                self.problem(
                    where,
                    f"says {ack.stream!r} version {ack.version} at position {ack.position}, "
                    f"which holds {event.stream!r} version {event.version}",
                )

    def check_snapshots(self, txn: Any) -> None:
        decoder = msgspec.msgpack.Decoder(Snapshot)
        for key, value in self.items(txn, self.store._snapshots):
            where = f"snapshot of {_key_text(key)}"
            try:
                snapshot = decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.problem(where, f"does not decode: {exc}")
                continue
            stream = key.decode(errors="replace")
            deletion = self.deletions.get(stream)
            version = max(self.versions.get(stream, 0), 0 if deletion is None else deletion.version)
            if snapshot.version > version:
                self.problem(where, f"is at version {snapshot.version}, the stream at {version}")

    def check_checkpoints(self, txn: Any) -> None:
        decoder = msgspec.msgpack.Decoder(Checkpoint)
        head = self.store.head_position
        for key, value in self.items(txn, self.store._checkpoints):
            where = f"checkpoint {_key_text(key)}"
            try:
                checkpoint = decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.problem(where, f"does not decode: {exc}")
                continue
            if checkpoint.position > head:
                self.problem(where, f"is at position {checkpoint.position}, past the head {head}")
