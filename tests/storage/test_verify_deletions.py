"""``verify_store`` on a store with removed events: a hard delete and
retention leave gaps it accepts (they are recorded), while a record removed
or put back behind the store's back, a damaged removed run or an Ack
pointing nowhere are still reported."""

from __future__ import annotations

import struct
from pathlib import Path

import lmdb

from motet.storage import Append, LmdbStore, Metadata, NewEvent
from motet.storage.records import Snapshot
from motet.storage.verify import verify_store

_U64 = struct.Struct(">Q")


def write(path: Path) -> list[bytes]:
    """Four interleaved streams of three events, one hard deleted, one
    truncated; returns the raw log records of the deleted stream."""
    store = LmdbStore(path, durability="none")
    try:
        for version in range(3):
            store.append_batch(
                [
                    Append(
                        f"S-{n}",
                        version,
                        [NewEvent("E", 1, b"x")],
                        Metadata(command_id=f"c-{n}-{version}"),
                        Snapshot(version + 1, 1, b"s") if n == 3 else None,
                    )
                    for n in range(4)
                ],
                1.0,
            )
        with store._env.begin() as txn:
            removed = [bytes(txn.get(_U64.pack(p), db=store._log)) for p in (2, 6, 10)]
        store.delete_stream("S-1", hard=True, timestamp=2.0)
        store.truncate_stream("S-3", 2)
    finally:
        store.close()
    return removed


def tamper(path: Path, work: object) -> None:
    env = lmdb.open(str(path), max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name, txn=txn) for name in (b"log", b"removed", b"commands")}
            work(txn, dbs)  # type: ignore[operator]
    finally:
        env.close()


def test_removed_positions_are_no_damage(tmp_path: Path) -> None:
    write(tmp_path)

    result = verify_store(tmp_path)

    assert result.sound, result.problems
    assert (result.events, result.removed, result.acks) == (7, 5, 12)


def test_a_record_removed_behind_the_stores_back_is_still_a_gap(tmp_path: Path) -> None:
    write(tmp_path)
    tamper(tmp_path, lambda txn, dbs: txn.delete(_U64.pack(5), db=dbs[b"log"]))

    problems = [str(p) for p in verify_store(tmp_path).problems]

    # 4 was removed on purpose (a truncation), 5 was not.
    assert "log position 7: positions jump from 3 to 7 (a gap)" in problems


def test_a_record_back_inside_a_removed_run_is_reported(tmp_path: Path) -> None:
    removed = write(tmp_path)
    tamper(tmp_path, lambda txn, dbs: txn.put(_U64.pack(6), removed[1], db=dbs[b"log"]))

    problems = [str(p) for p in verify_store(tmp_path).problems]

    assert "log position 6: is in the removed run 6..6 but still there" in problems


def test_a_damaged_removed_run_is_reported(tmp_path: Path) -> None:
    write(tmp_path)
    tamper(tmp_path, lambda txn, dbs: txn.put(_U64.pack(9), _U64.pack(3), db=dbs[b"removed"]))

    problems = [str(p) for p in verify_store(tmp_path).problems]

    assert problems == [
        "removed run from position 9: is not a run after the previous one (to 3, previous "
        "ended at 8)"
    ]


def test_an_ack_pointing_at_a_position_never_written_is_still_reported(tmp_path: Path) -> None:
    write(tmp_path)
    verified = verify_store(tmp_path)
    assert verified.sound

    def point_past_the_head(txn: lmdb.Transaction, dbs: dict[bytes, object]) -> None:
        import msgspec

        from motet.storage.idempotency import AckRecord

        raw = txn.get(b"c-0-0", db=dbs[b"commands"])
        ack = msgspec.msgpack.decode(raw, type=AckRecord)
        moved = msgspec.structs.replace(ack, position=99)
        txn.put(b"c-0-0", msgspec.msgpack.encode(moved), db=dbs[b"commands"])

    tamper(tmp_path, point_past_the_head)

    problems = [str(p) for p in verify_store(tmp_path).problems]

    assert problems == ["ack of command id 'c-0-0': points at position 99, not in the log"]
