"""PostgreSQL-specific behaviour of PostgresStore, against a real cluster:
the format record and what it refuses, connections killed during commits,
readers tailing concurrent writers, and waiting for other processes' commits.

The storage contract itself runs on PostgreSQL through ``store_factory``.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from motet.storage import Ack, Append, Metadata, NewEvent, StorageError, StoreFormatError
from motet.storage.errors import CommandIdReused
from motet.storage.idempotency import AckRecord
from motet.storage.postgres_sql import FORMAT, GROUP_TABLES, TABLES
from motet.storage.postgres_store import PostgresStore, is_postgres_url
from motet.storage.records import CommandFingerprint
from tests.support.postgres import Cluster, new_schema_url

TS = 1_700_000_000.5


@pytest.fixture
def url(postgres_cluster: Cluster) -> str:
    """The URL of a fresh, empty schema."""
    return new_schema_url(postgres_cluster)


@pytest.fixture
def open_store(url: str) -> Iterator[Any]:
    """Opens PostgresStores on ``url`` (another URL may be given) and closes
    them all at teardown."""
    stores: list[PostgresStore] = []

    def open_(location: str = url, **options: Any) -> PostgresStore:
        store = PostgresStore(location, **options)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def schema_of(url: str) -> str:
    return url.rsplit("%3D", 1)[1]


def admin(cluster: Cluster, url: str) -> psycopg.Connection[Any]:
    """An autocommit superuser connection whose search_path is the schema of ``url``."""
    return psycopg.connect(url, autocommit=True)


def fingerprinted(append: Append, fingerprint: CommandFingerprint) -> Append:
    append.fingerprint = fingerprint
    return append


def command(stream: str, expected: int, n: int, command_id: str | None = None) -> Append:
    return Append(
        stream,
        expected,
        [NewEvent("Happened", 1, f"{stream}:{expected + i + 1}".encode()) for i in range(n)],
        Metadata(command_id=command_id),
    )


# -- the format record and what is refused --------------------------------------------


def format_of(conn: Any) -> str:
    value: str = conn.execute("SELECT value FROM motet_meta WHERE key = 'format'").fetchone()[0]
    return value


def test_a_store_made_before_subject_keys_gets_its_key_table_when_opened(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    open_store().close()
    with admin(postgres_cluster, url) as conn:
        conn.execute("DROP TABLE motet_keys")

    store = open_store()

    assert store.get_key("u1") is None
    store.put_keys({"u1": b"k1"})
    assert store.get_key("u1") == b"k1"


def test_a_store_made_before_fingerprints_gains_them_in_place_and_keeps_its_acks(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    first = CommandFingerprint("CreateUser", b"first-digest-16b")
    other = CommandFingerprint("CreateUser", b"other-digest-16b")
    old = open_store()
    (old_ack,) = old.append_batch([command("A", 0, 1, "old")], TS)
    old.close()
    with admin(postgres_cluster, url) as conn:
        # A store made before fingerprints: its command index has four columns.
        conn.execute("ALTER TABLE motet_commands DROP COLUMN type, DROP COLUMN digest")

    store = open_store()

    with admin(postgres_cluster, url) as conn:
        assert format_of(conn) == FORMAT
        assert conn.execute(
            "SELECT type, digest FROM motet_commands WHERE command_id = 'old'"
        ).fetchone() == (None, None)
    assert store.get_ack_record("old") == AckRecord("A", 1, 1)
    # An Ack without a fingerprint takes a retry on its stream, as it did.
    (retried,) = store.append_batch([fingerprinted(command("A", 1, 1, "old"), other)], TS)
    assert retried == old_ack
    # New Acks keep their fingerprints, and another command under their id is refused.
    (ack,) = store.append_batch([fingerprinted(command("B", 0, 1, "new"), first)], TS)
    (refused,) = store.append_batch([fingerprinted(command("B", 1, 1, "new"), other)], TS)
    assert ack == Ack("B", 1, 2)
    assert isinstance(refused, CommandIdReused)
    assert "got a CreateUser command with other data" in str(refused)
    assert store.head_position == 2


def test_a_new_schema_gets_our_tables_and_the_format_record(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    store = open_store()

    assert (store.blocking, store.shared, store.durability) == (True, True, "sync")
    with admin(postgres_cluster, url) as conn:
        assert conn.execute("SELECT value FROM motet_meta WHERE key = 'format'").fetchone() == (
            FORMAT,
        )
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema_of(url),)
            )
        }
    # motet_keys is made by every opening (older stores lack it), not by CREATE_SCHEMA.
    assert tables == {*TABLES, *GROUP_TABLES, "motet_keys"}
    assert FORMAT == "motet-postgres/2"
    assert "head=0" in repr(store) and "durability=sync" in repr(store)


def test_reopening_keeps_everything_and_continues_positions(open_store: Any) -> None:
    first = open_store()
    first.append_batch([command("A", 0, 2, "cmd-1")], TS)
    first.close()

    again = open_store()
    (result,) = again.append_batch([command("A", 2, 1)], TS)

    assert result == Ack("A", 3, 3)
    assert again.get_ack("cmd-1") == Ack("A", 2, 2)
    assert [e.position for e in again.read_all()] == [1, 2, 3]


def test_an_unknown_format_is_refused_and_left_alone(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    open_store().close()
    with admin(postgres_cluster, url) as conn:
        conn.execute("UPDATE motet_meta SET value = 'motet-postgres/99' WHERE key = 'format'")

    with pytest.raises(StoreFormatError, match=r"holds store format 'motet-postgres/99'; this"):
        PostgresStore(url)

    with admin(postgres_cluster, url) as conn:
        assert conn.execute("SELECT value FROM motet_meta WHERE key = 'format'").fetchall() == [
            ("motet-postgres/99",)
        ]


def test_the_first_deletion_marks_the_store_and_older_tables_are_added(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    first = open_store()
    first.append_batch([command("A", 0, 2), command("B", 0, 1)], TS)
    first.close()
    with admin(postgres_cluster, url) as conn:
        # A store made before deletions existed.
        conn.execute("DROP TABLE motet_deletions, motet_removed")

    store = open_store()
    assert store.truncate_stream("A", 0) == 0
    with admin(postgres_cluster, url) as conn:
        assert format_of(conn) == "motet-postgres/2"
    store.delete_stream("B", hard=True, timestamp=TS)
    store.close()

    with admin(postgres_cluster, url) as conn:
        assert format_of(conn) == "motet-postgres/3"
    again = open_store()
    assert again.stream_deletion("B") is not None
    assert again.removed_runs() == [(3, 3)]


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("CREATE TABLE motet_events (id int)", r"tables named like Motet's \(motet_events\)"),
        ("CREATE TABLE motet_meta (id int)", r"a table motet_meta that is not Motet's"),
    ],
)
def test_foreign_tables_named_like_ours_are_refused_and_left_alone(
    postgres_cluster: Cluster, url: str, ddl: str, message: str
) -> None:
    with admin(postgres_cluster, url) as conn:
        conn.execute(ddl)

    with pytest.raises(StoreFormatError, match=message):
        PostgresStore(url)

    with admin(postgres_cluster, url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema_of(url),)
        ).fetchall()
    assert len(tables) == 1


def test_a_store_with_a_missing_table_is_refused(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    open_store().close()
    with admin(postgres_cluster, url) as conn:
        conn.execute("DROP TABLE motet_snapshots")

    with pytest.raises(StoreFormatError, match=r"tables missing: motet_snapshots"):
        PostgresStore(url)


def test_an_unreachable_server_raises_storage_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(StorageError, match=r"cannot connect to PostgreSQL for the writer"):
        PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/postgres")


def test_postgres_urls_are_recognised() -> None:
    assert is_postgres_url("postgresql://u@h/db")
    assert is_postgres_url("postgres://u@h/db")
    assert not is_postgres_url("./motet-data")
    assert not is_postgres_url(None)


@pytest.mark.parametrize(("durability", "setting"), [("sync", "on"), ("none", "off")])
def test_durability_sets_synchronous_commit_of_the_writer(
    postgres_cluster: Cluster, open_store: Any, durability: str, setting: str
) -> None:
    store = open_store(durability=durability)
    store.append_batch([command("A", 0, 1)], TS)

    # The writer's own session setting, read on the writer's connection.
    assert store._writer.execute("SHOW synchronous_commit").fetchone() == (setting,)
    assert store.durability == durability


def test_bad_options_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"durability must be 'sync' or 'none', got 'fast'"):
        PostgresStore(url, durability="fast")  # type: ignore[arg-type]


# -- connections killed during commits -------------------------------------------------


def backends(conn: psycopg.Connection[Any], where: str) -> list[int]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND " + where
        )
    ]


def slow_commits(conn: psycopg.Connection[Any], seconds: float) -> None:
    """Make every COMMIT that inserted events wait ``seconds`` inside COMMIT
    (a deferred constraint trigger runs at COMMIT, before the commit record)."""
    conn.execute(
        f"""
        CREATE FUNCTION motet_test_sleep() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER motet_test_slow AFTER INSERT ON motet_events
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION motet_test_sleep();
        """
    )


def test_a_writer_killed_inside_commit_acknowledges_nothing_and_recovers(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    store = open_store()
    with admin(postgres_cluster, url) as conn:
        slow_commits(conn, 2.0)
        outcome: list[object] = []
        thread = threading.Thread(
            target=lambda: outcome.append(_call(store.append_batch, [command("A", 0, 2, "c")], TS))
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not (pids := backends(conn, "query = 'COMMIT' AND state = 'active'")):
            assert time.monotonic() < deadline, "the commit never started"
            time.sleep(0.01)
        conn.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
        thread.join(10)
        conn.execute("DROP TRIGGER motet_test_slow ON motet_events")

    (error,) = outcome
    assert isinstance(error, StorageError)
    assert "dropped during COMMIT" in str(error) and "was not committed" in str(error)
    assert store.read_all() == [] and store.get_ack("c") is None and store.head_position == 0
    # The writer reconnects; positions stay gap-free.
    assert store.append_batch([command("A", 0, 1, "d")], TS) == [Ack("A", 1, 1)]


def _call(function: Any, *args: Any) -> object:
    try:
        return function(*args)
    except Exception as exc:
        return exc


class _CutAfterCommit:
    """A TCP proxy to the cluster that, once armed, forwards the first COMMIT
    it sees, waits for the server's answer, and then drops the connection
    instead of passing the answer on: the commit happened, the client cannot
    know."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.armed = threading.Event()
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        self.errors: list[BaseException] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self._target)
            except OSError as exc:
                self.errors.append(exc)
                client.close()
                continue
            self._sockets += [client, server]
            # Set once this connection's COMMIT went up: the answer that comes
            # back must not reach the client. The downstream pump checks it
            # before forwarding, so the answer cannot slip through first.
            committing = threading.Event()
            threading.Thread(
                target=self._pump_up, args=(client, server, committing), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_down, args=(server, client, committing), daemon=True
            ).start()

    def _pump_up(
        self, client: socket.socket, server: socket.socket, committing: threading.Event
    ) -> None:
        try:
            tail = b""
            while data := client.recv(65536):
                # The statement may straddle two reads: look at the seam too.
                if self.armed.is_set() and b"COMMIT\x00" in tail + data:
                    self.armed.clear()
                    committing.set()
                server.sendall(data)
                tail = data[-6:]  # shorter than the 7 bytes sought: no old match
        except OSError:
            pass  # one side closed: the connection is over
        except BaseException as exc:
            self.errors.append(exc)

    def _pump_down(
        self, server: socket.socket, client: socket.socket, committing: threading.Event
    ) -> None:
        try:
            tail = b""
            while data := server.recv(65536):
                # CommandComplete "COMMIT": the server committed. Drop the
                # connection instead of passing that answer on (the answers
                # to the statements before it still go through).
                if committing.is_set() and b"COMMIT\x00" in tail + data:
                    self.cut.set()
                    break
                client.sendall(data)
                tail = data[-6:]  # shorter than the 7 bytes sought: no old match
        except OSError:
            pass
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


