"""The stream index's tail: the LMDB log records not in the stream index yet.

Writing a commit's stream-index rows in that commit dirties one B-tree leaf
page per stream it touches: 1,000 commands on 1,000 random streams dirty
most of the index's pages, and writing and fsyncing those pages is most of
what the commit costs. So the LMDB store writes the index rows of several
commits at once (:data:`FLUSH_ROWS` of them), in the transaction of the
commit that fills the tail; a page then takes the rows of many commits in
one write. The ``meta`` record ``indexed`` says through which log position
the index is complete (no record: all of it).

The log stays the one truth. The rows not written yet are held here, in
memory, and any handle rebuilds them from the log records after that
position: the writer when it opens the store (after a crash, at most
:data:`FLUSH_ROWS` plus one batch of records), a read-only handle in another
process as the writer's commits show up. Every read takes, in its own read
transaction, the mark and the log's head, and uses the rows between them, so
it sees one commit's state whatever the writer does meanwhile.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import msgspec

from .errors import CodecError
from .integrity import unseal
from .records import StoredEvent

__all__ = ["FLUSH_ROWS", "MARK_KEY", "IndexTail", "index_mark", "index_row", "log_head"]

FLUSH_ROWS = 8192
"""The writer writes the held rows into the stream index once this many are
held: enough for a page to take many commits' rows in one write, few enough
that rebuilding them from the log at open takes milliseconds."""

MARK_KEY = b"indexed"
"""The ``meta`` key of the position through which the stream index is complete."""

_U64 = struct.Struct(">Q")

Entry = tuple[int, int]
"""A held row: (version, position)."""

# A stream's held rows, packed: version, position, version, position... A
# bytearray, because the garbage collector does not track one (it does track
# an array.array): a thousand new ones a commit would set it off.
_Rows: TypeAlias = bytearray
_PAIR = struct.Struct("=qq")


def _pairs(rows: _Rows) -> Iterable[Entry]:
    return _PAIR.iter_unpack(rows)


class _Locator(msgspec.Struct, array_like=True, gc=False):
    """The head of a log record (see :class:`StoredEvent`): what an index row needs."""

    position: int
    stream: str
    version: int


_decode_locator = msgspec.msgpack.Decoder(_Locator).decode


def index_row(stream: str, version: int, position: int) -> bytes:
    """A stream-index row as one bytes object: the key (the stream, NUL, the
    version) and then the value (the position), 8 bytes.

    One object, not a (key, value) tuple: bytes sort like the keys do, and
    thousands of them do not set off the garbage collector (tuples do).
    """
    return stream.encode() + b"\x00" + _U64.pack(version) + _U64.pack(position)


def index_mark(txn: Any, meta: Any, head: int) -> int:
    """The position through which the stream index is complete as of ``txn``
    (``head``, the log's last position in ``txn``, when no mark is recorded)."""
    raw = txn.get(MARK_KEY, db=meta)
    if raw is None:
        return head
    if len(raw) != 8:
        raise CodecError(f"the stream index's mark is damaged ({bytes(raw).hex()})")
    return int(_U64.unpack(raw)[0])


def log_head(txn: Any, log: Any) -> int:
    """The last position in the log as of ``txn`` (0 when it is empty)."""
    cursor = txn.cursor(log)
    return int(_U64.unpack(cursor.key())[0]) if cursor.last() else 0


class IndexTail:
    """The stream-index rows of the log records after the index's mark.

    Shared by the threads of one store handle (the writer's and the readers'),
    so every method takes its lock. ``base`` is the mark the rows are held
    for and ``through`` the last log position they cover.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.base = 0
        self.through = 0
        self._streams: dict[str, _Rows] = {}
        # The writer's commits not sorted into _streams yet: most are
        # written into the index before any lookup needs them by stream.
        # Their records keep their payloads meanwhile: at most FLUSH_ROWS
        # of them, a few MB.
        self._commits: list[Sequence[StoredEvent]] = []
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    # -- the writer ----------------------------------------------------------

    def load(self, txn: Any, log: Any, meta: Any) -> None:
        """Rebuild the rows from the log as of ``txn`` (the writer, at open).

        A record after the mark that does not read would leave its stream's
        version unknown, and the next append would hand that version out
        again: refuse (``motet verify`` says more).
        """
        head = log_head(txn, log)
        mark = index_mark(txn, meta, head)
        rows: dict[str, _Rows] = {}
        # Into a dict of its own: should a record not read, nothing is held
        # (and nothing written into the index when the store closes).
        count = _scan(txn, log, mark, head, strict=True, into=rows)
        with self._lock:
            self.base = mark
            # The mark passes the last record when the newest were removed.
            self.through = max(head, mark)
            self._streams = rows
            self._commits = []
            self._rows = count

    def add(self, records: Sequence[StoredEvent]) -> None:
        """Hold the rows of a commit's ``records`` (in position order, not
        changed afterwards). They are sorted by stream only when a lookup
        needs them (see :meth:`_sort`)."""
        if not records:
            return
        with self._lock:
            through = self.through
            if records[0].position <= through:
                # A reader found some in the log first.
                records = [r for r in records if r.position > through]
                if not records:
                    return
            self._commits.append(records)
            self._rows += len(records)
            self.through = records[-1].position

    def _sort(self) -> None:
        """Add the held commits' rows to their streams' (under the lock)."""
        pack = _PAIR.pack
        streams = self._streams
        for records in self._commits:
            for r in records:
                rows = streams.get(r.stream)
                if rows is None:
                    streams[r.stream] = bytearray(pack(r.version, r.position))
                else:
                    rows += pack(r.version, r.position)
        self._commits = []

    def rows(self) -> list[bytes]:
        """The held rows, each as its stream-index key followed by its value
        (see :func:`index_row`)."""
        with self._lock:
            rows = [
                index_row(stream, version, position)
                for stream, held in self._streams.items()
                for version, position in _pairs(held)
            ]
            for records in self._commits:
                rows += [index_row(r.stream, r.version, r.position) for r in records]
            return rows

    def written(self, through: int) -> None:
        """The index now holds every row through ``through`` (a commit wrote them)."""
        with self._lock:
            self._advance(through)
            self.through = max(self.through, through)

    def last_version(self, stream: str) -> int:
        """``stream``'s last held version (0: none); for the writer, whose rows
        are those of the last commit."""
        with self._lock:
            if self._commits:
                self._sort()
            rows = self._streams.get(stream)
            return _PAIR.unpack_from(rows, len(rows) - _PAIR.size)[0] if rows else 0

    # -- reads -----------------------------------------------------------------

    def entries(self, txn: Any, log: Any, meta: Any, stream: str) -> list[Entry]:
        """``stream``'s rows missing from the index as of ``txn``, by version."""
        with self._lock:
            found = self._held(txn, log, meta)
            if found is None:
                return []
            held, mark, head = found
            # Only this stream's rows: a read must not cost the whole tail.
            rows = held.get(stream)
            return [] if rows is None else [e for e in _pairs(rows) if mark < e[1] <= head]

    def versions(self, txn: Any, log: Any, meta: Any) -> dict[str, int]:
        """The last version of every stream with rows missing from the index
        as of ``txn``."""
        versions: dict[str, int] = {}
        with self._lock:
            found = self._held(txn, log, meta)
            if found is None:
                return versions
            held, mark, head = found
            for stream, rows in held.items():
                for version, position in _pairs(rows):
                    if mark < position <= head:
                        versions[stream] = version
        return versions

    def _held(self, txn: Any, log: Any, meta: Any) -> tuple[dict[str, _Rows], int, int] | None:
        """The rows a read transaction may need, with its mark and head (under
        the lock; None: the index is complete as of ``txn``). They are those
        held, brought up to ``txn``, or, for a transaction older than the
        last index write, a one-off scan of its own; the caller keeps the rows
        after the mark through the head."""
        head = log_head(txn, log)
        mark = index_mark(txn, meta, head)
        if mark >= head:
            return None
        if mark < self.base:
            # The index was written after this transaction began.
            own: dict[str, _Rows] = {}
            _scan(txn, log, mark, head, strict=False, into=own)
            return own, mark, head
        self._advance(mark)
        if self._commits:
            self._sort()
        if head > self.through:
            self._rows += _scan(txn, log, self.through, head, strict=False, into=self._streams)
            self.through = head
        return self._streams, mark, head

    def _advance(self, mark: int) -> None:
        """Forget the rows through ``mark`` (the index holds them now)."""
        if mark <= self.base:
            return
        self.base = mark
        if mark >= self.through:
            # All of them (the usual case: the writer wrote every row it held).
            self._streams = {}
            self._commits = []
            self._rows = 0
            self.through = mark
            return
        if self._commits:
            self._sort()
        kept: dict[str, _Rows] = {}
        rows = 0
        for stream, held in self._streams.items():
            newer = bytearray()
            for version, position in _pairs(held):
                if position > mark:
                    newer += _PAIR.pack(version, position)
            if newer:
                kept[stream] = newer
                rows += len(newer) // _PAIR.size
        self._streams = kept
        self._rows = rows
        self.through = max(self.through, mark)


def _scan(
    txn: Any, log: Any, after: int, head: int, *, strict: bool, into: dict[str, _Rows]
) -> int:
    """Add the rows of the log records after ``after`` through ``head`` to
    ``into``; return how many. A record that does not read raises with
    ``strict``, else is left out (reading it raises where it is read, and
    ``motet verify`` reports it)."""
    cursor = txn.cursor(log)
    if not cursor.set_range(_U64.pack(after + 1)):
        return 0
    count = 0
    for key, value in cursor:
        position = int(_U64.unpack(key)[0])
        if position > head:
            break
        try:
            found = _decode_locator(unseal(value))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            if strict:
                raise CodecError(
                    f"the log record at position {position} is damaged and not in the "
                    f"stream index yet, so its stream's version is unknown: {exc} "
                    f"(run `motet verify`)"
                ) from exc
            continue
        held = into.get(found.stream)
        if held is None:
            into[found.stream] = bytearray(_PAIR.pack(found.version, position))
        else:
            held += _PAIR.pack(found.version, position)
        count += 1
    return count
