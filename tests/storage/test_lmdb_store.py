"""Behaviour only the LMDB store has: persistence, map growth, refusing
directories that are not Motet stores, durability modes and its repr."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb
import pytest

from motet.storage import (
    FORMAT,
    Append,
    Checkpoint,
    Conflict,
    LmdbStore,
    Metadata,
    NewEvent,
    Snapshot,
    StorageError,
    StoreFormatError,
)
from motet.storage.lmdb_store import DELETIONS_FORMAT
from motet.storage.records import Ack
from tests.support.logs import read_everything

TS = 1_700_000_000.5


def new_events(count: int, size: int = 8, start: int = 0) -> list[NewEvent]:
    return [
        NewEvent("Created", 1, f"{start + i:08d}".encode().ljust(size, b".")) for i in range(count)
    ]


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with a hash of its bytes."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# -- persistence ------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "none"])
def test_close_and_reopen_keeps_everything(lmdb_store_factory: Any, durability: str) -> None:
    store = lmdb_store_factory(durability=durability)
    store.append_batch(
        [
            Append("User-1", 0, new_events(2), Metadata(command_id="cmd-1")),
            Append("User-10", 0, new_events(3, start=10), snapshot=Snapshot(3, 1, b"u10")),
        ],
        TS,
    )
    store.append_batch(
        [Append("User-1", 2, new_events(1, start=20), Metadata(command_id="cmd-2"))], TS + 1
    )
    store.put_checkpoint("users", Checkpoint(6, 2, b"read-model"))
    log = read_everything(store)

    reopened = lmdb_store_factory(reopen_of=store, durability=durability)

    assert reopened.head_position == 6
    assert read_everything(reopened) == log
    assert reopened.read_stream("User-1") == [e for e in log if e.stream == "User-1"]
    assert reopened.streams() == [("User-1", 3), ("User-10", 3)]
    assert reopened.load_snapshot("User-10") == Snapshot(3, 1, b"u10")
    assert reopened.load_snapshot("User-1") is None
    assert reopened.get_ack("cmd-1") == Ack("User-1", 2, 2)
    assert reopened.get_ack("cmd-2") == Ack("User-1", 3, 6)
    assert reopened.get_checkpoint("users") == Checkpoint(6, 2, b"read-model")


def test_a_reopened_store_continues_positions_and_checks_versions(lmdb_store_factory: Any) -> None:
    store = lmdb_store_factory()
    store.append_batch([Append("A", 0, new_events(2)), Append("B", 0, new_events(1))], TS)

    reopened = lmdb_store_factory(reopen_of=store)
    results = reopened.append_batch(
        [
            Append("A", 0, new_events(1)),
            Append("A", 2, new_events(2)),
            Append("C", 0, new_events(1)),
        ],
        TS,
    )

    assert isinstance(results[0], Conflict)
    assert (results[0].expected, results[0].actual) == (0, 2)
    assert results[1:] == [Ack("A", 4, 5), Ack("C", 1, 6)]
    assert [e.position for e in read_everything(reopened)] == [1, 2, 3, 4, 5, 6]


def test_versions_kept_in_memory_stay_exact_past_their_bound(
    lmdb_store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("motet.storage.lmdb_store._KNOWN_VERSIONS", 3)
    store = lmdb_store_factory()
    streams = [f"S-{i}" for i in range(5)]
    for version in range(3):
        for pair in (streams[0:2], streams[2:4], streams[4:5]):
            results = store.append_batch([Append(s, version, new_events(1)) for s in pair], TS)
            assert [r.version for r in results] == [version + 1] * len(pair)  # type: ignore[union-attr]
            assert 0 < len(store._versions) <= 3
    too_many = store.append_batch([Append(s, 3, new_events(1)) for s in streams], TS)
    stale = store.append_batch([Append(s, 3, new_events(1)) for s in streams[:3]], TS)

    assert [r.version for r in too_many] == [4] * 5  # type: ignore[union-attr]
    assert [(c.expected, c.actual) for c in stale] == [(3, 4)] * 3  # type: ignore[union-attr]
    assert store.streams() == [(s, 4) for s in streams]


def test_a_failed_commit_leaves_the_known_versions_as_committed(
    lmdb_store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = lmdb_store_factory()
    store.append_batch([Append("A", 0, new_events(1))], TS)
    with monkeypatch.context() as patched:
        patched.setattr("motet.storage.lmdb_store.seal", _failing_seal)
        with pytest.raises(StorageError, match="device gone"):
            store.append_batch([Append("A", 1, new_events(2)), Append("B", 0, new_events(1))], TS)

    results = store.append_batch(
        [Append("A", 3, new_events(1)), Append("A", 1, new_events(1)), Append("B", 0, [])], TS
    )

    assert isinstance(results[0], Conflict)
    assert (results[0].expected, results[0].actual) == (3, 1)
    assert results[1:] == [Ack("A", 2, 2), Ack("B", 0, 2)]


def _failing_seal(body: bytes) -> bytes:
    raise OSError("device gone")


def test_the_store_directory_and_its_parents_are_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store"

    store = LmdbStore(path, durability="none")
    try:
        store.append_batch([Append("A", 0, new_events(1))], TS)
    finally:
        store.close()

    assert (path / "data.mdb").is_file()


def test_an_empty_existing_directory_becomes_a_store(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, durability="none")
    try:
        assert store.head_position == 0
        assert store.append_batch([Append("A", 0, new_events(1))], TS) == [Ack("A", 1, 1)]
    finally:
        store.close()


# -- map growth -------------------------------------------------------------------------------


def test_a_small_map_grows_to_hold_megabytes_of_events(lmdb_store_factory: Any) -> None:
    store = lmdb_store_factory(map_size=64 * 1024, durability="none")
    streams = ["A", "B", "C", "D"]
    for batch in range(52):
        stream = streams[batch % len(streams)]
        (result,) = store.append_batch(
            [
                Append(
                    stream,
                    store.stream_version(stream),
                    new_events(100, size=1024, start=batch * 100),
                    snapshot=Snapshot(batch, 1, b"s" * 20_000) if batch % 10 == 9 else None,
                )
            ],
            TS,
        )
        assert isinstance(result, Ack)

    # 5,200 events of 1 KiB each: far more than the 64 KiB the store began with.
    assert store.map_size >= 5 * 1024 * 1024
    assert store.head_position == 5200
    log = read_everything(store)
    assert [e.position for e in log] == list(range(1, 5201))
    assert [e.data[:8] for e in log] == [f"{i:08d}".encode() for i in range(5200)]
    for stream in streams:
        events = store.read_stream(stream)
        assert events == [e for e in log if e.stream == stream]
        assert [e.version for e in events] == list(range(1, 1301))
    assert store.load_snapshot("B") == Snapshot(49, 1, b"s" * 20_000)

    reopened = lmdb_store_factory(reopen_of=store, durability="none")
    assert read_everything(reopened) == log


def test_a_small_map_grows_for_a_large_snapshot_only_append(lmdb_store_factory: Any) -> None:
    store = lmdb_store_factory(map_size=64 * 1024, durability="none")
    store.append_batch([Append("A", 0, new_events(1))], TS)
    snapshot = Snapshot(1, 1, os.urandom(1024 * 1024))

    (result,) = store.append_batch([Append("A", 1, [], snapshot=snapshot)], TS)

    assert result == Ack("A", 1, 1)
    assert store.load_snapshot("A") == snapshot
    assert store.map_size > 1024 * 1024


def test_a_small_map_grows_for_a_large_checkpoint(lmdb_store_factory: Any) -> None:
    store = lmdb_store_factory(map_size=64 * 1024, durability="none")
    checkpoint = Checkpoint(0, 1, os.urandom(1024 * 1024))

    store.put_checkpoint("users", checkpoint)

    assert store.get_checkpoint("users") == checkpoint
    assert store.map_size > 1024 * 1024


# -- refusing what is not a Motet store -------------------------------------------------------


def test_opening_a_file_raises_store_format_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"not a directory")
    before = fingerprint(tmp_path)

    with pytest.raises(StoreFormatError, match=r"events\.db is a file, not a Motet store dir"):
        LmdbStore(path)

    assert fingerprint(tmp_path) == before


def test_opening_a_non_empty_directory_that_is_no_store_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    before = fingerprint(tmp_path)

    with pytest.raises(
        StoreFormatError,
        match=r"is not empty and holds no Motet store \(found: notes\.txt, photos\)$",
    ):
        LmdbStore(tmp_path)

    assert fingerprint(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "photos"]


def test_opening_an_lmdb_environment_that_is_no_motet_store_raises(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path))
    with env.begin(write=True) as txn:
        txn.put(b"hello", b"world")
    env.close()
    names = sorted(os.listdir(tmp_path))
    data = (tmp_path / "data.mdb").read_bytes()

    with pytest.raises(
        StoreFormatError, match=r"is an LMDB environment but not a Motet store \(no meta record\)"
    ):
        LmdbStore(tmp_path)

    # lock.mdb is LMDB's reader table, rewritten by any opener; the data is untouched.
    assert sorted(os.listdir(tmp_path)) == names
    assert (tmp_path / "data.mdb").read_bytes() == data
    env = lmdb.open(str(tmp_path))
    with env.begin() as txn:
        assert list(txn.cursor()) == [(b"hello", b"world")]
    env.close()


def test_opening_a_store_of_an_unknown_format_version_raises(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, durability="none")
    store.append_batch([Append("A", 0, new_events(1))], TS)
    store.close()
    env = lmdb.open(str(tmp_path), max_dbs=8)
    meta = env.open_db(b"meta")
    with env.begin(write=True, db=meta) as txn:
        assert txn.get(b"format") == FORMAT
        txn.put(b"format", b"motet-store/99")
    env.close()
    names = sorted(os.listdir(tmp_path))
    data = (tmp_path / "data.mdb").read_bytes()

    with pytest.raises(
        StoreFormatError,
        match=r"holds store format b'motet-store/99'; this version reads 'motet-store/1', "
        r"'motet-store/2', 'motet-store/3', 'motet-store/4' only",
    ):
        LmdbStore(tmp_path)

    assert sorted(os.listdir(tmp_path)) == names
    assert (tmp_path / "data.mdb").read_bytes() == data


def test_opening_a_directory_with_a_corrupt_data_file_raises(tmp_path: Path) -> None:
    garbage = b"this is not an LMDB file " * 400
    (tmp_path / "data.mdb").write_bytes(garbage)

    with pytest.raises(StoreFormatError, match=r"data.mdb is not an LMDB data file"):
        LmdbStore(tmp_path)

    assert (tmp_path / "data.mdb").read_bytes() == garbage


def test_store_format_error_is_a_storage_error() -> None:
    assert issubclass(StoreFormatError, StorageError)


# -- durability, repr ------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "none"])
def test_both_durability_modes_are_accepted(lmdb_store_factory: Any, durability: str) -> None:
    store = lmdb_store_factory(durability=durability)

    assert store.durability == durability
    assert store.append_batch([Append("A", 0, new_events(1))], TS) == [Ack("A", 1, 1)]


@pytest.mark.parametrize("durability", ["fsync", "SYNC", "", None, True])
def test_an_unknown_durability_is_refused_before_touching_the_disk(
    tmp_path: Path, durability: Any
) -> None:
    path = tmp_path / "store"

    with pytest.raises(
        ValueError, match=rf"^durability must be 'sync' or 'none', got {durability!r}$"
    ):
        LmdbStore(path, durability=durability)

    assert not path.exists()


def test_the_default_durability_is_sync(lmdb_store_factory: Any) -> None:
    assert lmdb_store_factory().durability == "sync"


def test_repr_shows_path_head_durability_and_map_size(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s", durability="none", map_size=1 << 20)
    try:
        assert repr(store) == (
            f"<LmdbStore {str(tmp_path / 's')!r} head=0 durability=none map_size=1048576>"
        )
        store.append_batch([Append("A", 0, new_events(3))], TS)
        assert f"head=3 durability=none map_size={store.map_size}>" in repr(store)
    finally:
        store.close()

    assert repr(store) == f"<LmdbStore {str(tmp_path / 's')!r} closed>"


def test_a_read_only_handle_is_shared_and_sees_another_process_commit(tmp_path: Path) -> None:
    path = tmp_path / "store"
    LmdbStore(path).close()
    reader = LmdbStore(path, readonly=True)
    try:
        assert (reader.shared, reader.blocking, reader.head_position) == (True, False, 0)
        assert reader.wait_for_commit(0, 0.05) == 0
        writer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from motet.storage import Append, LmdbStore, NewEvent; "
                "s = LmdbStore(sys.argv[1]); "
                "s.append_batch([Append('A', 0, [NewEvent('Created', 1, b'x')] * 2)], 1.0); "
                "s.close()",
                str(path),
            ]
        )
        try:
            assert reader.wait_for_commit(0, 20.0) == 2
        finally:
            assert writer.wait(20) == 0
        assert [e.position for e in reader.read_all()] == [1, 2]
    finally:
        reader.close()


def store_format(path: Path, replace: bytes | None = None) -> bytes:
    """The format record of the store at ``path`` (closed), first replaced
    by ``replace`` if given (as an older version would have written it)."""
    env = lmdb.open(str(path), max_dbs=16)
    try:
        with env.begin(write=True, db=env.open_db(b"meta")) as txn:
            if replace is not None:
                txn.put(b"format", replace)
            return bytes(txn.get(b"format"))
    finally:
        env.close()


@pytest.mark.parametrize("older", [b"motet-store/2", DELETIONS_FORMAT])
@pytest.mark.parametrize("write", ["append", "delete"])
def test_the_first_write_to_an_older_store_marks_it_with_this_format(
    tmp_path: Path, older: bytes, write: str
) -> None:
    store = LmdbStore(tmp_path, durability="none")
    store.append_batch([Append("A", 0, new_events(2)), Append("B", 0, new_events(1))], TS)
    store.close()
    assert store_format(tmp_path) == FORMAT == b"motet-store/4"
    store_format(tmp_path, older)

    store = LmdbStore(tmp_path, durability="none")
    if write == "append":
        store.append_batch([Append("A", 2, new_events(1))], TS)
    else:
        store.delete_stream("B", hard=True, timestamp=TS)
    store.close()

    assert store_format(tmp_path) == FORMAT
    reopened = LmdbStore(tmp_path, readonly=True)
    assert reopened.stream_version("A") == (3 if write == "append" else 2)
    reopened.close()


# -- the category index of a store made before it ---------------------------------------------


def drop_added_databases(path: Path) -> None:
    """Make ``path`` look like a store written before the groups and category
    databases existed."""
    env = lmdb.open(str(path), max_dbs=10, subdir=True)
    try:
        with env.begin(write=True) as txn:
            for name in (b"categories", b"groups"):
                txn.drop(env.open_db(name, txn=txn), delete=True)
    finally:
        env.close()


def test_an_older_store_gains_its_category_index_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = LmdbStore(path)
    store.append_batch(
        [Append("User-1", 0, new_events(2)), Append("Order-1", 0, new_events(1))], TS
    )
    store.append_batch([Append("User-2", 0, new_events(1))], TS)
    users = store.read_category("User")
    store.close()
    drop_added_databases(path)

    # A read-only handle of the older store filters the log instead.
    reader = LmdbStore(path, readonly=True)
    try:
        assert reader.read_category("User") == users
        assert reader.parked("g") == [] and reader.group_names() == []
    finally:
        reader.close()
    store = LmdbStore(path)
    try:
        assert [e.position for e in users] == [1, 2, 4]
        assert store.read_category("User") == users
        store.append_batch([Append("User-1", 2, new_events(1))], TS)
        assert [e.position for e in store.read_category("User", 2)] == [4, 5]
    finally:
        store.close()
