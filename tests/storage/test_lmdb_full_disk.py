"""A store on a full disk: a clear error, never a signal; an existing store still opens.

Opening a store must not write to it (an open that rewrote the format record
failed on a full disk), and a new store on a full disk must be refused before
LMDB maps a lock file with no disk blocks behind it (SIGBUS). The full disk is
a small tmpfs, so these tests need root; elsewhere they are skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from motet.storage import Append, LmdbStore, NewEvent, StorageError
from tests.conftest import motet_command

TS = 1_700_000_000.0


def events(n: int, size: int = 100) -> list[NewEvent]:
    return [NewEvent("E", 1, os.urandom(size)) for _ in range(n)]


def digest(path: Path) -> str:
    return hashlib.sha256((path / "data.mdb").read_bytes()).hexdigest()


def test_opening_an_existing_store_writes_nothing(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    store.append_batch([Append("A-1", 0, events(3))], TS)
    store.close()
    before = digest(tmp_path / "s")

    for readonly in (False, True, False):
        store = LmdbStore(tmp_path / "s", readonly=readonly)
        assert store.read_stream("A-1")[-1].version == 3
        store.close()

    assert digest(tmp_path / "s") == before


def fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_new_store_on_a_full_disk_is_refused_in_one_line(full_disk: Path) -> None:
    fill(full_disk)

    with pytest.raises(StorageError, match=r"^the disk is full .* opening the store"):
        LmdbStore(full_disk / "embedded")
    result = subprocess.run(
        [*motet_command(), "serve", "--data", str(full_disk / "new"), "--no-metrics"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines() == [
        f"motet: error: the disk is full (no space left on device) while opening the store "
        f"at {full_disk / 'new'}: nothing was changed"
    ]


def test_an_existing_store_on_a_full_disk_opens_and_fails_only_its_commits(
    full_disk: Path, tmp_path: Path
) -> None:
    store = LmdbStore(tmp_path / "s")
    store.append_batch([Append("A-1", 0, events(20))], TS)
    store.close()
    shutil.copytree(tmp_path / "s", full_disk / "s")
    fill(full_disk)

    store = LmdbStore(full_disk / "s")
    try:
        assert store.stream_version("A-1") == 20
        with pytest.raises(StorageError, match=r"^the disk is full"):
            for version in range(20, 10_000, 50):
                store.append_batch([Append("A-1", version, events(50, 4000))], TS)
        head = store.head_position
        assert store.read_stream("A-1")[-1].position == head
    finally:
        store.close()
    reopened = LmdbStore(full_disk / "s", readonly=True)
    assert reopened.head_position == head
    reopened.close()
