"""The LMDB event store: one LMDB environment, eight named databases.

Layout (see docs/design.md, "Storage"):

``log``          8-byte big-endian position → msgpack :class:`StoredEvent`
``streams``      stream id + NUL + 8-byte big-endian version → position
``snapshots``    stream id → msgpack :class:`Snapshot`
``commands``     command id → msgpack :class:`Ack` (the original Ack)
``checkpoints``  projection name → msgpack :class:`Checkpoint`
``meta``         ``format`` → the store format name
``deletions``    stream id → msgpack :class:`StreamDeletion` (tombstones, removals)
``removed``      8-byte first position → 8-byte last position of a removed run
``categories``   category + NUL + 8-byte big-endian position → empty: the
                 category index (written in the append's transaction; built
                 from the log the first time a writer of this version opens
                 an older store)
``groups``       group + NUL → msgpack :class:`GroupProgress`; group + NUL +
                 8-byte big-endian position → msgpack :class:`ParkedEvent`
                 (created on first open by this version; older stores lack it
                 until a writer opens them, and read as holding no groups)

Each log value is checksummed (see :mod:`motet.storage.integrity`); a record
whose checksum does not match raises :class:`CodecError` naming its position.

Every append batch is one write transaction; in ``sync`` durability LMDB
fsyncs it before :meth:`LmdbStore.append_batch` returns, so a result returned
here survives a crash. The stream index, acks and snapshots are written in
the same transaction, so they can never disagree with the log.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec

from .deletion import deletion_after, position_runs, truncation_after
from .errors import CodecError, StorageError, StorageFull, StoreFormatError
from .idempotency import AckRecord
from .index_tail import FLUSH_ROWS, MARK_KEY, IndexTail, index_row
from .integrity import check_data_file, prepare_lock_file, seal, unseal
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
from .streams import SEPARATOR, category_of

if sys.platform != "win32":
    import fcntl

__all__ = ["DELETIONS_FORMAT", "FORMAT", "READABLE_FORMATS", "LmdbStore"]

T = TypeVar("T")

CHECKSUM_FORMAT = b"motet-store/2"
"""The format of a store whose log records carry a checksum (a ``/1`` store's
records have none)."""

DELETIONS_FORMAT = b"motet-store/3"
"""The format of a store whose log may have removed positions or
tombstones: a version that does not know them would accept appends to
deleted streams and, when the newest events were removed, hand their
positions out again, so it must refuse the store."""

FORMAT = b"motet-store/4"
"""The on-disk format this code writes, recorded in ``meta`` by a new store
and by the first write of this version to an older one (whose records stay
readable as they are): ``/3``, and the stream index may lag the log (see
:mod:`motet.storage.index_tail`). A version that does not know it would read
the newest events of a stream as missing and hand their versions out again,
so it must refuse the store."""

READABLE_FORMATS = (b"motet-store/1", CHECKSUM_FORMAT, DELETIONS_FORMAT, FORMAT)
"""The formats this code opens."""

_SEPARATOR = SEPARATOR.encode()
_U64 = struct.Struct(">Q")
_pack = _U64.pack
_MAX_VERSION = b"\xff" * 8
_DATABASES = (b"log", b"streams", b"snapshots", b"commands", b"checkpoints", b"meta")
# Added later: a store made before them gets them with its writer's first
# open; a read-only handle on such a store reads them as empty. `keys` holds
# the subject keys (see :mod:`motet.storage.keyring`).
_KEYS = b"keys"
_LATER_DATABASES = (b"deletions", b"removed", _KEYS)
# Also added later, opened by `_open_added` (the category index is filled
# from the log when it is made).
_GROUPS = b"groups"
_CATEGORIES = b"categories"
_LMDB_FILES = {"data.mdb", "lock.mdb"}

DEFAULT_MAP_SIZE = 1 << 30
"""Initial map size (1 GiB of address space, not disk); it doubles when full."""


def _stream_prefix(stream: str) -> bytes:
    return stream.encode() + b"\x00"


class LmdbStore:
    """An :class:`~motet.storage.store.EventStore` in an LMDB environment at ``path``.

    ``path`` is a directory; it is created when missing. Opening a directory
    that holds something other than a Motet store, or a store of an unknown
    format, raises :class:`~motet.storage.errors.StoreFormatError` and changes
    nothing. ``durability`` is ``"sync"`` (fsync every commit) or ``"none"``
    (no fsync: a process crash loses nothing, an OS crash or power loss may
    lose the last commits). ``readonly`` opens an existing store for reading
    only, safely beside a running server (appends fail), e.g. for
    ``motet inspect``; such a handle is :attr:`shared`: the server's commits
    show up through :meth:`wait_for_commit`. ``map_size`` is the initial
    map size (it doubles whenever the map is full); it is an LMDB option,
    so :func:`motet.engine.open_engine` passes it here through its
    ``store_options``.

    Its calls do not block on I/O beyond the page cache (``blocking`` is
    ``False``): reads are served from the memory map, and writes run in
    the engine's writer thread anyway.
    """

    blocking = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "sync",
        map_size: int = DEFAULT_MAP_SIZE,
        readonly: bool = False,
    ) -> None:
        if durability not in ("sync", "none"):
            raise ValueError(f"durability must be 'sync' or 'none', got {durability!r}")
        self.path = Path(path)
        self.durability: Durability = durability
        self.readonly = readonly
        # A writer holds the store's lock, so only a read-only handle sees
        # commits it did not make.
        self.shared = readonly
        if readonly and not (self.path / "data.mdb").is_file():
            raise StoreFormatError(f"{self.path} holds no Motet store (no data.mdb)")
        existing = readonly or self._check_directory(self.path)
        if existing:
            # Before LMDB maps it: a truncated file would kill us with SIGBUS.
            check_data_file(self.path / "data.mdb")
        prepare_lock_file(self.path)
        try:
            self._env = lmdb.open(
                str(self.path),
                readonly=readonly,
                map_size=map_size,
                max_dbs=len(_DATABASES) + len(_LATER_DATABASES) + 4,
                subdir=True,
                sync=durability == "sync",
                metasync=durability == "sync",
                readahead=False,
                max_readers=512,
                create=not readonly,
            )
        except lmdb.DiskError as exc:
            raise _translate(exc, "opening the store", self.path) from exc
        except lmdb.Error as exc:
            raise StoreFormatError(f"{self.path} is not a readable LMDB store: {exc}") from exc
        self._writer_lock: int | None = None
        try:
            if not readonly:
                self._writer_lock = _lock_for_writing(self.path)
            # A reader process killed inside a read transaction leaves its slot
            # in the lock file, pinning old pages the writer would reuse.
            self._env.reader_check()
            self._open_databases(existing)
        except BaseException:
            self._env.close()
            if self._writer_lock is not None:
                os.close(self._writer_lock)
            raise
        # set_mapsize needs every transaction of this process closed: readers and
        # the grower take this lock; write transactions never overlap a resize
        # because the single writer is the one that grows the map.
        self._resize_lock = threading.Lock()
        self._encode = msgspec.msgpack.Encoder().encode
        self._event_decoder = msgspec.msgpack.Decoder(StoredEvent)
        self._snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)
        self._ack_decoder = msgspec.msgpack.Decoder(AckRecord)
        self._checkpoint_decoder = msgspec.msgpack.Decoder(Checkpoint)
        self._deletion_decoder = msgspec.msgpack.Decoder(StreamDeletion)
        self._group_decoder = msgspec.msgpack.Decoder(GroupProgress)
        self._parked_decoder = msgspec.msgpack.Decoder(ParkedEvent)
        self._closed = False
        self._marking = False
        self._head = 0
        # Committed stream versions, kept like the head: this process is the
        # store's only writer (see _lock_for_writing), so they stay exact and
        # spare most appends a B-tree lookup. Updated only after a commit.
        self._versions: dict[str, int] = {}
        # Called once a batch is written and only its commit is left (see
        # EventStore): the engine's writer lets the event loop get on with
        # other work while LMDB flushes the pages.
        self.before_commit: Callable[[], None] | None = None
        # The stream-index rows not written yet (see index_tail): the writer
        # rebuilds them from the log now, a read-only handle as it reads.
        self._tail = IndexTail()
        try:
            self._head = self._read_head()
            self._marked = False
            if not readonly:
                with self._read() as txn:
                    self._tail.load(txn, self._log, self._meta)
                    self._marked = txn.get(MARK_KEY, db=self._meta) is not None
        except BaseException:
            self.close()
            raise

    def _read_head(self) -> int:
        """The last position handed out: the last event's, or the last
        removed one's when the newest events were removed."""
        with self._read() as txn:
            cursor = txn.cursor(self._log)
            head = int(_U64.unpack(cursor.key())[0]) if cursor.last() else 0
            if self._removed is not None:
                runs = txn.cursor(self._removed)
                if runs.last():
                    head = max(head, int(_U64.unpack(runs.value())[0]))
            return head

    @staticmethod
    def _check_directory(path: Path) -> bool:
        """Return whether a store already exists at ``path``; refuse anything else."""
        if path.exists() and not path.is_dir():
            raise StoreFormatError(f"{path} is a file, not a Motet store directory")
        if not path.exists():
            try:
                path.mkdir(parents=True)
            except OSError as exc:
                raise StorageError(f"cannot create store directory {path}: {exc}") from exc
            return False
        entries = set(os.listdir(path))
        if "data.mdb" in entries:
            return True
        if entries - _LMDB_FILES:
            shown = ", ".join(sorted(entries)[:5])
            raise StoreFormatError(f"{path} is not empty and holds no Motet store (found: {shown})")
        return False

    def _open_databases(self, existing: bool) -> None:
        """Open the named databases; write only when creating a new store."""
        try:
            found = self._open_existing() if existing else None
            if found is None:
                if self.readonly:
                    raise StoreFormatError(f"{self.path} holds no Motet store")
                with self._env.begin(write=True) as txn:
                    dbs = {
                        name: self._env.open_db(name, txn=txn, create=True)
                        for name in _DATABASES + _LATER_DATABASES
                    }
                    txn.put(b"format", FORMAT, db=dbs[b"meta"])
                self._format_written = True
            else:
                dbs = found
        except lmdb.Error as exc:
            raise _translate(exc, "opening the store", self.path) from exc
        self._meta = dbs[b"meta"]
        self._log = dbs[b"log"]
        self._index = dbs[b"streams"]
        self._snapshots = dbs[b"snapshots"]
        self._commands = dbs[b"commands"]
        self._checkpoints = dbs[b"checkpoints"]
        self._deletions: Any = dbs.get(b"deletions")
        self._removed: Any = dbs.get(b"removed")
        self._keys: Any = dbs.get(_KEYS)
        self._groups = self._open_added(_GROUPS)
        self._categories = self._open_added(_CATEGORIES)

    def _open_added(self, name: bytes) -> Any:
        """A database added after the store format (``groups``,
        ``categories``); ``None`` in a read-only handle of a store no writer
        of this version has opened yet. A new category index is filled from
        the log in the same transaction, so it never lags the log."""
        if self.readonly:
            try:
                return self._env.open_db(name, create=False)
            except lmdb.NotFoundError:
                return None
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    db = self._env.open_db(name, txn=txn, create=True)
                    if name == _CATEGORIES and not txn.stat(db)["entries"]:
                        _index_categories(txn, self._log, db)
                return db
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def _open_existing(self) -> dict[bytes, Any]:
        """Open the databases of an existing store without writing to it.

        In a writable environment LMDB hands out database handles in a write
        transaction; one that changes nothing commits without touching the
        disk. In a read-only one py-lmdb opens them in its own read
        transaction (a handle from a transaction of ours would close with it).
        """
        txn = None if self.readonly else self._env.begin(write=True)
        try:
            try:
                meta = self._env.open_db(b"meta", txn=txn, create=False)
            except lmdb.NotFoundError:
                raise StoreFormatError(
                    f"{self.path} is an LMDB environment but not a Motet store (no meta record)"
                ) from None
            if txn is None:
                with self._env.begin(db=meta) as reader:
                    found = reader.get(b"format")
            else:
                found = txn.get(b"format", db=meta)
            if found not in READABLE_FORMATS:
                raise StoreFormatError(
                    f"{self.path} holds store format {found!r}; this version reads "
                    f"{', '.join(repr(f.decode()) for f in READABLE_FORMATS)} only"
                )
            try:
                dbs = {name: self._env.open_db(name, txn=txn, create=False) for name in _DATABASES}
            except lmdb.NotFoundError:
                raise StoreFormatError(
                    f"{self.path} is a Motet store with databases missing (damaged?)"
                ) from None
            for name in _LATER_DATABASES:
                # Read-only on a store made before it: absent, read as empty
                # (get_key retries for the keys).
                with contextlib.suppress(lmdb.NotFoundError):
                    dbs[name] = self._env.open_db(name, txn=txn, create=txn is not None)
            if txn is not None:
                txn.commit()
                txn = None
        finally:
            if txn is not None:
                txn.abort()
        self._format_written = found == FORMAT
        return dbs

    def __repr__(self) -> str:
        if self._closed:
            return f"<LmdbStore {str(self.path)!r} closed>"
        return (
            f"<LmdbStore {str(self.path)!r} head={self._head} durability={self.durability} "
            f"map_size={self._env.info()['map_size']}>"
        )

    @property
    def head_position(self) -> int:
        return self._head

    def wait_for_commit(self, after_position: int, timeout: float) -> int:
        """See :meth:`EventStore.wait_for_commit`. LMDB has no notification
        across processes, so a shared (read-only) handle polls the log's
        last key every few milliseconds; a writer's own head is exact."""
        deadline = time.monotonic() + timeout
        while not self._closed:
            if self.shared:
                try:
                    self._head = max(self._head, self._read_head())
                except StorageError:
                    break  # closed meanwhile
            if self._head > after_position or time.monotonic() >= deadline:
                break
            time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        return self._head

    @property
    def map_size(self) -> int:
        """The current map size in bytes (grows by itself)."""
        return int(self._env.info()["map_size"])

    @contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        """A read transaction; LMDB's errors leave it as Motet's."""
        if self._closed:
            raise StorageError(f"the store at {self.path} is closed")
        try:
            with self._resize_lock:
                try:
                    txn = self._env.begin(buffers=True)
                except lmdb.MapResizedError:
                    # The writer process grew the map past ours: adopt its size.
                    self._env.set_mapsize(0)
                    txn = self._env.begin(buffers=True)
                with txn:
                    yield txn
        except lmdb.Error as exc:
            raise _translate(exc, "reading the store", self.path) from exc
        except (UnicodeDecodeError, struct.error) as exc:
            raise CodecError(f"an index record in {self.path} is damaged: {exc}") from exc

    # -- writes -------------------------------------------------------------

    def append_batch(
        self,
        appends: Sequence[Append],
        timestamp: float,
        keys: Mapping[str, bytes | None] | None = None,
    ) -> list[Ack | AppendError]:
        self._check_writable("append to")
        while True:
            try:
                results, head = self._append_once(appends, timestamp, keys)
            except lmdb.MapFullError:
                self._grow()
                continue
            except (lmdb.Error, OSError) as exc:
                raise _translate(exc, f"appending to {self.path}", self.path) from exc
            self._head = head
            return results

    def _append_once(
        self,
        appends: Sequence[Append],
        timestamp: float,
        keys: Mapping[str, bytes | None] | None = None,
    ) -> tuple[list[Ack | AppendError], int]:
        with self._env.begin(write=True) as txn:
            if keys:
                self._write_keys(txn, keys)
            index = txn.cursor(self._index)
            commands = self._commands
            decode_ack = self._ack_decoder.decode

            def ack_of(command_id: str) -> AckRecord | None:
                raw = txn.get(command_id.encode(), db=commands)
                return None if raw is None else decode_ack(raw)

            if self._has_deletions(txn):

                def version_of(stream: str) -> int:
                    record = self._deletion_in(txn, stream)
                    found = self._committed_version(index, stream)
                    return found if record is None else max(found, record.version)

                def deleted_of(stream: str) -> bool:
                    record = self._deletion_in(txn, stream)
                    return record is not None and record.deleted

                plan = plan_appends(
                    appends,
                    self._head,
                    timestamp,
                    version_of,
                    ack_of,
                    deleted_of,
                    known=self._versions,
                )
            else:
                # No stream was ever deleted or truncated (the common case):
                # one index probe per stream not known yet, nothing else.
                plan = plan_appends(
                    appends,
                    self._head,
                    timestamp,
                    lambda stream: self._committed_version(index, stream),
                    ack_of,
                    known=self._versions,
                )
            encode = self._encode
            records = plan.records
            indexed = False
            if records:
                # The (key, value) tuples are made as they are written and freed
                # right away: a thousand of them held would set off the
                # garbage collector, and it would promote them.
                txn.cursor(self._log).putmulti(
                    ((_pack(r.position), seal(encode(r))) for r in records), append=True
                )
                category_keys = [
                    _category_prefix(r.stream.encode()) + _pack(r.position) for r in records
                ]
                # Sorted keys keep the B-tree inserts local: fewer pages dirtied.
                category_keys.sort()
                txn.cursor(self._categories).putmulti((key, b"") for key in category_keys)
                if len(self._tail) + len(records) >= FLUSH_ROWS:
                    self._write_index(txn, index, records, plan.head)
                    indexed = True
                elif not self._marked:
                    # The index is complete through the head before this batch.
                    txn.put(MARK_KEY, _pack(self._head), db=self._meta)
            for stream, snapshot in plan.snapshots:
                txn.put(stream.encode(), encode(snapshot), db=self._snapshots)
            for command_id, record in plan.acks:
                txn.put(command_id.encode(), encode(record), db=commands)
            if not self._format_written:
                # Before the first row the index leaves out (and the first
                # checksummed record of a /1 store).
                txn.put(b"format", FORMAT, db=self._meta)
            if self.before_commit is not None:
                self.before_commit()
        self._format_written = True
        if indexed:
            self._tail.written(plan.head)
        elif records:
            self._marked = True
            self._tail.add(records)
        versions = self._versions
        if len(versions) + len(plan.versions) > _KNOWN_VERSIONS:
            versions.clear()  # bounded memory: start over, lookups refill it
        if len(plan.versions) <= _KNOWN_VERSIONS:
            versions.update(plan.versions)
        return plan.results, plan.head

    def _committed_version(self, index: lmdb.Cursor, stream: str) -> int:
        """``stream``'s last committed version as far as the log goes (the
        writer's own rows not written into the index yet included)."""
        return self._tail.last_version(stream) or _last_version(index, _stream_prefix(stream))

    def _write_index(
        self, txn: lmdb.Transaction, index: lmdb.Cursor, records: Sequence[StoredEvent], head: int
    ) -> None:
        """Write the held rows and those of ``records`` into the stream index,
        complete through ``head`` then (call :meth:`IndexTail.written` once
        ``txn`` committed)."""
        rows = self._tail.rows()
        rows += [index_row(r.stream, r.version, r.position) for r in records]
        # Sorted keys keep the B-tree inserts local: fewer pages dirtied. Each
        # (key, value) tuple is made as it is written, and freed right away.
        rows.sort()
        index.putmulti((row[:-8], row[-8:]) for row in rows)
        txn.put(MARK_KEY, _pack(head), db=self._meta)

    def append_recorded(
        self,
        records: Sequence[StoredEvent],
        *,
        removed: Sequence[tuple[int, int]] = (),
        deletions: Sequence[tuple[str, StreamDeletion]] = (),
    ) -> None:
        """See :meth:`EventStore.append_recorded`: one write transaction."""
        self._check_writable("import into")
        if not (records or removed or deletions):
            return
        for stream, record in deletions:
            check_deletion(stream, record)
        if removed or deletions:
            self._ensure_deletion_databases()
        while True:
            try:
                head = self._append_recorded_once(records, removed, deletions)
            except lmdb.MapFullError:
                self._grow()
                continue
            except (lmdb.Error, OSError) as exc:
                raise _translate(exc, f"importing into {self.path}", self.path) from exc
            self._head = head
            self._marked = True
            self._tail.written(head)
            return

    def _append_recorded_once(
        self,
        records: Sequence[StoredEvent],
        removed: Sequence[tuple[int, int]],
        deletions: Sequence[tuple[str, StreamDeletion]],
    ) -> int:
        with self._env.begin(write=True) as txn:
            index = txn.cursor(self._index)
            commands = self._commands
            decode_ack = self._ack_decoder.decode
            for stream, record in deletions:
                txn.put(stream.encode(), self._encode(record), db=self._deletions)
            has_deletions = self._has_deletions(txn)

            def version_of(stream: str) -> int:
                version = self._committed_version(index, stream)
                if has_deletions:
                    record = self._deletion_in(txn, stream)
                    if record is not None:
                        version = max(version, record.removed_through)
                return version

            def ack_of(command_id: str) -> AckRecord | None:
                raw = txn.get(command_id.encode(), db=commands)
                return None if raw is None else decode_ack(raw)

            plan = plan_recorded(records, self._head, version_of, ack_of, removed)
            encode = self._encode
            txn.cursor(self._log).putmulti(
                [(_pack(r.position), seal(encode(r))) for r in records], append=True
            )
            self._write_index(txn, index, records, plan.head)
            txn.cursor(self._categories).putmulti(
                sorted((_category_key(r.stream, r.position), b"") for r in records)
            )
            txn.cursor(commands).putmulti(
                sorted((command_id.encode(), encode(ack)) for command_id, ack in plan.acks)
            )
            if plan.removed:
                runs = txn.cursor(self._removed)
                for first, last in plan.removed:
                    # Merged with a run just before it (one of an earlier batch).
                    if runs.last() and _U64.unpack(runs.value())[0] == first - 1:
                        first = _U64.unpack(runs.key())[0]
                    txn.put(_pack(first), _pack(last), db=self._removed)
            if not self._format_written:
                txn.put(b"format", FORMAT, db=self._meta)
        self._format_written = True
        return plan.head

    # -- deletion and retention ------------------------------------------------

    def _has_deletions(self, txn: lmdb.Transaction) -> bool:
        return self._deletions is not None and txn.stat(self._deletions)["entries"] > 0

    def _deletion_in(self, txn: lmdb.Transaction, stream: str) -> StreamDeletion | None:
        if self._deletions is None:
            return None
        raw = txn.get(stream.encode(), db=self._deletions)
        if raw is None:
            return None
        try:
            return self._deletion_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CodecError(
                f"the deletion record of stream {stream!r} in {self.path} is corrupt: {exc}"
            ) from exc

    def _write(self, work: Any, doing: str) -> Any:
        """Run ``work(txn)`` in one write transaction, growing the map when
        it is full (removing records dirties pages too)."""
        self._check_writable(doing)
        while True:
            self._marking = False
            try:
                with self._env.begin(write=True) as txn:
                    held = len(self._tail)
                    if held:
                        # Removals look streams up in the index: complete it first.
                        self._write_index(txn, txn.cursor(self._index), (), self._head)
                    result = work(txn)
                if held:
                    self._marked = True
                    self._tail.written(self._head)
                if self._marking:
                    self._format_written = True
                return result
            except lmdb.MapFullError:
                self._grow()
            except (lmdb.Error, OSError) as exc:
                raise _translate(exc, doing, self.path) from exc

    def _remove_versions(self, txn: lmdb.Transaction, stream: str, through: int) -> int:
        """Delete the log records and index rows of ``stream``'s versions
        1..``through`` and record their positions as removed; return how
        many there were."""
        prefix = _stream_prefix(stream)
        index = txn.cursor(self._index)
        positions: list[int] = []
        if index.set_range(prefix + _pack(1)):
            while True:
                key = bytes(index.key())
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    break
                if _U64.unpack_from(key, len(prefix))[0] > through:
                    break
                positions.append(_U64.unpack(index.value())[0])
                if not index.delete():
                    break
        log = txn.cursor(self._log)
        categories = self._categories
        for position in positions:
            if log.set_key(_pack(position)):
                log.delete()
            if categories is not None:
                txn.delete(_category_key(stream, position), db=categories)
        runs = txn.cursor(self._removed)
        for first, last in position_runs(positions):
            # Merge with the neighbouring runs, so deleting interleaved
            # streams one after another leaves few runs.
            found = runs.set_range(_pack(first))
            found = runs.prev() if found else runs.last()
            if found and _U64.unpack(runs.value())[0] == first - 1:
                first = _U64.unpack(runs.key())[0]
                runs.delete()
            following = txn.get(_pack(last + 1), db=self._removed)
            if following is not None:
                txn.delete(_pack(last + 1), db=self._removed)
                last = _U64.unpack(following)[0]
            txn.put(_pack(first), _pack(last), db=self._removed)
        return len(positions)

    def delete_stream(self, stream: str, *, hard: bool, timestamp: float) -> StreamDeletion:
        """See :meth:`EventStore.delete_stream`."""

        def delete(txn: lmdb.Transaction) -> StreamDeletion:
            earlier = self._deletion_in(txn, stream)
            version = _last_version(txn.cursor(self._index), _stream_prefix(stream))
            if earlier is not None:
                version = max(version, earlier.version)
            removed = self._remove_versions(txn, stream, version) if hard else 0
            record = deletion_after(
                stream, earlier, version, removed, hard=hard, timestamp=timestamp
            )
            if hard:
                txn.delete(stream.encode(), db=self._snapshots)
            txn.put(stream.encode(), self._encode(record), db=self._deletions)
            self._mark_deletions(txn)
            return record

        self._ensure_deletion_databases()
        record: StreamDeletion = self._write(delete, f"deleting stream {stream!r} in {self.path}")
        return record

    def truncate_stream(self, stream: str, through_version: int) -> int:
        """See :meth:`EventStore.truncate_stream`."""

        def truncate(txn: lmdb.Transaction) -> int:
            earlier = self._deletion_in(txn, stream)
            version = _last_version(txn.cursor(self._index), _stream_prefix(stream))
            if earlier is not None:
                version = max(version, earlier.version)
            through = min(max(through_version, 0), version)
            removed = self._remove_versions(txn, stream, through)
            if removed:
                record = truncation_after(earlier, version, through, removed)
                txn.put(stream.encode(), self._encode(record), db=self._deletions)
                self._mark_deletions(txn)
            return removed

        self._ensure_deletion_databases()
        removed: int = self._write(truncate, f"removing old events of {stream!r} in {self.path}")
        return removed

    def _mark_deletions(self, txn: lmdb.Transaction) -> None:
        """Record :data:`FORMAT` (which has deletions) in the transaction
        that first removes records or writes a tombstone, if no commit did
        yet (:meth:`_write` notes it once the transaction committed)."""
        if not self._format_written:
            txn.put(b"format", FORMAT, db=self._meta)
            self._marking = True

    def _ensure_deletion_databases(self) -> None:
        if self._deletions is None or self._removed is None:
            raise StorageError(
                f"the store at {self.path} has no deletion records: open it for writing once "
                "with this version to add them"
            )

    def stream_deletion(self, stream: str) -> StreamDeletion | None:
        """See :meth:`EventStore.stream_deletion`."""
        with self._read() as txn:
            return self._deletion_in(txn, stream)

    def removed_runs(self) -> list[tuple[int, int]]:
        """See :meth:`EventStore.removed_runs`."""
        if self._removed is None:
            return []
        with self._read() as txn:
            return [
                (_U64.unpack(first)[0], _U64.unpack(last)[0])
                for first, last in txn.cursor(self._removed)
            ]

    def stream_deletions(
        self, after: str = "", limit: int = 1000
    ) -> list[tuple[str, StreamDeletion]]:
        """See :meth:`EventStore.stream_deletions`."""
        found: list[tuple[str, StreamDeletion]] = []
        if self._deletions is None or limit < 1:
            return found
        key = after.encode()
        with self._read() as txn:
            cursor = txn.cursor(self._deletions)
            more = cursor.set_range(key)
            while more and len(found) < limit:
                name = bytes(cursor.key())
                if name != key:
                    stream = name.decode()
                    record = self._deletion_in(txn, stream)
                    assert record is not None
                    found.append((stream, record))
                more = cursor.next()
        return found

    def _check_writable(self, doing: str) -> None:
        if self._closed:
            raise StorageError(f"the store at {self.path} is closed")
        if self.readonly:
            raise StorageError(
                f"cannot {doing} the store at {self.path}: this handle is read-only "
                "(only the process that opened it for writing appends)"
            )

    def _grow(self) -> None:
        with self._resize_lock:
            self._env.set_mapsize(self.map_size * 2)

    def _write_keys(self, txn: lmdb.Transaction, keys: Mapping[str, bytes | None]) -> None:
        for subject, record in keys.items():
            if record is None:
                txn.delete(subject.encode(), db=self._keys)
            else:
                txn.put(subject.encode(), record, db=self._keys)

    def put_keys(self, keys: Mapping[str, bytes | None]) -> None:
        self._check_writable("write keys to")
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    self._write_keys(txn, keys)
                return
            except lmdb.MapFullError:
                self._grow()
            except (lmdb.Error, OSError) as exc:
                raise _translate(exc, "writing keys", self.path) from exc

    def _keys_db(self) -> Any:
        """The keys table, or ``None`` on a read-only handle on a store its
        writer had not upgraded yet."""
        if self._keys is None:
            try:
                self._keys = self._env.open_db(_KEYS, create=False)
            except lmdb.NotFoundError:
                return None
            except lmdb.Error as exc:
                raise _translate(exc, "reading keys", self.path) from exc
        return self._keys

    def get_key(self, subject: str) -> bytes | None:
        db = self._keys_db()
        if db is None:
            return None
        with self._read() as txn:
            record = txn.get(subject.encode(), db=db)
            return None if record is None else bytes(record)

    def get_keys(self, subjects: Sequence[str]) -> dict[str, bytes]:
        db = self._keys_db()
        found: dict[str, bytes] = {}
        if db is None:
            return found
        with self._read() as txn:
            for subject in subjects:
                record = txn.get(subject.encode(), db=db)
                if record is not None:
                    found[subject] = bytes(record)
        return found

    def put_checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        self._check_writable(f"save checkpoint {name!r} in")
        while True:
            try:
                with self._env.begin(write=True, db=self._checkpoints) as txn:
                    txn.put(name.encode(), self._encode(checkpoint))
                return
            except lmdb.MapFullError:
                self._grow()
            except (lmdb.Error, OSError) as exc:
                raise _translate(exc, f"saving checkpoint {name!r}", self.path) from exc

    def _put_group_key(self, key: bytes, value: bytes | None, doing: str) -> bool:
        """Put (or, with ``value=None``, delete) one key of the groups
        database in its own write transaction; whether a deleted key was there."""
        while True:
            try:
                with self._env.begin(write=True, db=self._groups) as txn:
                    if value is None:
                        return bool(txn.delete(key))
                    txn.put(key, value)
                    return True
            except lmdb.MapFullError:
                self._grow()
            except (lmdb.Error, OSError) as exc:
                raise _translate(exc, doing, self.path) from exc

    def put_group(self, name: str, progress: GroupProgress) -> None:
        check_group_name(name)
        self._check_writable(f"save the progress of group {name!r} in")
        self._put_group_key(
            _stream_prefix(name), self._encode(progress), f"saving the progress of group {name!r}"
        )

    def park(self, name: str, event: ParkedEvent) -> None:
        check_group_name(name)
        self._check_writable(f"park an event of group {name!r} in")
        self._put_group_key(
            _stream_prefix(name) + _pack(event.position),
            self._encode(event),
            f"parking position {event.position} of group {name!r}",
        )

    def unpark(self, name: str, position: int) -> bool:
        self._check_writable(f"unpark an event of group {name!r} in")
        if position < 0 or not name or "\x00" in name:
            return False
        return self._put_group_key(
            _stream_prefix(name) + _pack(position),
            None,
            f"unparking position {position} of group {name!r}",
        )

    # -- reads --------------------------------------------------------------

    def read_stream(
        self, stream: str, after_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        prefix = _stream_prefix(stream)
        decode = self._event_decoder.decode
        events: list[StoredEvent] = []
        if limit is not None and limit <= 0:
            return events
        with self._read() as txn:
            cursor = txn.cursor(self._index)
            log = txn.cursor(self._log)
            positions: list[bytes] = []
            if cursor.set_range(prefix + _pack(max(after_version, 0) + 1)):
                for key, position in cursor:
                    if bytes(key[: len(prefix)]) != prefix:
                        break
                    positions.append(bytes(position))
                    if limit is not None and len(positions) >= limit:
                        break
            # Then the rows the index does not have yet: the newest versions.
            held = self._tail.entries(txn, self._log, self._meta, stream)
            positions += [_pack(p) for v, p in held if v > after_version]
            for position in positions:
                if not log.set_key(position):
                    raise CodecError(
                        f"the stream index of {stream!r} in {self.path} points at position "
                        f"{_position_text(bytes(position))}, which is not in the log"
                    )
                try:
                    events.append(decode(unseal(log.value())))
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                    raise self._corrupt(bytes(position), exc, f" (event of {stream!r})") from exc
                if limit is not None and len(events) >= limit:
                    break
        return events

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """See :meth:`EventStore.read_all`. A record that does not decode ends
        the batch: the events before it are returned, and the call that starts
        with it raises :class:`~motet.storage.errors.CodecError` naming its position,
        so a reader applies every readable event and stops exactly there."""
        decode = self._event_decoder.decode
        events: list[StoredEvent] = []
        if limit <= 0:
            return events
        with self._read() as txn:
            cursor = txn.cursor(self._log)
            if not cursor.set_range(_pack(max(after_position, 0) + 1)):
                return events
            for value in cursor.iternext(keys=False, values=True):
                try:
                    events.append(decode(unseal(value)))
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                    if events:
                        break
                    raise self._corrupt(bytes(cursor.key()), exc) from exc
                if len(events) >= limit:
                    break
        return events

    def _corrupt(self, key: bytes, exc: Exception, what: str = "") -> CodecError:
        position = _position_text(key)
        error = CodecError(
            f"the log record at position {position}{what} in {self.path} is corrupt "
            f"and cannot be read: {exc}"
        )
        if len(key) == 8:
            error.position = _U64.unpack(key)[0]
        return error

    def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """See :meth:`EventStore.read_category`. A read-only handle of a
        store without the index (no writer of this version opened it yet)
        filters the log instead."""
        events: list[StoredEvent] = []
        if limit <= 0 or not category or "\x00" in category:
            return events
        if self._categories is None:
            after = after_position
            while len(events) < limit:
                batch = self.read_all(after, 10_000)
                if not batch:
                    break
                events += [e for e in batch if category_of(e.stream) == category]
                after = batch[-1].position
            return events[:limit]
        prefix = category.encode() + b"\x00"
        decode = self._event_decoder.decode
        with self._read() as txn:
            index = txn.cursor(self._categories)
            log = txn.cursor(self._log)
            if not index.set_range(prefix + _pack(max(after_position, 0) + 1)):
                return events
            for key in index.iternext(values=False):
                if bytes(key[: len(prefix)]) != prefix:
                    break
                position = bytes(key[len(prefix) :])
                if not log.set_key(position):
                    raise CodecError(
                        f"the category index of {category!r} in {self.path} points at "
                        f"position {_position_text(position)}, which is not in the log"
                    )
                try:
                    events.append(decode(unseal(log.value())))
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                    if events:
                        break
                    raise self._corrupt(position, exc) from exc
                if len(events) >= limit:
                    break
        return events

    def stream_version(self, stream: str) -> int:
        with self._read() as txn:
            held = self._tail.entries(txn, self._log, self._meta, stream)
            found = held[-1][0] if held else 0
            found = found or _last_version(txn.cursor(self._index), _stream_prefix(stream))
            record = self._deletion_in(txn, stream)
            return found if record is None else max(found, record.version)

    def streams(self) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        with self._read() as txn:
            cursor = txn.cursor(self._index)
            more = cursor.first()
            previous = b""
            while more:
                key = bytes(cursor.key())
                prefix = key[:-8]
                # A damaged key must not send the jump from stream to stream backwards.
                if len(key) < 10 or prefix[-1] != 0 or prefix <= previous:
                    raise CodecError(
                        f"the stream index in {self.path} is damaged at key {key[:60].hex()}"
                    )
                previous = prefix
                found.append((prefix[:-1].decode(), _last_version(cursor, prefix)))
                more = cursor.set_range(prefix[:-1] + b"\x01")
            held = self._tail.versions(txn, self._log, self._meta)
            if held:
                # Streams whose newest versions (or all) the index has not yet.
                found = sorted({**dict(found), **held}.items())
            if not self._has_deletions(txn):
                return found
            versions = dict(found)
            decode = self._deletion_decoder.decode
            for name, value in txn.cursor(self._deletions):
                stream = bytes(name).decode()
                record = decode(value)
                if record.hard:
                    versions.pop(stream, None)
                else:
                    versions[stream] = max(versions.get(stream, 0), record.version)
        return sorted(versions.items())

    def _get(self, db: Any, key: str, decoder: msgspec.msgpack.Decoder[T], what: str) -> T | None:
        """The record at ``key`` of ``db``, decoded; ``None`` when absent.
        Raises :class:`CodecError` saying ``what`` is corrupt."""
        with self._read() as txn:
            raw = txn.get(key.encode(), db=db)
            if raw is None:
                return None
            try:
                return decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise CodecError(f"{what} in {self.path} is corrupt: {exc}") from exc

    def load_snapshot(self, stream: str) -> Snapshot | None:
        return self._get(
            self._snapshots, stream, self._snapshot_decoder, f"the snapshot of stream {stream!r}"
        )

    def get_ack(self, command_id: str) -> Ack | None:
        record = self.get_ack_record(command_id)
        return None if record is None else Ack(record.stream, record.version, record.position)

    def get_ack_record(self, command_id: str) -> AckRecord | None:
        """The Ack recorded for ``command_id`` with the fingerprint of the
        command that earned it (see :mod:`motet.storage.idempotency`)."""
        return self._get(
            self._commands,
            command_id,
            self._ack_decoder,
            f"the Ack recorded for command id {command_id!r}",
        )

    def get_checkpoint(self, name: str) -> Checkpoint | None:
        return self._get(
            self._checkpoints,
            name,
            self._checkpoint_decoder,
            f"the checkpoint of projection {name!r}",
        )

    def checkpoint_names(self) -> list[str]:
        """Names of the projections that saved a checkpoint, sorted."""
        with self._read() as txn:
            return [
                bytes(key).decode() for key in txn.cursor(self._checkpoints).iternext(values=False)
            ]

    def copy_to(self, directory: str | os.PathLike[str]) -> None:
        """Write a compacted copy of the whole store into ``directory`` (an
        existing, empty directory): one read transaction, so the copy is the
        store as of one commit, even while a writer keeps appending beside a
        read-only handle. LMDB-only: a PostgreSQL store is copied with
        PostgreSQL's own tools, and an in-memory store has nothing to keep."""
        if self._closed:
            raise StorageError(f"the store at {self.path} is closed")
        try:
            with self._resize_lock:
                try:
                    self._env.copy(str(directory), compact=True)
                except lmdb.MapResizedError:
                    # The writer process grew the map past ours: adopt its size.
                    self._env.set_mapsize(0)
                    self._env.copy(str(directory), compact=True)
        except lmdb.Error as exc:
            raise _translate(exc, f"copying the store to {directory}", Path(directory)) from exc

    def get_group(self, name: str) -> GroupProgress | None:
        if self._groups is None:
            return None
        return self._get(
            self._groups, name + "\x00", self._group_decoder, f"the progress of group {name!r}"
        )

    def group_names(self) -> list[str]:
        names: set[str] = set()
        with self._read() as txn:
            if self._groups is None:
                return []
            for key in txn.cursor(self._groups).iternext(values=False):
                names.add(bytes(key).partition(b"\x00")[0].decode())
        return sorted(names)

    def parked(self, name: str) -> list[ParkedEvent]:
        found: list[ParkedEvent] = []
        prefix = _stream_prefix(name)
        with self._read() as txn:
            if self._groups is None or "\x00" in name:
                return found
            cursor = txn.cursor(self._groups)
            if not cursor.set_range(prefix + bytes(8)):
                return found
            for key, value in cursor:
                if bytes(key[: len(prefix)]) != prefix:
                    break
                try:
                    found.append(self._parked_decoder.decode(value))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise CodecError(
                        f"a parked event of group {name!r} in {self.path} is corrupt: {exc}"
                    ) from exc
        return found

    def close(self) -> None:
        if self._closed:
            return
        if not self.readonly and len(self._tail):
            # So that the next open has no rows to rebuild. Should this fail
            # (a full disk), nothing is lost: the next open rebuilds them.
            with contextlib.suppress(StorageError):
                self._write(lambda txn: None, f"writing the stream index of {self.path}")
        self._closed = True
        try:
            with self._resize_lock:
                if self.durability != "sync" and not self.readonly:
                    self._env.sync(True)
        except lmdb.Error as exc:
            raise _translate(exc, "closing the store", self.path) from exc
        finally:
            self._env.close()
            if self._writer_lock is not None:
                os.close(self._writer_lock)


def _lock_for_writing(path: Path) -> int | None:
    """Lock the store at ``path`` for this writer; return the descriptor that
    holds the lock (closing it releases the lock).

    Positions are counted in memory from the head read at open, so a second
    writer (another process on the same directory) would hand out the same
    positions and overwrite acknowledged events. Readers need no lock.
    """
    if sys.platform == "win32":
        return None
    fd = os.open(path / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StorageError(
                f"{path} is in use: another process has this store open for writing"
            ) from None
        raise StorageError(f"cannot lock the store {path} for writing: {exc}") from exc
    return fd


def _category_key(stream: str, position: int) -> bytes:
    """The category index's key of an event of ``stream`` at ``position``."""
    return category_of(stream).encode() + b"\x00" + _pack(position)


def _category_prefix(stream: bytes) -> bytes:
    """The category index's key prefix of the UTF-8 stream id ``stream``:
    what :func:`_category_key` puts before the position (the separator is
    ASCII, so splitting the bytes splits the text at the same place)."""
    return stream.partition(_SEPARATOR)[0] + b"\x00"


def _index_categories(txn: lmdb.Transaction, log: Any, categories: Any) -> None:
    """Fill the category index from the whole log, in ``txn``."""
    decode = msgspec.msgpack.Decoder(StoredEvent).decode
    index = txn.cursor(categories)
    keys: list[tuple[bytes, bytes]] = []
    for key, value in txn.cursor(log):
        try:
            stream = decode(unseal(value)).stream
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            continue  # a damaged record: `motet verify` reports it; reads raise there
        keys.append((category_of(stream).encode() + b"\x00" + bytes(key), b""))
        if len(keys) >= 100_000:
            index.putmulti(sorted(keys))
            keys.clear()
    index.putmulti(sorted(keys))


def _position_text(key: bytes) -> str:
    return str(_U64.unpack(key)[0]) if len(key) == 8 else key.hex()


def _last_version(cursor: lmdb.Cursor, prefix: bytes) -> int:
    """The highest version indexed under ``prefix`` (0 when none); moves ``cursor``."""
    found = cursor.set_range(prefix + _MAX_VERSION)
    found = cursor.prev() if found else cursor.last()
    if not found:
        return 0
    key = bytes(cursor.key())
    if len(key) != len(prefix) + 8 or not key.startswith(prefix):
        return 0
    return int(_U64.unpack_from(key, len(prefix))[0])


def _translate(exc: BaseException, doing: str, path: Path) -> StorageError:
    code = getattr(exc, "errno", None) or getattr(exc, "code", None)
    text = str(exc)
    full = code == errno.ENOSPC or "No space left" in text
    if not full and (code == errno.EIO or "Input/output error" in text):
        # LMDB reports a short write (the file system ran out of space part-way
        # through the commit) as EIO, so look at the free space to tell.
        free = _free_bytes(path)
        full = free is not None and free < _FULL_BELOW
    if full:
        free = _free_bytes(path)
        left = "" if free is None else f", {free} bytes free"
        return StorageFull(
            f"the disk is full (no space left on device{left}) while {doing}: nothing of "
            f"it was committed, what was committed before is intact; retry later, once "
            f"space is freed ({text})"
        )
    return StorageError(f"storage failure while {doing}: {text}")


_KNOWN_VERSIONS = 1 << 16
"""How many committed stream versions the writer keeps in memory at most."""

_POLL_SECONDS = 0.005
"""How often a shared handle looks for commits another process made."""

_FULL_BELOW = 1 << 20
"""Free bytes under which a failed write is put down to a full disk."""


def _free_bytes(path: Path) -> int | None:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize
