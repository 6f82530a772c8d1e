"""PostgresStore on a primary with a synchronous standby (a real one, made
by ``pg_basebackup -R``): commits are acknowledged once the standby has
them; with the standby stopped (or frozen by SIGSTOP) a commit is refused
as ``unavailable``
within the commit timeout, naming the standby, while everything else the
store does carries on; once the standby is back, writes resume and the log
holds every acknowledged event exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from motet.storage import Ack, Append, Metadata, NewEvent
from motet.storage.errors import StandbyUnavailable, StorageError, Unavailable
from motet.storage.idempotency import AckRecord
from motet.storage.postgres_store import DEFAULT_COMMIT_TIMEOUT, PostgresStore
from motet.storage.records import Checkpoint
from tests.support.postgres import StandbyPair, new_schema_url

TS = 1_700_000_000.5
TIMEOUT = 1.0


@pytest.fixture
def pair(postgres_standby_pair: StandbyPair) -> Iterator[StandbyPair]:
    """The session's pair, its standby running and synchronous; started
    again at teardown should the test have left it stopped."""
    postgres_standby_pair.wait_synchronous()
    yield postgres_standby_pair
    postgres_standby_pair.restore()


@pytest.fixture
def store(pair: StandbyPair) -> Iterator[PostgresStore]:
    opened = PostgresStore(new_schema_url(pair.primary), commit_timeout=TIMEOUT)
    try:
        yield opened
    finally:
        opened.close()


def command(stream: str, expected: int, command_id: str) -> Append:
    return Append(
        stream,
        expected,
        [NewEvent("Happened", 1, f"{stream}:{expected + 1}".encode())],
        Metadata(command_id=command_id),
    )


def in_thread(call: Callable[[], Any], seconds: float) -> tuple[Any, float]:
    """Run ``call`` in a thread; return what it returned or raised, and how
    long it took. Fails when it has not returned within ``seconds``."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call was still waiting after {seconds} s"
    return outcome[0], time.monotonic() - started


def test_commits_are_acknowledged_while_the_standby_confirms_them(
    pair: StandbyPair, store: PostgresStore
) -> None:
    acks = [store.append_batch([command("A", n, f"c{n}")], TS)[0] for n in range(3)]

    assert acks == [Ack("A", 1, 1), Ack("A", 2, 2), Ack("A", 3, 3)]
    assert pair.replication_state() == "sync"


@pytest.mark.parametrize("how", ["stopped", "frozen"])
def test_with_the_standby_down_a_commit_is_refused_as_unavailable_within_the_timeout(
    pair: StandbyPair, store: PostgresStore, how: str
) -> None:
    (first,) = store.append_batch([command("A", 0, "c0")], TS)
    store_url = store._conninfo
    if how == "stopped":
        pair.stop_standby()  # pg_ctl stop: its connection to the primary ends
    else:
        pair.freeze_standby()  # SIGSTOP: a hung host, its connection stays open

    error, seconds = in_thread(lambda: store.append_batch([command("A", 1, "c1")], TS), 30)

    assert isinstance(error, StandbyUnavailable)
    assert isinstance(error, Unavailable) and isinstance(error, StorageError)
    assert "not confirmed by the synchronous standby within the commit timeout of 1 s" in str(error)
    assert "not acknowledged" in str(error)
    assert TIMEOUT <= seconds < TIMEOUT + 5
    # The rest of the store carries on: reads, and writes that need no
    # standby (checkpoints; heartbeats and lease claims of a node).
    assert store.get_ack("c0") == first
    assert [e.version for e in store.read_stream("A")] == [1, 2]
    _, seconds = in_thread(lambda: store.put_checkpoint("p", Checkpoint(2)), 5)
    assert store.get_checkpoint("p") == Checkpoint(2)
    node = PostgresStore(store_url, commit_timeout=TIMEOUT)
    try:
        view, _ = in_thread(lambda: node.heartbeat("n1", "127.0.0.1:1", "writer", 30.0), 5)
        assert [n.id for n in view.nodes] == ["n1"]
        claimed, _ = in_thread(lambda: node.claim("n1", [0, 1], 30.0), 5)
        assert sorted(claimed) == [0, 1]
    finally:
        node.close()
    # A deletion waits for the standby too, and is refused the same way.
    error, _ = in_thread(lambda: store.truncate_stream("A", 1), 30)
    assert isinstance(error, StandbyUnavailable)