def test_a_commit_whose_answer_is_lost_is_resolved_by_reading_the_log(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    proxy = _CutAfterCommit(postgres_cluster.port)
    try:
        store = open_store(url.replace(f":{postgres_cluster.port}/", f":{proxy.port}/"))
        store.append_batch([command("A", 0, 1)], TS)
        proxy.armed.set()

        results = store.append_batch([command("A", 1, 2, "c"), command("B", 0, 1)], TS)

        assert proxy.cut.is_set() and not proxy.errors
        assert results == [Ack("A", 3, 3), Ack("B", 1, 4)]
        assert [e.position for e in store.read_all()] == [1, 2, 3, 4]
        assert store.get_ack("c") == Ack("A", 3, 3)
        # The writer reconnected through the proxy and goes on.
        assert store.append_batch([command("B", 1, 1)], TS) == [Ack("B", 2, 5)]
    finally:
        proxy.close()


def test_writers_killed_at_random_acknowledge_exactly_what_is_in_the_log(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    store = open_store()
    stop = threading.Event()
    kills = 0

    killer_errors: list[BaseException] = []

    def kill_writers() -> None:
        nonlocal kills
        rng = random.Random(7)
        try:
            with admin(postgres_cluster, url) as conn:
                while not stop.is_set():
                    time.sleep(rng.uniform(0.002, 0.03))
                    for pid in backends(conn, "application_name = 'motet writer'"):
                        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                        kills += 1
        except BaseException as exc:
            killer_errors.append(exc)

    killer = threading.Thread(target=kill_writers)
    killer.start()
    acknowledged: dict[str, Ack] = {}
    failed: list[str] = []
    try:
        for batch in range(150):
            appends = []
            for i in range(4):
                stream = f"S-{batch}-{i}"
                appends.append(command(stream, 0, 3, f"cmd-{batch}-{i}"))
            try:
                results = store.append_batch(appends, TS)
            except StorageError:
                failed.extend(a.metadata.command_id for a in appends)  # type: ignore[misc]
                continue
            for append, result in zip(appends, results, strict=True):
                assert isinstance(result, Ack)
                acknowledged[append.metadata.command_id] = result  # type: ignore[index]
    finally:
        stop.set()
        killer.join()

    assert not killer_errors
    assert kills > 0 and failed and acknowledged
    log = store.read_all(limit=100_000)
    assert [e.position for e in log] == list(range(1, len(log) + 1))
    in_log = {e.stream for e in log}
    for command_id, result in acknowledged.items():
        assert result.stream in in_log
        assert store.get_ack(command_id) == result
        assert [e.version for e in store.read_stream(result.stream)] == [1, 2, 3]
    for command_id in failed:
        stream = "S-" + command_id.removeprefix("cmd-")
        assert stream not in in_log
        assert store.get_ack(command_id) is None
    assert len(log) == 3 * len(acknowledged)


def test_a_commit_cut_short_waiting_for_a_synchronous_standby_is_not_acknowledged(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    store = open_store()
    store.append_batch([command("A", 0, 1)], TS)
    with postgres_cluster.connect() as conn:
        # A standby that never connects: every synchronous COMMIT waits for it.
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            deadline = time.monotonic() + 10
            while store._writer.execute("SHOW synchronous_standby_names").fetchone() != ("nobody",):
                assert time.monotonic() < deadline, "the setting never arrived"
                time.sleep(0.05)
            outcome: list[object] = []
            thread = threading.Thread(
                target=lambda: outcome.append(
                    _call(store.append_batch, [command("A", 1, 1, "c")], TS)
                )
            )
            thread.start()
            while not (pids := backends(conn, "wait_event = 'SyncRep'")):
                assert time.monotonic() < deadline, "the commit never waited for the standby"
                time.sleep(0.01)
            # Cancelling the wait makes PostgreSQL answer COMMIT with only a WARNING.
            conn.execute("SELECT pg_cancel_backend(%s)", (pids[0],))
            thread.join(10)
        finally:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            conn.execute("SELECT pg_reload_conf()")

    (error,) = outcome
    assert isinstance(error, StorageError)
    assert "not confirmed by the synchronous standby" in str(error)
    assert "not acknowledged" in str(error)
    # It is committed on the primary (a reader there sees it), just not acknowledged.
    assert store.head_position == 2


def test_a_command_id_committed_by_another_process_gets_its_ack_and_appends_nothing(
    open_store: Any,
) -> None:
    first, second = open_store(), open_store()
    (ack,) = first.append_batch([command("A", 0, 2, "cmd-1")], TS)

    # The other process decided the same command before it saw the first commit.
    results = second.append_batch([command("A", 0, 2, "cmd-1"), command("B", 0, 1, "cmd-2")], TS)

    assert results == [ack, Ack("B", 1, 3)]
    assert [(e.stream, e.version) for e in second.read_all()] == [("A", 1), ("A", 2), ("B", 1)]
    assert second.get_ack("cmd-1") == ack == Ack("A", 2, 2)


# -- concurrent writers and a tailing reader ------------------------------------------


def test_a_tailing_reader_sees_every_position_once_while_two_writers_append(
    open_store: Any,
) -> None:
    writers = [open_store(durability="none"), open_store(durability="none")]
    reader = open_store()
    batches = 120
    done = threading.Event()
    errors: list[BaseException] = []

    def write(store: PostgresStore, name: str) -> None:
        rng = random.Random(name)
        try:
            for n in range(batches):
                size = rng.randint(1, 40)
                (result,) = store.append_batch([command(f"{name}-{n}", 0, size)], TS)
                assert isinstance(result, Ack)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(store, name))
        for store, name in zip(writers, ["W1", "W2"], strict=True)
    ]
    for thread in threads:
        thread.start()
    seen: list[int] = []
    finisher = threading.Thread(target=lambda: ([t.join() for t in threads], done.set()))
    finisher.start()
    while True:
        finished = done.is_set()
        chunk = reader.read_all(after_position=seen[-1] if seen else 0, limit=37)
        seen.extend(e.position for e in chunk)
        if finished and not chunk:
            break
    finisher.join()

    assert not errors
    assert seen == list(range(1, reader.head_position + 1))
    assert len(seen) == len(set(seen)) and len(reader.streams()) == 2 * batches


def test_two_writers_on_one_stream_conflict_instead_of_forking_it(open_store: Any) -> None:
    stores = [open_store(durability="none"), open_store(durability="none")]
    outcomes: list[list[str]] = [[], []]

    def write(index: int) -> None:
        store = stores[index]
        for _ in range(60):
            # Deliberately stale half the time: the version read before the lock.
            expected = store.stream_version("A")
            try:
                (result,) = store.append_batch([command("A", expected, 2)], TS)
            except StorageError as exc:
                outcomes[index].append(f"error: {exc}")
                continue
            outcomes[index].append("ok" if isinstance(result, Ack) else "conflict")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = outcomes[0] + outcomes[1]
    assert [o for o in everything if o.startswith("error")] == []
    committed = everything.count("ok")
    assert stores[0].stream_version("A") == 2 * committed
    assert [e.version for e in stores[1].read_stream("A")] == list(range(1, 2 * committed + 1))


# -- waiting for commits ----------------------------------------------------------------


def test_wait_for_commit_wakes_on_another_connections_commit(open_store: Any) -> None:
    waiter = open_store(poll_interval=60.0)  # only a notification can wake it in time
    writer = open_store()
    writer.append_batch([command("A", 0, 1)], TS)
    assert waiter.wait_for_commit(0, timeout=5.0) == 1  # already past: at once

    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(waiter.wait_for_commit(1, 30.0)))
    started = time.monotonic()
    thread.start()
    time.sleep(0.3)
    writer.append_batch([command("A", 1, 2)], TS)
    thread.join(10)

    assert found == [3]
    assert time.monotonic() - started < 5


