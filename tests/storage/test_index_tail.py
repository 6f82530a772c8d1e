"""The LMDB store's stream index lags the log by up to FLUSH_ROWS rows (see
motet.storage.index_tail): every read, version lookup and append must see
the rows it does not hold yet, in the writer, after a crash and in a
read-only handle of another process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from motet.storage import Append, Conflict, LmdbStore, NewEvent
from motet.storage import lmdb_store as lmdb_store_module
from motet.storage.errors import CodecError
from motet.storage.index_tail import MARK_KEY
from motet.storage.verify import Problem, _Checker, verify_store

TS = 1_700_000_000.5
FEW_ROWS = 4


@pytest.fixture
def few_rows(monkeypatch: pytest.MonkeyPatch) -> int:
    """Write the index once FEW_ROWS rows are held."""
    monkeypatch.setattr(lmdb_store_module, "FLUSH_ROWS", FEW_ROWS)
    return FEW_ROWS


def events(count: int, tag: str = "e") -> list[NewEvent]:
    return [NewEvent("Noted", 1, f"{tag}-{i}".encode()) for i in range(count)]


def problems_of(store: LmdbStore) -> list[Problem]:
    """What ``motet verify`` finds in the store, through this open handle
    (LMDB opens an environment once per process)."""
    checker = _Checker(store, 100)
    checker.run()
    return checker.problems


def indexed(store: LmdbStore) -> tuple[int, int | None]:
    """The number of rows in the stream index and its mark (None: absent)."""
    with store._env.begin() as txn:
        rows = txn.stat(store._index)["entries"]
        mark = txn.get(MARK_KEY, db=store._meta)
    return rows, None if mark is None else int.from_bytes(mark, "big")


def test_rows_are_held_until_enough_are_then_written_in_one_commit(
    tmp_path: Path, few_rows: int
) -> None:
    store = LmdbStore(tmp_path, durability="none")
    try:
        store.append_batch([Append("A", 0, events(2)), Append("B", 0, events(1))], TS)
        assert indexed(store) == (0, 0)  # held: the index is complete through 0
        assert store.read_stream("A")[-1].version == 2
        store.append_batch([Append("A", 2, events(1))], TS)  # 4 rows: written
        assert indexed(store) == (4, 4)
        store.append_batch([Append("C", 0, events(1))], TS)
        assert indexed(store) == (4, 4)
        assert [e.position for e in store.read_stream("A")] == [1, 2, 4]
        assert store.read_stream("A", after_version=2) == store.read_stream("A")[2:]
        assert [e.position for e in store.read_stream("C")] == [5]
        assert store.streams() == [("A", 3), ("B", 1), ("C", 1)]
        assert store.stream_version("C") == 1
    finally:
        store.close()
    # Closing writes what is held, so the next open has nothing to rebuild.
    reopened = LmdbStore(tmp_path, readonly=True)
    try:
        assert indexed(reopened) == (5, 5)
    finally:
        reopened.close()


def test_an_append_knows_the_versions_only_held(tmp_path: Path, few_rows: int) -> None:
    store = LmdbStore(tmp_path, durability="none")
    try:
        store.append_batch([Append("A", 0, events(2))], TS)
        store._versions.clear()  # as after a restart: the version comes from the rows
        (result,) = store.append_batch([Append("A", 1, events(1))], TS)
        assert isinstance(result, Conflict)
        assert (result.expected, result.actual) == (1, 2)
        (ack,) = store.append_batch([Append("A", 2, events(1))], TS)
        assert ack.version == 3
    finally:
        store.close()


def test_deleting_and_truncating_write_the_held_rows_first(tmp_path: Path, few_rows: int) -> None:
    store = LmdbStore(tmp_path, durability="none")
    try:
        store.append_batch([Append("A", 0, events(2)), Append("B", 0, events(1))], TS)
        assert store.truncate_stream("A", 1) == 1
        assert [e.version for e in store.read_stream("A")] == [2]
        store.delete_stream("B", hard=True, timestamp=TS)
        assert store.read_stream("B") == []
        assert store.streams() == [("A", 2)]
    finally:
        store.close()
    assert verify_store(tmp_path).sound


WRITER = textwrap.dedent(
    """
    import sys, time
    from motet.storage import Append, LmdbStore, NewEvent
    from motet.storage import lmdb_store
    lmdb_store.FLUSH_ROWS = int(sys.argv[2])
    store = LmdbStore(sys.argv[1])
    for line in sys.stdin:
        stream, expected, count, data = (line.split() + ["x"])[:4]
        events = [NewEvent("Noted", 1, data.encode()) for _ in range(int(count))]
        (ack,) = store.append_batch([Append(stream, int(expected), events)], 1.0)
        print(ack.position, flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def writer_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A writer process on ``tmp_path / "store"`` that appends what it reads
    on stdin (stream, expected version, count) and prints each position;
    it writes the index once 6 rows are held."""
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "store"), "6"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            yield process
        finally:
            process.kill()


def append(process: subprocess.Popen[str], stream: str, expected: int, count: int) -> int:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(f"{stream} {expected} {count}\n")
    process.stdin.flush()
    return int(process.stdout.readline())


def test_a_writer_killed_with_rows_held_loses_none_of_them(
    tmp_path: Path, writer_process: subprocess.Popen[str]
) -> None:
    append(writer_process, "A", 0, 2)
    append(writer_process, "B", 0, 1)
    assert append(writer_process, "A", 2, 1) == 4  # 4 rows held, none written
    os.kill(writer_process.pid, signal.SIGKILL)
    writer_process.wait(20)

    store = LmdbStore(tmp_path / "store")
    try:
        assert indexed(store) == (0, 0)
        assert [e.position for e in store.read_stream("A")] == [1, 2, 4]
        assert store.streams() == [("A", 3), ("B", 1)]
        (conflict,) = store.append_batch([Append("A", 2, events(1))], TS)
        assert isinstance(conflict, Conflict) and conflict.actual == 3
        (ack,) = store.append_batch([Append("A", 3, events(1))], TS)
        assert (ack.version, ack.position) == (4, 5)
    finally:
        store.close()
    assert verify_store(tmp_path / "store").sound


def test_a_read_only_handle_reads_what_the_writer_holds_and_then_writes(
    tmp_path: Path, writer_process: subprocess.Popen[str]
) -> None:
    append(writer_process, "A", 0, 2)
    reader = LmdbStore(tmp_path / "store", readonly=True)
    try:
        assert [e.version for e in reader.read_stream("A")] == [1, 2]
        append(writer_process, "B", 0, 3)  # 5 rows held
        assert reader.streams() == [("A", 2), ("B", 3)]
        append(writer_process, "A", 2, 2)  # 7 rows: written into the index
        assert indexed(reader) == (7, 7)
        append(writer_process, "B", 3, 1)
        assert [e.position for e in reader.read_stream("A")] == [1, 2, 6, 7]
        assert [e.version for e in reader.read_stream("B", after_version=2)] == [3, 4]
        assert reader.stream_version("B") == 4
        assert reader.streams() == [("A", 4), ("B", 4)]
        assert problems_of(reader) == []
    finally:
        reader.close()


def test_a_damaged_record_not_indexed_yet_stops_the_writer_not_the_readers(
    tmp_path: Path, writer_process: subprocess.Popen[str]
) -> None:
    append(writer_process, "A", 0, 1)
    assert process_stdin_append_marker(writer_process) == 2
    os.kill(writer_process.pid, signal.SIGKILL)
    writer_process.wait(20)
    data = tmp_path / "store" / "data.mdb"
    raw = bytearray(data.read_bytes())
    at = raw.index(b"MARKER-0123456789")
    raw[at] ^= 0x01
    data.write_bytes(bytes(raw))

    with pytest.raises(CodecError, match=r"position 2 is damaged .* `motet verify`"):
        LmdbStore(tmp_path / "store")
    reader = LmdbStore(tmp_path / "store", readonly=True)
    try:
        assert indexed(reader) == (0, 0)  # the refused writer wrote nothing
        assert [e.version for e in reader.read_stream("A")] == [1]
        assert [p.where for p in problems_of(reader)] == ["log position 2"]
    finally:
        reader.close()


def process_stdin_append_marker(process: subprocess.Popen[str]) -> int:
    """Append one event whose data holds a marker to find it in the file."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("B 0 1 MARKER-0123456789\n")
    process.stdin.flush()
    return int(process.stdout.readline())


def test_an_old_store_without_a_mark_has_a_complete_index(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, durability="none")
    store.append_batch([Append("A", 0, events(2))], TS)
    store.close()
    env = lmdb.open(str(tmp_path), max_dbs=16)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        assert txn.delete(MARK_KEY)
    env.close()
    store = LmdbStore(tmp_path, durability="none")
    try:
        assert [e.version for e in store.read_stream("A")] == [1, 2]
        (ack,) = store.append_batch([Append("A", 2, events(1))], TS)
        assert ack.version == 3
        assert store.read_stream("A", after_version=2)[0].position == 3
    finally:
        store.close()


def test_reading_one_stream_unpacks_only_its_own_held_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading an aggregate reads its stream: with thousands of rows held for
    # other streams, a read that unpacked them all made creating users ten
    # times slower.
    from motet.storage import index_tail

    store = LmdbStore(tmp_path, durability="none")
    try:
        store.append_batch([Append(f"S{i}", 0, events(2)) for i in range(500)], TS)
        assert len(store._tail) == 1000  # held, not written
        unpacked: list[int] = []
        real_pairs = index_tail._pairs

        def counting_pairs(rows: bytearray) -> object:
            unpacked.append(len(rows) // 16)
            return real_pairs(rows)

        monkeypatch.setattr(index_tail, "_pairs", counting_pairs)
        assert [e.version for e in store.read_stream("S7")] == [1, 2]
        assert store.stream_version("S8") == 2
        assert sum(unpacked) == 4
    finally:
        store.close()
