"""The PostgreSQL event store: the log shared by several Motet processes.

Tables (see :mod:`motet.storage.postgres_sql` for every statement):

``motet_meta``         ``format`` → the schema version (``motet-postgres/2``),
                       ``partitions`` → the partition count
``motet_partitions``   partition → owner node, epoch, lease expiry
``motet_nodes``        node id → advertised address, role, heartbeat expiry
``motet_head``         one row: the last committed position, locked by every append
``motet_events``       position → stream, version, envelope (the msgpack
                       :class:`StoredEvent`, the same bytes as the LMDB log value)
``motet_commands``     command id → the Ack it was given and the fingerprint
                       (type tag, digest) of the command that earned it
``motet_snapshots``    stream → version, state schema version, state
``motet_checkpoints``  projection name → position, model schema version, model
``motet_deletions``    stream → its deletion record (tombstone, removed versions)
``motet_removed``      runs of positions removed on purpose (first, last)

Every append batch is one transaction on the single writer connection. It
locks the head row first, so appends from any number of processes run one at
a time and positions are gap-free (but where events were removed on purpose)
and commit-ordered: a reader that follows the last position it saw never
skips an event. A deletion takes the same lock. In ``sync`` durability the
commit is flushed (``synchronous_commit = on``) before
:meth:`PostgresStore.append_batch` returns, and confirmed by the
synchronous standbys when the server names some: a COMMIT still waiting for
them after ``commit_timeout`` seconds is cancelled and refused
(:class:`~motet.storage.errors.StandbyUnavailable`; see
:mod:`motet.storage.commit_watch`). The other connections' writes
(checkpoints, consumer groups, leases) do not wait for standbys
(``synchronous_commit = local``): see :meth:`PostgresStore._configure`.

An unknown commit outcome (the connection dropped during COMMIT) is resolved
by reading: the batch committed if and only if its first planned event is in
the log.

Writer nodes share the log through partition leases (see
:mod:`motet.storage.partitions` and :meth:`PostgresStore.heartbeat`): once
a handle has claimed leases as a node, each of its appends is checked, in
its own transaction and under the head lock, against the epochs it holds,
and refused with :class:`~motet.storage.errors.NotOwner` when one is stale.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg_pool import ConnectionPool

from . import postgres_sql as sql
from .commit_watch import CommitWatch
from .deletion import deletion_after, position_runs, truncation_after
from .errors import (
    CodecError,
    CommandIdReused,
    NotOwner,
    StandbyUnavailable,
    StorageError,
    StoreFormatError,
)
from .idempotency import AckRecord, retried_ack
from .partitions import DEFAULT_PARTITIONS, Lease, LeaseView, NodeInfo, partition_of
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
    check_command_id,
    check_deletion,
    check_group_name,
    check_stream_id,
    plan_appends,
    plan_recorded,
)

__all__ = ["DEFAULT_COMMIT_TIMEOUT", "FORMAT", "URL_SCHEMES", "PostgresStore", "is_postgres_url"]

T = TypeVar("T")

log = logging.getLogger("motet.storage")

FORMAT = sql.FORMAT
"""The schema version this code reads and writes, recorded in ``motet_meta``."""

URL_SCHEMES = ("postgresql://", "postgres://")
"""Store locations starting with one of these name a PostgreSQL store."""

_Connection = psycopg.Connection[tuple[Any, ...]]

# Connection settings for every connection of a store. Keepalives find a dead
# peer (a crashed host, a dropped NAT entry) instead of waiting forever.
_CONNECT: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
_LOCK_TIMEOUT = 10.0
"""How long an append waits for the head row lock held by another process
(seconds), at least: longer than the commit timeout (see :meth:`PostgresStore._lock_timeout`)."""
DEFAULT_COMMIT_TIMEOUT = 10.0
"""How long a COMMIT may wait for the synchronous standbys (seconds) before
it is cancelled and refused; see :mod:`motet.storage.commit_watch`."""
_IDLE_IN_TRANSACTION = "60s"
"""A writer that stalls inside a transaction is cut off by the server, so its
head row lock cannot block the other processes' appends for longer."""