def test_wait_for_commit_returns_within_its_timeout_when_the_listener_is_killed(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    waiter = open_store(poll_interval=0.2)
    writer = open_store()
    assert waiter.wait_for_commit(0, timeout=0.1) == 0  # opens the listener
    with admin(postgres_cluster, url) as conn:
        (pid,) = backends(conn, "application_name = 'motet listener'")
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    started = time.monotonic()
    assert waiter.wait_for_commit(0, timeout=1.0) == 0
    assert 0.9 <= time.monotonic() - started < 2.5

    # A commit is still seen (by the poll, or by a reopened listener).
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(waiter.wait_for_commit(0, 10.0)))
    thread.start()
    time.sleep(0.3)
    writer.append_batch([command("A", 0, 1)], TS)
    thread.join(10)
    assert found == [1]


def test_a_waiter_that_outlives_close_returns_and_opens_no_connection(
    postgres_cluster: Cluster, url: str, open_store: Any
) -> None:
    # The engine's commit watcher waits in a worker thread, which can still be
    # waiting when the store closes at shutdown.
    waiter = open_store(poll_interval=0.1)
    assert waiter.wait_for_commit(0, timeout=0.05) == 0  # opens the listener
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(waiter.wait_for_commit(0, 3.0)))
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    waiter.close()
    thread.join(5)
    assert found == [0]
    assert time.monotonic() - started < 1.0
    time.sleep(0.3)  # a reconnect would have happened by now
    with admin(postgres_cluster, url) as conn:
        assert backends(conn, "application_name = 'motet listener'") == []