def test_writes_resume_once_the_standby_is_back_and_nothing_is_doubled(
    pair: StandbyPair, store: PostgresStore
) -> None:
    acknowledged = dict(zip(["c0"], store.append_batch([command("A", 0, "c0")], TS), strict=True))
    pair.stop_standby()
    refused, _ = in_thread(lambda: store.append_batch([command("A", 1, "c1")], TS), 30)
    assert isinstance(refused, StandbyUnavailable)

    pair.start_standby()
    # The refused command, retried under its command id, gets the Ack of
    # its one commit: it was committed on the primary, not acknowledged.
    (retried,) = store.append_batch([command("A", 1, "c1")], TS)
    acknowledged["c1"] = retried
    (later,) = store.append_batch([command("A", 2, "c2")], TS)
    acknowledged["c2"] = later

    assert retried == Ack("A", 2, 2) and later == Ack("A", 3, 3)
    log = store.read_all()
    assert [(e.position, e.metadata.command_id) for e in log] == [(1, "c0"), (2, "c1"), (3, "c2")]
    for command_id, ack in acknowledged.items():
        assert store.get_ack(command_id) == ack


def test_a_refused_commit_is_not_acknowledged_by_its_command_id_until_the_standby_has_it(
    pair: StandbyPair, store: PostgresStore
) -> None:
    pair.stop_standby()
    refused, _ = in_thread(lambda: store.append_batch([command("A", 0, "c0")], TS), 30)
    assert isinstance(refused, StandbyUnavailable)

    # A retry looks the command id up (the engine does, before deciding
    # again): the Ack is in the index, committed on the primary only, so it
    # is not handed out while the standby cannot confirm it...
    error, seconds = in_thread(lambda: store.get_ack_record("c0"), 30)
    assert isinstance(error, StandbyUnavailable), error
    assert seconds < TIMEOUT + 5
    # ...nor by a retry that reaches the writer.
    error, _ = in_thread(lambda: store.append_batch([command("A", 0, "c0")], TS), 30)
    assert isinstance(error, StandbyUnavailable), error

    pair.start_standby()
    assert store.get_ack_record("c0") == AckRecord("A", 1, 1)
    assert store.append_batch([command("A", 0, "c0")], TS) == [Ack("A", 1, 1)]
    # Unknown command ids are answered at once, standby or not.
    assert store.get_ack_record("c9") is None


def test_another_process_waiting_for_the_head_lock_is_refused_naming_the_standby_too(
    pair: StandbyPair,
) -> None:
    # The default commit timeout: a commit waiting for the standby holds the
    # head row lock that long, so the other process must outwait it.
    url = new_schema_url(pair.primary)
    first, second = PostgresStore(url), PostgresStore(url)
    try:
        pair.stop_standby()
        outcomes: dict[str, Any] = {}

        def append(name: str, store: PostgresStore, stream: str) -> None:
            try:
                outcomes[name] = store.append_batch([command(stream, 0, name)], TS)
            except Exception as exc:
                outcomes[name] = exc

        threads = [
            threading.Thread(target=append, args=("first", first, "A"), daemon=True),
            threading.Thread(target=append, args=("second", second, "B"), daemon=True),
        ]
        for thread in threads:
            thread.start()
            time.sleep(0.2)
        for thread in threads:
            thread.join(3 * DEFAULT_COMMIT_TIMEOUT + 10)
            assert not thread.is_alive()

        for name in ("first", "second"):
            assert isinstance(outcomes[name], StandbyUnavailable), (name, outcomes[name])
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("commit_timeout", "lock_timeout"), [(1.0, "10s"), (10.0, "15s"), (30, "35s")]
)
def test_the_wait_for_the_head_lock_outlasts_the_commit_timeout(
    pair: StandbyPair, commit_timeout: float, lock_timeout: str
) -> None:
    store = PostgresStore(new_schema_url(pair.primary), commit_timeout=commit_timeout)
    try:
        assert store._writer is not None
        assert store._writer.execute("SHOW lock_timeout").fetchone() == (lock_timeout,)
    finally:
        store.close()


def test_a_commit_timeout_that_is_no_positive_number_is_refused(pair: StandbyPair) -> None:
    with pytest.raises(ValueError, match=r"commit_timeout must be > 0 seconds, got 0"):
        PostgresStore(new_schema_url(pair.primary), commit_timeout=0)
