"""Damaged store files: refused with one line and an exit status, never a signal.

A real store is written by the engine in a temporary directory, then damaged
with plain file operations (truncation, a changed byte), and ``motet serve``,
``motet inspect`` and ``motet verify`` run on it as real processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from motet.engine import open_engine
from motet.engine.example import CreateUser, PlaceOrder
from motet.engine.example import app as example_app
from motet.storage import CodecError, LmdbStore, StorageError
from motet.storage.verify import verify_store
from tests.conftest import motet_command

USERS = 150


def write_store(path: Path) -> None:
    async def main() -> None:
        async with open_engine(path, example_app) as engine:
            for i in range(USERS):
                command = CreateUser(
                    user_id=f"u{i}", name=f"N{i}", email=f"u{i}@example.com", password="pw"
                )
                await engine.send(command, command_id=f"create-{i}")
                await engine.send(PlaceOrder(user_id=f"u{i}", order_id=f"o{i}", amount=5.0))

    trio.run(main)


@pytest.fixture(scope="module")
def sound_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sound") / "data"
    write_store(path)
    return path


@pytest.fixture
def store_copy(sound_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(sound_store, copy)
    (copy / "lock.mdb").unlink()
    return copy


def motet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*motet_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def truncate(path: Path, percent: int) -> None:
    data = path / "data.mdb"
    os.truncate(data, data.stat().st_size * percent // 100)


def change_a_byte_of_an_event(path: Path, stream: str) -> None:
    """Change one byte of the payload of ``stream``'s first event: in every
    copy of its record in the file (LMDB leaves stale copies in free pages)."""
    store = LmdbStore(path, readonly=True)
    try:
        with store._env.begin() as txn:
            position = store.read_stream(stream)[0].position
            record = bytes(txn.get(position.to_bytes(8, "big"), db=store._log))
    finally:
        store.close()
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    at = raw.find(record)
    assert at > 0
    while at != -1:
        raw[at + len(record) - 3] ^= 0x01
        at = raw.find(record, at + 1)
    data.write_bytes(bytes(raw))


COMMANDS = {
    "serve": ["serve", "--port", "0", "--no-metrics"],
    "inspect": ["inspect"],
    "inspect --stream": ["inspect", "--stream", "User-u1"],
    "verify": ["verify"],
}


def assert_refused(result: subprocess.CompletedProcess[str], *, lines: int = 1) -> str:
    assert result.returncode > 0, (
        f"exit {result.returncode} ({signal.Signals(-result.returncode).name})"
        if result.returncode < 0
        else result
    )
    assert "Traceback" not in result.stderr, result.stderr
    errors = result.stderr.strip().splitlines()
    assert 1 <= len(errors) <= lines, errors
    return result.stderr


@pytest.mark.parametrize("percent", [50, 90])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_truncated_data_file_is_refused_in_one_line(
    store_copy: Path, percent: int, command: str
) -> None:
    truncate(store_copy, percent)

    result = motet(*COMMANDS[command], "--data", str(store_copy))

    errors = assert_refused(result, lines=2)
    assert "data.mdb is damaged" in errors and "truncated" in errors


def test_a_truncated_data_file_is_refused_by_the_embedded_api(store_copy: Path) -> None:
    truncate(store_copy, 50)
    before = (store_copy / "data.mdb").read_bytes()

    with pytest.raises(StorageError, match=r"data.mdb is damaged: it is .* bytes but"):
        LmdbStore(store_copy)

    assert (store_copy / "data.mdb").read_bytes() == before


def test_a_changed_byte_inside_an_event_is_detected_by_read_and_verify(store_copy: Path) -> None:
    change_a_byte_of_an_event(store_copy, "User-u17")

    store = LmdbStore(store_copy, readonly=True)
    try:
        with pytest.raises(CodecError, match=r"position \d+ \(event of 'User-u17'\).*checksum"):
            store.read_stream("User-u17")
        assert len(store.read_stream("User-u18")) == 2
        # The log read stops right before the damaged record, then names it.
        good = store.read_all(0, 10_000)
        with pytest.raises(CodecError, match=rf"position {len(good) + 1} .*checksum"):
            store.read_all(len(good), 10_000)
    finally:
        store.close()

    found = verify_store(store_copy)
    assert not found.sound
    assert f"log position {len(good) + 1}: the record is damaged: checksum mismatch" in str(
        found.problems[0]
    )

    result = motet("verify", "--data", str(store_copy))
    assert result.returncode == 1
    assert f"log position {len(good) + 1}: the record is damaged" in result.stderr
    result = motet("inspect", "--data", str(store_copy), "--stream", "User-u17")
    assert_refused(result)
    assert "checksum mismatch" in result.stderr


def test_a_sound_store_verifies(sound_store: Path, tmp_path: Path) -> None:
    result = motet("verify", "--data", str(sound_store))

    assert result.returncode == 0, result.stderr
    assert f"sound ({2 * USERS} events, {USERS} streams, {USERS} acks)" in result.stdout


@pytest.mark.parametrize("seed", [19, 32, 38, 3])
def test_random_damage_never_kills_inspect_or_verify(store_copy: Path, seed: int) -> None:
    import random

    rng = random.Random(seed)
    data = store_copy / "data.mdb"
    raw = bytearray(data.read_bytes())
    for _ in range(rng.choice([1, 5, 50])):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    data.write_bytes(bytes(raw))

    for args in (["inspect"], ["inspect", "--stream", f"User-u{seed}"], ["verify"]):
        result = motet(*args, "--data", str(store_copy), timeout=30)
        assert result.returncode in (0, 1), (args, result)
        assert "Traceback" not in result.stderr, (args, result.stderr)