def is_postgres_url(location: object) -> bool:
    """Whether ``location`` is a ``postgresql://`` (or ``postgres://``) URL."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


class PostgresStore:
    """An :class:`~motet.storage.store.EventStore` in a PostgreSQL database.

    ``conninfo`` is a ``postgresql://user:password@host:port/dbname`` URL or
    a libpq ``key=value`` string; the tables live in the connection's current
    schema (pass ``options=-csearch_path=NAME`` to pick one), created on first
    use. A schema that holds tables named like Motet's but is not a Motet
    store, or a store of an unknown format, raises
    :class:`~motet.storage.errors.StoreFormatError` and changes nothing.

    ``durability`` is ``"sync"`` (``synchronous_commit = on``: a returned
    result survives a server crash) or ``"none"`` (``off``: a server crash may
    lose the last acknowledged commits, never corrupt the log). When the
    server has synchronous standbys (``synchronous_standby_names``), a
    ``sync`` commit returns once they confirm it; one they have not
    confirmed after ``commit_timeout`` seconds is cancelled and raises
    :class:`~motet.storage.errors.StandbyUnavailable` (``unavailable``): it
    is committed on the primary only and not acknowledged. Every call
    blocks on the network (``blocking``) and other processes may append to the
    same log (``shared``). Every failure of PostgreSQL or of the connection is
    raised as :class:`~motet.storage.errors.StorageError` naming what failed.
    """

    blocking = True
    shared = True

    def __init__(
        self,
        conninfo: str,
        *,
        durability: Durability = "sync",
        readers: int = 4,
        poll_interval: float = 1.0,
        partitions: int | None = None,
        commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
    ) -> None:
        if partitions is not None and (type(partitions) is not int or partitions < 1):
            raise ValueError(f"partitions must be an int >= 1, got {partitions!r}")
        if durability not in ("sync", "none"):
            raise ValueError(f"durability must be 'sync' or 'none', got {durability!r}")
        if readers < 1:
            raise ValueError(f"readers must be >= 1, got {readers!r}")
        self._conninfo = conninfo
        self._durability: Durability = durability
        self._commit_watch = CommitWatch(commit_timeout)
        self._poll_interval = poll_interval
        self._closed = False
        self._head = 0
        # Called once a batch is written and only COMMIT is left (see EventStore).
        self.before_commit: Callable[[], None] | None = None
        self._where = "PostgreSQL"
        self._notices: list[str] = []
        self._encode = msgspec.msgpack.Encoder().encode
        self._event_decoder = msgspec.msgpack.Decoder(StoredEvent)
        self._group_decoder = msgspec.msgpack.Decoder(GroupProgress)
        self._parked_decoder = msgspec.msgpack.Decoder(ParkedEvent)
        self._writer: _Connection | None = None
        self._listener: _Connection | None = None
        self._listener_lock = threading.Lock()
        self._listener_retry_at = 0.0
        self._partitions = partitions or DEFAULT_PARTITIONS
        self._asked_partitions = partitions
        # Set by the first lease call: from then on every append is fenced by
        # the epochs in _fence (partition -> epoch this node holds).
        self._node: str | None = None
        self._fence: dict[int, int] = {}
        self._leases: _Connection | None = None
        self._lease_lock = threading.Lock()
        writer = self._connect_writer()
        try:
            self._open_schema(writer)
            self._pool: ConnectionPool[_Connection] = ConnectionPool(
                conninfo,
                min_size=1,
                max_size=readers,
                kwargs={"autocommit": True, "application_name": "motet reader", **_CONNECT},
                configure=self._configure,
                check=_check_reader,
                timeout=10.0,
                name="motet-readers",
                open=False,
            )
            try:
                self._pool.open(wait=True, timeout=10.0)
                self._head = self._read(lambda conn: _one(conn.execute(sql.READ_HEAD)))
            except BaseException:
                self._pool.close()
                raise
        except psycopg.Error as exc:
            writer.close()
            self._writer = None
            raise StorageError(
                f"cannot open the reader connections to {self._where}: {exc}"
            ) from exc
        except BaseException:
            writer.close()
            self._writer = None
            raise

    # -- connections ------------------------------------------------------------

    def _configure(self, conn: _Connection, *, replicated: bool = False) -> None:
        """Set a connection's session. Only the writer's commits
        (``replicated``: the log, the command ids, deletions) wait for the
        synchronous standbys; the readers' and the lease connection's
        writes are flushed on the primary only (``local``), so a standby
        that is down cannot stall them: checkpoints, group progress and
        model keys are derived or redone after a failover, and a lease
        claimed or renewed on the primary only can fence off nothing that
        was acknowledged, since the standby confirms the WAL in order."""
        synchronous = "off" if self._durability == "none" else ("on" if replicated else "local")
        conn.execute(
            sql.CONFIGURE_SESSION, (synchronous, self._lock_timeout(), _IDLE_IN_TRANSACTION)
        )

    def _lock_timeout(self) -> str:
        """The session's ``lock_timeout``: another process's commit holds
        the head row lock while it waits for the synchronous standbys, up
        to the commit timeout, so a lock wait outlasts that (the waiter then
        fails naming the standby, as the holder did, not a lock timeout)."""
        return f"{max(_LOCK_TIMEOUT, self._commit_watch.timeout + 5.0):g}s"

    def _connect(self, role: str) -> _Connection:
        try:
            conn = psycopg.connect(
                self._conninfo, autocommit=True, application_name=f"motet {role}", **_CONNECT
            )
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to PostgreSQL for the {role}: {exc}") from exc
        if self._where == "PostgreSQL":
            info = conn.info
            self._where = f"database {info.dbname!r} on {info.host}:{info.port}"
        return conn

    def _connect_writer(self) -> _Connection:
        conn = self._connect("writer")
        try:
            self._configure(conn, replicated=True)
        except psycopg.Error as exc:
            conn.close()
            raise StorageError(f"cannot configure the writer connection: {exc}") from exc
        conn.add_notice_handler(self._on_notice)
        self._writer = conn
        return conn

    def _on_notice(self, notice: psycopg.errors.Diagnostic) -> None:
        # A Diagnostic is only readable during the callback: keep its text.
        self._notices.append(notice.message_primary or "")

    def _writer_connection(self) -> _Connection:
        """The writer connection, opened again when the last one was lost."""
        conn = self._writer
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._writer = None
            conn = self._connect_writer()
        return conn

    def _open_schema(self, conn: _Connection) -> None:
        """Create the tables in an empty schema, or check the format of ours
        (upgrading a /1 store in place); refuse anything else without
        changing it."""
        asked = self._partitions
        partitions = self._asked_partitions
        try:
            with conn.transaction():
                conn.execute(sql.LOCK_SCHEMA)
                schema = _one(conn.execute(sql.READ_SCHEMA))
                if schema is None:
                    raise StoreFormatError(
                        f"the connection to {self._where} has no current schema to hold "
                        "a Motet store (check search_path)"
                    )
                self._where += f", schema {schema!r}"
                present = {row[0] for row in conn.execute(sql.TABLES_PRESENT, (list(sql.TABLES),))}
                if not present:
                    for statement in [
                        *sql.CREATE_SCHEMA,
                        *sql.CREATE_LATER_TABLES,
                        *sql.PARTITION_TABLES,
                    ]:
                        conn.execute(statement)
                    conn.execute(sql.WRITE_FORMAT, (FORMAT,))
                    conn.execute(sql.WRITE_PARTITIONS, (asked,))
                    conn.execute(sql.CREATE_PARTITIONS, (asked,))
                else:
                    self._check_format(conn, present)
                    self._partitions = int(_one(conn.execute(sql.READ_PARTITIONS)))
                    if partitions is not None and partitions != self._partitions:
                        raise StoreFormatError(
                            f"{self._where} has {self._partitions} partitions, fixed when it "
                            f"was created; got partitions={partitions}"
                        )
                    if not present >= set(sql.LATER_TABLES):
                        for statement in sql.CREATE_LATER_TABLES:
                            conn.execute(statement)
                conn.execute(sql.CREATE_KEYS)
                _add_fingerprint_columns(conn)
                for statement in sql.CREATE_GROUP_TABLES:
                    conn.execute(statement)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open the store in {self._where}: {exc}") from exc

    def _check_format(self, conn: _Connection, present: set[str]) -> None:
        names = ", ".join(sorted(present))
        if "motet_meta" not in present:
            raise StoreFormatError(
                f"{self._where} holds tables named like Motet's ({names}) but no Motet "
                "format record: it is not a Motet store"
            )
        try:
            with conn.transaction():
                found = _one(conn.execute(sql.READ_FORMAT))
        except psycopg.Error as exc:
            raise StoreFormatError(
                f"{self._where} holds a table motet_meta that is not Motet's: {exc}"
            ) from exc
        if found == sql.UPGRADABLE_FORMAT and not present & {"motet_partitions", "motet_nodes"}:
            # /2 only adds tables, so a /1 store is upgraded where it stands,
            # in this transaction (under the schema lock). A /1 process still
            # running on it keeps appending unfenced: stop those first.
            for statement in sql.PARTITION_TABLES:
                conn.execute(statement)
            conn.execute(sql.WRITE_PARTITIONS, (self._partitions,))
            conn.execute(sql.CREATE_PARTITIONS, (self._partitions,))
            conn.execute(sql.UPGRADE_FORMAT, (FORMAT,))
            log.warning("upgraded the store in %s from %r to %r", self._where, found, FORMAT)
            return
        if found not in (FORMAT, sql.DELETIONS_FORMAT):
            raise StoreFormatError(
                f"{self._where} holds store format {found!r}; this version reads {FORMAT!r} "
                f"and {sql.DELETIONS_FORMAT!r} (and upgrades {sql.UPGRADABLE_FORMAT!r}) only"
            )
        missing = sorted(set(sql.TABLES) - set(sql.LATER_TABLES) - present)
        if missing:
            raise StoreFormatError(
                f"{self._where} is a Motet store with tables missing: {', '.join(missing)}"
            )

    def __repr__(self) -> str:
        if self._closed:
            return f"<PostgresStore {self._where} closed>"
        return f"<PostgresStore {self._where} head={self._head} durability={self._durability}>"

    @property
    def durability(self) -> Durability:
        """``"sync"`` or ``"none"`` (see the class docstring)."""
        return self._durability

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the store in {self._where} is closed")

    def _read(self, work: Callable[[_Connection], T], doing: str = "reading") -> T:
        """Run ``work`` on a reader connection; translate PostgreSQL's errors."""
        self._check_open()
        try:
            with self._pool.connection() as conn:
                return work(conn)
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL failed while {doing} in {self._where}: {exc}") from exc

    @property
    def head_position(self) -> int:
        """The last committed position, read from the database (other
        processes may have appended since this one did)."""
        head = int(self._read(lambda conn: _one(conn.execute(sql.READ_HEAD)), "reading the head"))
        self._head = max(self._head, head)
        return head

    # -- writes -------------------------------------------------------------------

    def append_batch(
        self,
        appends: Sequence[Append],
        timestamp: float,
        keys: Mapping[str, bytes | None] | None = None,
    ) -> list[Ack | AppendError]:
        """See :meth:`EventStore.append_batch`. An append whose command id
        already has an Ack (committed by another process) writes nothing and
        gets that Ack. Raises :class:`StorageError` when the batch did not
        commit, including when the connection dropped during COMMIT and the
        batch's first event is not in the log, and when the commit was cut
        short waiting for a synchronous standby."""
        self._check_open()
        if not appends:
            if keys:
                self.put_keys(keys)
            return []

        def write(
            conn: _Connection,
        ) -> tuple[list[Ack | AppendError], tuple[int, bytes] | None, int]:
            written = self._write_batch(conn, appends, timestamp, keys)
            if self.before_commit is not None:
                self.before_commit()
            return written

        results, _, new_head = self._commit(
            write,
            lambda written: written[1],
            doing=f"appending {len(appends)} appends",
            committing=f"{len(appends)} appends",
        )
        self._head = max(self._head, new_head)
        return results

    def _commit(
        self,
        write: Callable[[_Connection], T],
        first_of: Callable[[T], tuple[int, bytes] | None],
        *,
        doing: str,
        committing: str,
    ) -> T:
        """Run ``write`` (every statement of one transaction but the COMMIT)
        on the writer connection, then COMMIT it; ``first_of`` picks the first
        planned event (position, envelope) out of what ``write`` returned. A
        connection dropped during COMMIT is resolved by reading that event,
        never by guessing; a commit cut short waiting for a synchronous
        standby is refused (:meth:`_refuse_unreplicated`)."""
        conn = self._writer_connection()
        self._notices.clear()
        try:
            written = write(conn)
        except psycopg.Error as exc:
            self._abandon(conn)
            raise StorageError(
                f"PostgreSQL failed while {doing} in {self._where}; nothing was committed: {exc}"
            ) from exc
        except BaseException:
            self._abandon(conn)
            raise
        try:
            self._send_commit(conn)
        except psycopg.Error as exc:
            if not (conn.closed or conn.broken):
                # The server answered: the transaction was rolled back.
                self._abandon(conn)
                raise StorageError(
                    f"PostgreSQL refused to commit {committing} in {self._where}: {exc}"
                ) from exc
            self._resolve_lost_commit(first_of(written), exc)
        self._refuse_unreplicated()
        return written

    def _write_batch(
        self,
        conn: _Connection,
        appends: Sequence[Append],
        timestamp: float,
        keys: Mapping[str, bytes | None] | None = None,
    ) -> tuple[list[Ack | AppendError], tuple[int, bytes] | None, int]:
        """Every statement of one append transaction but the COMMIT; returns the
        results, the first planned event (position, envelope) and the new head."""
        command_ids = [
            a.metadata.command_id for a in appends if a.metadata.command_id is not None and a.events
        ]
        fenced = self._node is not None
        # Every statement up to the COPY in one round trip (pipeline mode):
        # the server still runs them one after the other, each after the head
        # lock is taken, so each reads what the writers before committed. The
        # fences and versions are read for every append of the batch (those
        # whose command id turns out recorded are not written anyway).
        with conn.pipeline():
            conn.execute(sql.BEGIN, prepare=False)
            head_rows = conn.execute(sql.LOCK_HEAD)
            if keys:
                _write_keys(conn, keys)
            ack_rows = (
                conn.execute(sql.FIND_ACKS, (command_ids,), binary=True) if command_ids else None
            )
            fence_rows = self._read_fences(conn, appends) if fenced else None
            version_rows = conn.execute(
                sql.READ_STREAM_VERSIONS, (sorted({a.stream for a in appends}),)
            )
        head = int(_one(head_rows))
        recorded: dict[str, AckRecord] = (
            {} if ack_rows is None else {row[0]: _ack_record(row[1:]) for row in ack_rows}
        )
        fresh = [
            a
            for a in appends
            if not (
                a.events and a.metadata.command_id is not None and a.metadata.command_id in recorded
            )
        ]
        refused = self._fenced_off(fence_rows, fresh) if fence_rows is not None and fresh else {}
        if refused:
            fresh = [a for a in fresh if id(a) not in refused]
        versions: dict[str, int] = {}
        deleted: set[str] = set()
        for stream, version, is_deleted in version_rows:
            versions[stream] = version or 0
            if is_deleted:
                deleted.add(stream)
        plan = plan_appends(
            fresh, head, timestamp, versions.__getitem__, deleted_of=deleted.__contains__
        )
        planned, records, new_head = plan.results, plan.records, plan.head

        envelopes = self._copy_events(conn, records)
        snapshots: dict[str, Snapshot] = {}
        for append, result in zip(fresh, planned, strict=True):
            if not isinstance(result, Ack):  # refused alone (a conflict, a bad key)
                continue
            if append.snapshot is not None:
                snapshots[append.stream] = append.snapshot
        if plan.acks:
            _copy(
                conn,
                sql.APPEND_ACKS,
                sql.APPEND_ACKS_TYPES,
                ((c, a.stream, a.version, a.position, a.type, a.digest) for c, a in plan.acks),
            )
        # The statements after the COPY in one round trip, as those before.
        with conn.pipeline():
            if snapshots:
                conn.execute(
                    sql.PUT_SNAPSHOTS,
                    (
                        list(snapshots),
                        [s.version for s in snapshots.values()],
                        [s.schema_version for s in snapshots.values()],
                        [s.state for s in snapshots.values()],
                    ),
                )
            if new_head != head:
                conn.execute(sql.SET_HEAD, (new_head,))
                conn.execute(sql.NOTIFY_COMMIT, (str(new_head),))

        results: list[Ack | AppendError] = []
        planned_iter = iter(planned)
        for append in appends:
            command_id = append.metadata.command_id
            if append.events and command_id is not None and command_id in recorded:
                results.append(_retry_of(recorded[command_id], append))
            elif id(append) in refused:
                results.append(refused[id(append)])
            else:
                results.append(next(planned_iter))
        first = (records[0].position, envelopes[0]) if records else None
        return results, first, new_head

    def append_recorded(
        self,
        records: Sequence[StoredEvent],
        *,
        removed: Sequence[tuple[int, int]] = (),
        deletions: Sequence[tuple[str, StreamDeletion]] = (),
    ) -> None:
        """See :meth:`EventStore.append_recorded`: one transaction under the
        head row lock, events by binary COPY."""
        self._check_open()
        if not (records or removed or deletions):
            return
        # Before any SQL: PostgreSQL refuses NUL in text with an error of its own.
        for record in records:
            check_stream_id(record.stream, "stream id")
            if record.metadata.command_id is not None:
                check_command_id(record.metadata.command_id)
        for stream, deletion in deletions:
            check_deletion(stream, deletion)
        _, head = self._commit(
            lambda conn: self._write_recorded(conn, records, removed, deletions),
            lambda written: written[0],
            doing=f"importing {len(records)} events",
            committing=f"{len(records)} imported events",
        )
        self._head = max(self._head, head)

    def _write_recorded(
        self,
        conn: _Connection,
        records: Sequence[StoredEvent],
        removed: Sequence[tuple[int, int]],
        deletions: Sequence[tuple[str, StreamDeletion]],
    ) -> tuple[tuple[int, bytes] | None, int]:
        """Every statement of one import transaction but the COMMIT; returns
        the first event (position, envelope) and the new head."""
        conn.execute(sql.BEGIN, prepare=False)
        head = int(_one(conn.execute(sql.LOCK_HEAD)))
        if deletions:
            conn.execute(sql.MARK_DELETIONS_FORMAT, (sql.DELETIONS_FORMAT, sql.DELETIONS_FORMAT))
            kept = [d for _, d in deletions]
            conn.execute(
                sql.PUT_DELETIONS,
                (
                    [stream for stream, _ in deletions],
                    [d.version for d in kept],
                    [d.deleted for d in kept],
                    [d.hard for d in kept],
                    [d.removed_through for d in kept],
                    [d.removed for d in kept],
                    [d.deleted_at for d in kept],
                ),
            )
        stream_ids = sorted({r.stream for r in records})
        versions: dict[str, int] = {}
        for stream, version in conn.execute(sql.READ_RECORDED_VERSIONS, (stream_ids,)):
            versions[stream] = version or 0
        command_ids = sorted(
            {r.metadata.command_id for r in records if r.metadata.command_id is not None}
        )
        recorded = _find_acks(conn, command_ids)
        plan = plan_recorded(records, head, versions.__getitem__, recorded.get, removed)
        envelopes = self._copy_events(conn, records)
        if plan.acks:
            conn.execute(
                sql.PUT_RECORDED_ACKS,
                (
                    [c for c, _ in plan.acks],
                    [a.stream for _, a in plan.acks],
                    [a.version for _, a in plan.acks],
                    [a.position for _, a in plan.acks],
                ),
            )
        if plan.removed:
            conn.execute(sql.MARK_DELETIONS_FORMAT, (sql.DELETIONS_FORMAT, sql.DELETIONS_FORMAT))
            conn.execute(
                sql.ADD_REMOVED_RUNS,
                ([first for first, _ in plan.removed], [last for _, last in plan.removed]),
            )
        if plan.head != head:
            conn.execute(sql.SET_HEAD, (plan.head,))
            conn.execute(sql.NOTIFY_COMMIT, (str(plan.head),))
        first = (records[0].position, envelopes[0]) if records else None
        return first, plan.head

    def _copy_events(self, conn: _Connection, records: Sequence[StoredEvent]) -> list[bytes]:
        """Write ``records`` by one binary COPY (never a loop of INSERTs);
        returns their envelopes."""
        encode = self._encode
        envelopes = [encode(r) for r in records]
        if records:
            _copy(
                conn,
                sql.APPEND_EVENTS,
                sql.APPEND_EVENTS_TYPES,
                zip(
                    [r.position for r in records],
                    [r.stream for r in records],
                    [r.version for r in records],
                    envelopes,
                    strict=True,
                ),
            )
        return envelopes

    def _read_fences(self, conn: _Connection, appends: Sequence[Append]) -> psycopg.Cursor[Any]:
        """Read (under the head lock) the owner and epoch of the partitions of
        the fenced ones of ``appends``; :meth:`_fenced_off` reads the rows."""
        count = self._partitions
        partitions = sorted({partition_of(a.stream, count) for a in appends if a.fenced})
        return conn.execute(sql.READ_FENCES, (partitions,))

    def _fenced_off(
        self, fences: Iterable[tuple[int, str | None, int]], appends: Sequence[Append]
    ) -> dict[int, NotOwner]:
        """The appends (by ``id``) of partitions this node does not hold at
        the epoch the database has (``fences``: the rows of
        :meth:`_read_fences`): read under the head lock, which every claim
        takes too, so the answer holds until this transaction ends."""
        count = self._partitions
        fence = self._fence
        appends = [a for a in appends if a.fenced]
        partition_of_stream = {a.stream: partition_of(a.stream, count) for a in appends}
        current = {partition: (owner, epoch) for partition, owner, epoch in fences}
        refused: dict[int, NotOwner] = {}
        for append in appends:
            partition = partition_of_stream[append.stream]
            owner, epoch = current.get(partition, (None, 0))
            held = fence.get(partition)
            if owner == self._node and held is not None and held == epoch:
                continue
            if held is None:
                why = "this node holds no lease on it"
            else:
                why = f"this node's lease (epoch {held}) was taken over (epoch {epoch}"
                why += f", owner {owner!r})" if owner else ", now free)"
            refused[id(append)] = NotOwner(
                f"stream {append.stream!r} is in partition {partition} and {why}: "
                "nothing was written; retry on any node"
            )
        return refused

    # -- partitions and leases ----------------------------------------------------

    @property
    def partitions(self) -> int:
        """How many partitions the store's streams are split into (fixed
        when it was created; see :func:`~motet.storage.partitions.partition_of`)."""
        return self._partitions

    @property
    def held(self) -> dict[int, int]:
        """The leases this handle holds as a node: partition → epoch (a copy)."""
        return dict(self._fence)

    def _lease_call(self, work: Callable[[_Connection], T], doing: str) -> T:
        """Run ``work`` in one transaction on the lease connection: a
        connection of its own (not the writer's, which the writer thread uses
        meanwhile, nor a reader's, which busy reads could hold past a lease's
        expiry). A connection found lost is replaced and ``work`` run once
        more: every lease call may run twice (a claim repeated takes the
        same leases at a newer epoch). One caller at a time."""
        self._check_open()
        with self._lease_lock:
            for attempt in (1, 2):
                try:
                    conn = self._lease_connection()
                    with conn.transaction():
                        return work(conn)
                except psycopg.Error as exc:
                    lost = self._leases is None or self._leases.closed or self._leases.broken
                    if not lost or attempt == 2:
                        raise StorageError(
                            f"PostgreSQL failed while {doing} in {self._where}: {exc}"
                        ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _lease_connection(self) -> _Connection:
        conn = self._leases
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._leases = None
            conn = self._connect("leases")
            try:
                self._configure(conn)
            except BaseException:
                conn.close()
                raise
            self._leases = conn
        return conn

    def _as_node(self, node: str) -> None:
        if not isinstance(node, str) or not node:
            raise ValueError(f"node must be a non-empty node id, got {node!r}")
        if self._node is None:
            self._node = node
        elif self._node != node:
            raise ValueError(f"this store handle is node {self._node!r}, not {node!r}")

    def heartbeat(self, node: str, address: str, role: str, ttl: float) -> LeaseView:
        """Record that ``node`` (advertising ``address``, in ``role``) is live
        for ``ttl`` more seconds, renew the leases it holds for as long, and
        return what it sees: the leases it still holds (one taken over by
        another node is dropped from the fence at once), the live nodes and
        every partition's lease. From the first call on, this handle's
        appends are fenced. Raises :class:`StorageError`."""
        self._as_node(node)
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        fence = dict(self._fence)

        def beat(conn: _Connection) -> LeaseView:
            conn.execute(sql.HEARTBEAT_NODE, (node, address, role, ttl))
            renewed: dict[int, int] = dict(
                conn.execute(sql.RENEW_LEASES, (ttl, list(fence), list(fence.values()), node))
            )
            nodes = [NodeInfo(*row) for row in conn.execute(sql.READ_NODES)]
            leases = [Lease(*row) for row in conn.execute(sql.READ_LEASES)]
            return LeaseView(renewed, nodes, leases)

        view = self._lease_call(beat, f"renewing the leases of node {node!r}")
        # Only the leases lost meanwhile leave the fence: one claimed while
        # this call ran stays.
        lost = set(fence) - set(view.held)
        if lost:
            self._fence = {p: e for p, e in self._fence.items() if p not in lost}
        return view

    def claim(self, node: str, partitions: Sequence[int], ttl: float) -> dict[int, int]:
        """Take the leases of those of ``partitions`` that are free, expired
        or this node's own (an earlier process with the same id, which the new
        epoch fences off), for ``ttl`` seconds, bumping each one's epoch; return partition →
        new epoch for those taken (they join the fence). Runs under the head
        lock: it waits for the append transaction in flight. Raises
        :class:`StorageError`."""
        self._as_node(node)
        wanted = sorted(set(partitions))
        if not wanted:
            return {}

        def take(conn: _Connection) -> dict[int, int]:
            conn.execute(sql.LOCK_HEAD)
            return dict(
                conn.execute(sql.CLAIM_LEASES, {"node": node, "ttl": ttl, "partitions": wanted})
            )

        taken = self._lease_call(take, f"claiming partitions for node {node!r}")
        if taken:
            self._fence = {**self._fence, **taken}
        return taken

    def release(self, node: str, partitions: Sequence[int]) -> None:
        """Hand back the leases of ``partitions`` this node holds: they leave
        the fence first (no append of theirs commits from now on), then are
        freed, under the head lock, for another node to claim at once.
        Raises :class:`StorageError` (the leases then expire instead)."""
        self._as_node(node)
        giving = {p: e for p, e in self._fence.items() if p in set(partitions)}
        if not giving:
            return
        self._fence = {p: e for p, e in self._fence.items() if p not in giving}

        def free(conn: _Connection) -> None:
            conn.execute(sql.LOCK_HEAD)
            conn.execute(sql.RELEASE_LEASES, (list(giving), list(giving.values()), node))

        self._lease_call(free, f"releasing partitions of node {node!r}")

    def leave(self, node: str) -> None:
        """Release every lease this node holds and remove its heartbeat, so
        the others rebalance at once instead of waiting for expiry. Raises
        :class:`StorageError`."""
        self._as_node(node)
        self.release(node, list(self._fence))
        self._lease_call(lambda conn: conn.execute(sql.LEAVE_NODE, (node,)), "leaving")

    def _abandon(self, conn: _Connection) -> None:
        """Roll back what the writer connection holds; drop it when it is broken."""
        if conn.closed or conn.broken:
            conn.close()
            self._writer = None
            return
        try:
            conn.execute(sql.ROLLBACK, prepare=False)
        except psycopg.Error:
            conn.close()
            self._writer = None

    def _resolve_lost_commit(self, first: tuple[int, bytes] | None, exc: psycopg.Error) -> None:
        """The connection dropped during COMMIT, so the outcome is unknown:
        read the log on another connection. Returns when the batch committed;
        raises :class:`StorageError` when it did not or cannot be told."""
        if self._writer is not None:
            self._abandon(self._writer)
        self._refuse_unreplicated()
        if first is None:
            raise StorageError(
                f"the connection to {self._where} dropped during COMMIT of a batch without "
                f"events; its snapshots may or may not be saved: {exc}"
            ) from exc
        position, envelope = first
        try:
            found = self._read(
                lambda conn: _one_or_none(conn.execute(sql.FIND_EVENT, (position,), binary=True)),
                f"checking whether the commit of position {position} happened",
            )
        except StorageError as unknown:
            raise StorageError(
                f"the connection to {self._where} dropped during COMMIT and the log cannot be "
                f"read to tell whether the batch from position {position} committed: {unknown}"
            ) from exc
        if found is None or bytes(found) != envelope:
            raise StorageError(
                f"the connection to {self._where} dropped during COMMIT; the batch from "
                f"position {position} was not committed: {exc}"
            ) from exc

    def _send_commit(self, conn: _Connection) -> None:
        """COMMIT on the writer connection, cancelled if it still waits for
        the synchronous standbys after ``commit_timeout`` seconds (the
        server then answers with the WARNING :meth:`_refuse_unreplicated`
        looks for)."""
        with self._commit_watch.watching(lambda: self._cancel(conn)):
            conn.execute(sql.COMMIT, prepare=False)

    def _cancel(self, conn: _Connection) -> None:
        try:
            conn.cancel_safe(timeout=5.0)
        except psycopg.Error as exc:
            # The COMMIT waits on; keepalives end it if the server is gone.
            log.warning("cannot cancel a COMMIT waiting for the synchronous standby: %s", exc)

    def _refuse_unreplicated(self) -> None:
        """PostgreSQL reports a commit whose wait for a synchronous standby was
        cancelled as a WARNING and still says COMMIT: it is durable on the
        primary only, so it is not acknowledged."""
        for message in self._notices:
            if "synchronous replication" in message:
                self._notices.clear()
                raise StandbyUnavailable(
                    f"the commit in {self._where} was not confirmed by the synchronous "
                    f"standby within the commit timeout of {self._commit_watch.timeout:g} s "
                    f"({message}): it is committed on the primary only and is not "
                    "acknowledged; check the standby, then retry with the same command id"
                )

    # -- deletion and retention ------------------------------------------------------

    def _in_head_lock(self, work: Callable[[_Connection], T], doing: str) -> T:
        """Run ``work`` in one transaction on the writer connection, after
        taking the head row lock (so it never interleaves with an append of
        any process); commit it and notify, so waiting readers look again."""
        self._check_open()
        conn = self._writer_connection()
        self._notices.clear()
        try:
            conn.execute(sql.BEGIN, prepare=False)
            head = int(_one(conn.execute(sql.LOCK_HEAD)))
            result = work(conn)
            conn.execute(sql.NOTIFY_COMMIT, (str(head),))
            self._send_commit(conn)
        except psycopg.Error as exc:
            self._abandon(conn)
            raise StorageError(
                f"PostgreSQL failed while {doing} in {self._where}; nothing was changed "
                f"(unless the connection dropped during COMMIT: read it back): {exc}"
            ) from exc
        except BaseException:
            self._abandon(conn)
            raise
        self._refuse_unreplicated()
        return result

    def _remove(self, conn: _Connection, stream: str, through: int) -> int:
        positions = [
            position for (position,) in conn.execute(sql.DELETE_STREAM_EVENTS, (stream, through))
        ]
        runs = position_runs(positions)
        if runs:
            conn.execute(
                sql.ADD_REMOVED_RUNS, ([first for first, _ in runs], [last for _, last in runs])
            )
        return len(positions)

    @staticmethod
    def _deletion_row(conn: _Connection, stream: str) -> StreamDeletion | None:
        row = conn.execute(sql.READ_DELETION, (stream,)).fetchone()
        return None if row is None else StreamDeletion(*row)

    def _put_deletion(self, conn: _Connection, stream: str, record: StreamDeletion) -> None:
        conn.execute(sql.MARK_DELETIONS_FORMAT, (sql.DELETIONS_FORMAT, sql.DELETIONS_FORMAT))
        conn.execute(
            sql.PUT_DELETION,
            (
                stream,
                record.version,
                record.deleted,
                record.hard,
                record.removed_through,
                record.removed,
                record.deleted_at,
            ),
        )

    def delete_stream(self, stream: str, *, hard: bool, timestamp: float) -> StreamDeletion:
        """See :meth:`EventStore.delete_stream`."""

        def delete(conn: _Connection) -> StreamDeletion:
            earlier = self._deletion_row(conn, stream)
            version = int(_one(conn.execute(sql.READ_STREAM_VERSION, (stream, stream))) or 0)
            removed = self._remove(conn, stream, version) if hard else 0
            record = deletion_after(
                stream, earlier, version, removed, hard=hard, timestamp=timestamp
            )
            if hard:
                conn.execute(sql.DELETE_SNAPSHOT, (stream,))
            self._put_deletion(conn, stream, record)
            return record

        return self._in_head_lock(delete, f"deleting stream {stream!r}")

    def truncate_stream(self, stream: str, through_version: int) -> int:
        """See :meth:`EventStore.truncate_stream`."""

        def truncate(conn: _Connection) -> int:
            earlier = self._deletion_row(conn, stream)
            version = int(_one(conn.execute(sql.READ_STREAM_VERSION, (stream, stream))) or 0)
            through = min(max(through_version, 0), version)
            removed = self._remove(conn, stream, through)
            if removed:
                record = truncation_after(earlier, version, through, removed)
                self._put_deletion(conn, stream, record)
            return removed

        return self._in_head_lock(truncate, f"removing old events of stream {stream!r}")

    def stream_deletion(self, stream: str) -> StreamDeletion | None:
        """See :meth:`EventStore.stream_deletion`."""
        return self._read(
            lambda conn: self._deletion_row(conn, stream),
            f"reading the deletion record of stream {stream!r}",
        )

    def removed_runs(self) -> list[tuple[int, int]]:
        """See :meth:`EventStore.removed_runs` (runs recorded by separate
        deletions are merged here)."""
        rows = self._read(
            lambda conn: conn.execute(sql.READ_REMOVED_RUNS).fetchall(), "reading removed runs"
        )
        runs: list[tuple[int, int]] = []
        for first, last in rows:
            if runs and runs[-1][1] == first - 1:
                runs[-1] = (runs[-1][0], last)
            else:
                runs.append((first, last))
        return runs

    def stream_deletions(
        self, after: str = "", limit: int = 1000
    ) -> list[tuple[str, StreamDeletion]]:
        """See :meth:`EventStore.stream_deletions`."""
        if limit < 1:
            return []
        rows = self._read(
            lambda conn: conn.execute(sql.READ_DELETIONS_AFTER, (after, limit)).fetchall(),
            "reading deletion records",
        )
        return [(stream, StreamDeletion(*values)) for stream, *values in rows]

    def put_keys(self, keys: Mapping[str, bytes | None]) -> None:
        def put(conn: _Connection) -> None:
            with conn.transaction():
                _write_keys(conn, keys)

        self._read(put, "writing keys")

    def get_key(self, subject: str) -> bytes | None:
        found = self._read(
            lambda conn: _one_or_none(conn.execute(sql.READ_KEY, (subject,), binary=True)),
            f"reading the key of subject {subject!r}",
        )
        return None if found is None else bytes(found)

    def get_keys(self, subjects: Sequence[str]) -> dict[str, bytes]:
        """See :meth:`EventStore.get_keys`: one statement."""
        if not subjects:
            self._check_open()
            return {}
        wanted = list(subjects)
        rows = self._read(
            lambda conn: conn.execute(sql.READ_KEYS, (wanted,), binary=True).fetchall(),
            f"reading the keys of {len(wanted)} subjects",
        )
        return {subject: bytes(record) for subject, record in rows}

    def put_checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        def put(conn: _Connection) -> None:
            conn.execute(
                sql.PUT_CHECKPOINT,
                (name, checkpoint.position, checkpoint.schema_version, checkpoint.model),
            )

        self._read(put, f"saving checkpoint {name!r}")

    # -- reads ----------------------------------------------------------------------

    def _decode(self, envelope: bytes, which: str) -> StoredEvent:
        try:
            return self._event_decoder.decode(envelope)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CodecError(
                f"the log record {which} in {self._where} is corrupt and cannot be read: {exc}"
            ) from exc

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """See :meth:`EventStore.read_all`. A record that does not decode ends
        the batch: the events before it are returned, and the call that starts
        with it raises :class:`CodecError` naming its position."""
        if limit <= 0:
            self._check_open()
            return []
        after = max(after_position, 0)
        rows = self._read(
            lambda conn: conn.execute(sql.READ_ALL, (after, limit), binary=True).fetchall(),
            f"reading the log after position {after}",
        )
        events: list[StoredEvent] = []
        decode = self._event_decoder.decode
        for position, envelope in rows:
            try:
                events.append(decode(envelope))
            except (msgspec.DecodeError, msgspec.ValidationError):
                if events:
                    break
                try:
                    self._decode(envelope, f"at position {position}")
                except CodecError as exc:
                    exc.position = position
                    raise
        return events

    def read_stream(
        self, stream: str, after_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        if limit is not None and limit <= 0:
            self._check_open()
            return []
        after = max(after_version, 0)

        def read(conn: _Connection) -> list[Any]:
            if limit is None:
                return conn.execute(sql.READ_STREAM, (stream, after), binary=True).fetchall()
            return conn.execute(
                sql.READ_STREAM_LIMITED, (stream, after, limit), binary=True
            ).fetchall()

        rows = self._read(read, f"reading stream {stream!r}")
        return [
            self._decode(envelope, f"of stream {stream!r} at version {after + i + 1}")
            for i, (envelope,) in enumerate(rows)
        ]

    def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        if limit <= 0:
            self._check_open()
            return []
        after = max(after_position, 0)
        rows = self._read(
            lambda conn: conn.execute(
                sql.READ_CATEGORY, (category, after, limit), binary=True
            ).fetchall(),
            f"reading category {category!r} after position {after}",
        )
        return [self._decode(envelope, f"of category {category!r}") for (envelope,) in rows]

    def stream_version(self, stream: str) -> int:
        found = self._read(
            lambda conn: _one_or_none(conn.execute(sql.READ_STREAM_VERSION, (stream, stream))),
            f"reading the version of stream {stream!r}",
        )
        return 0 if found is None else int(found)

    def streams(self) -> list[tuple[str, int]]:
        rows = self._read(lambda conn: conn.execute(sql.READ_STREAMS).fetchall(), "listing streams")
        return [(stream, int(version)) for stream, version in rows]

    def load_snapshot(self, stream: str) -> Snapshot | None:
        row = self._read(
            lambda conn: conn.execute(sql.READ_SNAPSHOT, (stream,), binary=True).fetchone(),
            f"loading the snapshot of stream {stream!r}",
        )
        return None if row is None else Snapshot(row[0], row[1], bytes(row[2]))

    def get_ack(self, command_id: str) -> Ack | None:
        row = self._read(
            lambda conn: conn.execute(sql.READ_ACK, (command_id,), binary=True).fetchone(),
            f"reading the Ack of command id {command_id!r}",
        )
        return None if row is None else Ack(row[0], row[1], row[2])

    def get_ack_record(self, command_id: str) -> AckRecord | None:
        """The Ack recorded for ``command_id`` with the fingerprint of the
        command that earned it (see :mod:`motet.storage.idempotency`), to
        answer a retry with. In ``sync`` durability a record found is
        returned only once the synchronous standbys (if the server names
        any) have its commit: it may come from a commit refused with
        :class:`~motet.storage.errors.StandbyUnavailable`, which this then
        raises again while they cannot confirm it."""
        row = self._read(
            lambda conn: conn.execute(sql.READ_ACK, (command_id,), binary=True).fetchone(),
            f"reading the Ack of command id {command_id!r}",
        )
        if row is None:
            return None
        if self._durability == "sync":
            self._confirm_replicated(f"the Ack of command id {command_id!r}")
        return _ack_record(row)

    def _confirm_replicated(self, what: str) -> None:
        """Return once the synchronous standbys have every commit made so
        far (:data:`~motet.storage.postgres_sql.CONFIRM_REPLICATED`, on a
        reader connection, under the commit watch); raise
        :class:`StandbyUnavailable` naming ``what`` when they do not within
        the commit timeout."""
        notices: list[str] = []

        def on_notice(notice: psycopg.errors.Diagnostic) -> None:
            notices.append(notice.message_primary or "")

        def confirm(conn: _Connection) -> None:
            conn.add_notice_handler(on_notice)
            try:
                with self._commit_watch.watching(lambda: self._cancel(conn)):
                    conn.execute(sql.CONFIRM_REPLICATED)
            finally:
                conn.remove_notice_handler(on_notice)

        self._read(confirm, f"waiting for the synchronous standby to confirm {what}")
        for message in notices:
            if "synchronous replication" in message:
                raise StandbyUnavailable(
                    f"{what} in {self._where} is not confirmed by the synchronous standby "
                    f"within the commit timeout of {self._commit_watch.timeout:g} s "
                    f"({message}): it is not acknowledged yet; check the standby, then retry"
                )

    def get_checkpoint(self, name: str) -> Checkpoint | None:
        row = self._read(
            lambda conn: conn.execute(sql.READ_CHECKPOINT, (name,), binary=True).fetchone(),
            f"reading checkpoint {name!r}",
        )
        if row is None:
            return None
        return Checkpoint(row[0], row[1], None if row[2] is None else bytes(row[2]))

    def checkpoint_names(self) -> list[str]:
        """Names of the projections that saved a checkpoint, sorted."""
        rows = self._read(
            lambda conn: conn.execute(sql.READ_CHECKPOINT_NAMES).fetchall(),
            "listing checkpoints",
        )
        return [name for (name,) in rows]

    # -- consumer groups ------------------------------------------------------------

    def get_group(self, name: str) -> GroupProgress | None:
        row = self._read(
            lambda conn: conn.execute(sql.READ_GROUP, (name,), binary=True).fetchone(),
            f"reading the progress of group {name!r}",
        )
        if row is None:
            return None
        try:
            return self._group_decoder.decode(row[0])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CodecError(
                f"the progress of group {name!r} in {self._where} is corrupt: {exc}"
            ) from exc

    def put_group(self, name: str, progress: GroupProgress) -> None:
        check_group_name(name)
        value = self._encode(progress)
        self._read(
            lambda conn: conn.execute(sql.PUT_GROUP, (name, value)),
            f"saving the progress of group {name!r}",
        )

    def group_names(self) -> list[str]:
        rows = self._read(
            lambda conn: conn.execute(sql.READ_GROUP_NAMES).fetchall(), "listing groups"
        )
        return [name for (name,) in rows]

    def park(self, name: str, event: ParkedEvent) -> None:
        check_group_name(name)
        value = self._encode(event)
        self._read(
            lambda conn: conn.execute(sql.PUT_PARKED, (name, event.position, value)),
            f"parking position {event.position} of group {name!r}",
        )

    def parked(self, name: str) -> list[ParkedEvent]:
        rows = self._read(
            lambda conn: conn.execute(sql.READ_PARKED, (name,), binary=True).fetchall(),
            f"reading the parked events of group {name!r}",
        )
        try:
            return [self._parked_decoder.decode(row[0]) for row in rows]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CodecError(
                f"a parked event of group {name!r} in {self._where} is corrupt: {exc}"
            ) from exc

    def unpark(self, name: str, position: int) -> bool:
        deleted = self._read(
            lambda conn: conn.execute(sql.DELETE_PARKED, (name, position)).rowcount,
            f"unparking position {position} of group {name!r}",
        )
        return bool(deleted)

    # -- waiting for other processes' commits ------------------------------------------

    def wait_for_commit(self, after_position: int, timeout: float) -> int:
        """Block until the head is past ``after_position`` or ``timeout``
        seconds have passed; return the head.

        Woken by the NOTIFY every append transaction sends at COMMIT, on a
        dedicated LISTEN connection; the head is also polled every
        ``poll_interval`` seconds, so a lost LISTEN connection (reopened on a
        later call) delays a wake-up but never stalls the caller past its
        timeout. Meant for a worker thread; raises :class:`StorageError` when
        the head cannot be read.
        """
        if self._closed:
            return self._head
        deadline = time.monotonic() + max(timeout, 0.0)
        # LISTEN before reading the head: a commit between the two is then
        # already queued on the listener and wakes the first wait at once.
        self._ensure_listener()
        head = self.head_position
        while head <= after_position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wait_for_notification(min(remaining, self._poll_interval))
            if self._closed:  # closed by another thread meanwhile
                return self._head
            head = self.head_position
        return head

    def _ensure_listener(self) -> None:
        if self._listener is not None or time.monotonic() < self._listener_retry_at:
            return
        with self._listener_lock:
            # A waiter in a worker thread may outlive close(): it must not
            # open a connection that nothing would close.
            if self._listener is not None or self._closed:
                return
            conn: _Connection | None = None
            try:
                conn = psycopg.connect(
                    self._conninfo, autocommit=True, application_name="motet listener", **_CONNECT
                )
                conn.execute(sql.LISTEN)
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                # Polling covers for it; try again after one poll interval.
                self._listener_retry_at = time.monotonic() + self._poll_interval
                return
            self._listener = conn

    def _wait_for_notification(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a commit notification (or just sleep
        when there is no listener, or another thread is using it)."""
        started = time.monotonic()
        self._ensure_listener()
        if self._listener is not None and self._listener_lock.acquire(timeout=seconds):
            try:
                conn = self._listener
                if conn is not None:
                    left = max(seconds - (time.monotonic() - started), 0.0)
                    try:
                        for _ in conn.notifies(timeout=left, stop_after=1):
                            pass
                        # Drain what else is queued: one wake-up covers them all.
                        for _ in conn.notifies(timeout=0):
                            pass
                        return
                    except psycopg.Error:
                        conn.close()
                        self._listener = None
                        self._listener_retry_at = time.monotonic() + self._poll_interval
            finally:
                self._listener_lock.release()
        left = seconds - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)

    def close(self) -> None:
        """Close every connection; later calls raise :class:`StorageError`.
        Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._commit_watch.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        with self._listener_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        with self._lease_lock:
            if self._leases is not None:
                self._leases.close()
                self._leases = None
        self._pool.close()


def _check_reader(conn: _Connection) -> None:
    """The pool's check of a reader connection before lending it, without a
    round trip for one that is evidently working: an idle connection has
    nothing to read, so one the server wrote to meanwhile (the notice that
    it was terminated, a closed socket) or one found closed is checked by a
    round trip (``ConnectionPool.check_connection``, which raises for a dead
    one), and the others are lent at once. A round trip per lending would
    double the round trips of every read."""
    if not (conn.closed or conn.broken):
        poller = select.poll()  # not select(): descriptors may be past 1023
        poller.register(conn.fileno(), select.POLLIN)
        if not poller.poll(0):
            return
    ConnectionPool.check_connection(conn)


def _copy(
    conn: _Connection, statement: str, types: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Send ``rows`` with one binary ``COPY ... FROM STDIN`` statement."""
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _ack_record(row: Sequence[Any]) -> AckRecord:
    """An :class:`AckRecord` from a row (stream, version, position, type, digest)."""
    stream, version, position, type_, digest = row
    return AckRecord(stream, version, position, type_, None if digest is None else bytes(digest))


def _find_acks(conn: _Connection, command_ids: Sequence[str]) -> dict[str, AckRecord]:
    """The records already kept for ``command_ids`` (FIND_ACKS), by command id."""
    if not command_ids:
        return {}
    rows = conn.execute(sql.FIND_ACKS, (list(command_ids),), binary=True)
    return {row[0]: _ack_record(row[1:]) for row in rows}


def _retry_of(first: AckRecord, append: Append) -> Ack | CommandIdReused:
    """The answer to ``append``, whose command id already has ``first``:
    the first Ack when it is the same command, else the refusal."""
    command_id = append.metadata.command_id
    assert command_id is not None
    try:
        return retried_ack(command_id, first, None, append.stream, append.fingerprint)
    except CommandIdReused as exc:
        return exc


def _add_fingerprint_columns(conn: _Connection) -> None:
    """Give a store made before command fingerprints their columns (see
    :data:`~motet.storage.postgres_sql.ADD_FINGERPRINT_COLUMNS`)."""
    columns = {name for (name,) in conn.execute(sql.COMMAND_COLUMNS)}
    if "digest" not in columns:
        conn.execute(sql.ADD_FINGERPRINT_COLUMNS)
        log.info("added the command fingerprint columns to motet_commands")


def _write_keys(conn: _Connection, keys: Mapping[str, bytes | None]) -> None:
    """Delete the keys mapped to ``None``, then write the others (one statement each)."""
    deleted = [subject for subject, record in keys.items() if record is None]
    if deleted:
        conn.execute(sql.DELETE_KEYS, (deleted,))
    written = [(subject, record) for subject, record in keys.items() if record is not None]
    if written:
        conn.execute(
            sql.PUT_KEYS, ([subject for subject, _ in written], [record for _, record in written])
        )


def _one(cursor: psycopg.Cursor[Any]) -> Any:
    """The single value of a statement that returns exactly one row."""
    row = cursor.fetchone()
    if row is None:
        raise StorageError("a statement that returns one row returned none")
    return row[0]


def _one_or_none(cursor: psycopg.Cursor[Any]) -> Any:
    row = cursor.fetchone()
    return None if row is None else row[0]
