"""Backups of an LMDB store (motet.storage.backup): a copy that verifies and
opens as the store it was taken from; restores that never write over
anything and refuse what does not verify."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from motet.storage import LmdbStore, StorageError, StoreFormatError
from motet.storage.backup import backup_store, restore_store
from motet.storage.errors import StoreNotEmpty
from motet.storage.records import Append, Checkpoint, Metadata, NewEvent, Snapshot
from motet.storage.verify import verify_store
from tests.support.logs import read_everything


def _fill(store: LmdbStore, count: int = 50) -> None:
    for n in range(count):
        stream = f"User-{n % 7}"
        snapshot = Snapshot(n // 7 + 1, 1, b"state") if n % 10 == 0 else None
        store.append_batch(
            [
                Append(
                    stream,
                    store.stream_version(stream),
                    [NewEvent("Created", 1, f"payload-{n}".encode())],
                    Metadata(f"cmd-{n}", "corr"),
                    snapshot,
                )
            ],
            1_700_000_000.0 + n,
        )
    store.put_checkpoint("users", Checkpoint(count - 3, 1, b"model"))


def test_a_backup_holds_the_whole_store_and_opens_as_it(tmp_path: Path) -> None:
    source = LmdbStore(tmp_path / "data")
    _fill(source)

    result = backup_store(source, tmp_path / "backup")

    assert result.path == tmp_path / "backup"
    assert result.head == 50
    assert result.verification.sound
    assert os.listdir(tmp_path / "backup") == ["data.mdb"]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]
    copy = LmdbStore(tmp_path / "backup", readonly=True)
    try:
        assert read_everything(copy) == read_everything(source)
        assert copy.streams() == source.streams()
        assert copy.get_ack("cmd-33") == source.get_ack("cmd-33")
        assert copy.load_snapshot("User-3") == source.load_snapshot("User-3")
        assert copy.get_checkpoint("users") == Checkpoint(47, 1, b"model")
    finally:
        copy.close()
        source.close()


def test_a_backup_by_path_opens_the_store_read_only_and_writes_nothing_to_it(
    tmp_path: Path,
) -> None:
    source = LmdbStore(tmp_path / "data")
    _fill(source, 5)
    source.close()
    before = (tmp_path / "data" / "data.mdb").read_bytes()

    result = backup_store(tmp_path / "data", tmp_path / "backup")

    assert result.head == 5
    assert (tmp_path / "data" / "data.mdb").read_bytes() == before
    assert verify_store(tmp_path / "backup").sound


def test_a_backup_is_compacted(tmp_path: Path) -> None:
    source = LmdbStore(tmp_path / "data", map_size=1 << 20)
    _fill(source, 2000)
    source.close()

    result = backup_store(tmp_path / "data", tmp_path / "backup")

    assert result.bytes <= (tmp_path / "data" / "data.mdb").stat().st_size


@pytest.mark.parametrize("existing", ["a file", "a full directory"])
def test_a_backup_never_writes_over_anything(tmp_path: Path, existing: str) -> None:
    source = LmdbStore(tmp_path / "data")
    _fill(source, 3)
    source.close()
    target = tmp_path / "backup"
    if existing == "a file":
        target.write_text("keep me")
        error, message = StoreFormatError, "is a file, not a directory"
    else:
        target.mkdir()
        (target / "old.txt").write_text("keep me")
        error, message = StoreNotEmpty, r"backup is not empty \(found: old.txt\)"

    with pytest.raises(error, match=message):
        backup_store(tmp_path / "data", target)

    assert "keep me" in (
        target.read_text() if target.is_file() else (target / "old.txt").read_text()
    )


def test_a_backup_of_what_is_no_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()

    with pytest.raises(StoreFormatError, match="holds no Motet store"):
        backup_store(tmp_path / "data", tmp_path / "backup")

    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_a_restore_puts_a_sound_copy_in_place(tmp_path: Path) -> None:
    source = LmdbStore(tmp_path / "data")
    _fill(source, 20)
    backup_store(source, tmp_path / "backup")
    source.close()
    (tmp_path / "empty").mkdir()

    result = restore_store(tmp_path / "backup", tmp_path / "empty")

    assert result.head == 20
    restored = LmdbStore(tmp_path / "empty")
    try:
        assert restored.get_ack("cmd-19") is not None
        (ack,) = restored.append_batch(
            [Append("User-0", restored.stream_version("User-0"), [NewEvent("Created", 1, b"x")])],
            0.0,
        )
        assert ack.position == 21
    finally:
        restored.close()
    # The backup itself is untouched and can be restored again elsewhere.
    assert restore_store(tmp_path / "backup", tmp_path / "again").head == 20


def test_a_restore_into_a_store_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    for name in ("data", "other"):
        store = LmdbStore(tmp_path / name)
        _fill(store, 3 if name == "data" else 4)
        store.close()
    backup_store(tmp_path / "data", tmp_path / "backup")
    before = (tmp_path / "other" / "data.mdb").read_bytes()

    with pytest.raises(StoreNotEmpty, match=r"other is not empty \(found: data.mdb"):
        restore_store(tmp_path / "backup", tmp_path / "other")

    assert (tmp_path / "other" / "data.mdb").read_bytes() == before


def test_a_restore_of_a_damaged_backup_is_refused(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "data")
    _fill(store, 3)
    store.close()
    backup_store(tmp_path / "data", tmp_path / "backup")
    data_file = tmp_path / "backup" / "data.mdb"
    data_file.write_bytes(data_file.read_bytes()[: 3 * 4096])

    with pytest.raises(StoreFormatError, match=r"backup is not a sound backup: store: .*truncated"):
        restore_store(tmp_path / "backup", tmp_path / "restored")

    assert not (tmp_path / "restored").exists()


def test_a_restore_of_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreFormatError, match=r"nowhere is not a sound backup: .*no data.mdb"):
        restore_store(tmp_path / "nowhere", tmp_path / "restored")


def test_a_closed_store_cannot_be_copied(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "data")
    store.close()
    (tmp_path / "copy").mkdir()

    with pytest.raises(StorageError, match="closed"):
        store.copy_to(tmp_path / "copy")
