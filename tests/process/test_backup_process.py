"""``motet backup`` beside a real ``motet serve`` under load, ``motet restore``
and a server on the restored store, as real processes: the backup verifies,
holds exactly the commands acknowledged up to one position, and a server on
its restore answers a retried command id with the original Ack."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import trio

from motet.engine.net.client import open_client
from motet.storage import LmdbStore
from motet.storage.records import Ack
from tests.support.commands import create_user, place_order
from tests.support.logs import read_everything

USERS = 20
TASKS = 10


async def _backup_under_load(
    motet: Any, server: Any, destinations: list[Path]
) -> tuple[dict[str, Ack], list[tuple[Path, int, subprocess.CompletedProcess[str]]]]:
    """Keep ``TASKS`` clients placing orders (each with a command id) while
    ``motet backup`` runs once per destination; return every Ack by command
    id, and per backup the highest position acknowledged before it started
    and its outcome."""
    acks: dict[str, Ack] = {}
    backups: list[tuple[Path, int, subprocess.CompletedProcess[str]]] = []
    async with open_client(port=server.port) as client:
        for i in range(USERS):
            acks[f"create-{i}"] = await client.send(create_user(f"u{i}"), command_id=f"create-{i}")
        done = trio.Event()

        async def orders(task: int) -> None:
            n = task
            while not done.is_set():
                command_id = f"order-{n}"
                acks[command_id] = await client.send(
                    place_order(f"u{n % USERS}", f"o{n}", float(n % 50 + 1)),
                    command_id=command_id,
                )
                n += TASKS

        async with trio.open_nursery() as nursery:
            for task in range(TASKS):
                nursery.start_soon(orders, task)
            for destination in destinations:
                await trio.sleep(0.3)
                before = max(ack.position for ack in acks.values())
                result = await trio.to_thread.run_sync(
                    lambda d=destination: motet.run(
                        "backup", "--data", str(server.data), str(d), timeout=60
                    )
                )
                backups.append((destination, before, result))
            # Writes go on after the last backup, so none of them saw the final log.
            await trio.sleep(0.3)
            done.set()
    return acks, backups


async def test_a_backup_under_load_is_a_sound_prefix_of_the_acknowledged_commands(
    motet: Any, motet_server: Any, tmp_path: Path
) -> None:
    server = motet_server()
    destinations = [tmp_path / "backup-1", tmp_path / "backup-2"]

    acks, backups = await _backup_under_load(motet, server, destinations)

    final = max(ack.position for ack in acks.values())
    heads = []
    for destination, before, result in backups:
        assert result.returncode == 0, result.stderr
        assert "verified sound" in result.stdout
        verified = motet.run("verify", "--data", str(destination))
        assert verified.returncode == 0, verified.stderr
        copy = LmdbStore(destination, readonly=True)
        try:
            head = copy.head_position
            # Everything acknowledged before the backup began is in it, and
            # the load went on past it.
            assert before <= head < final
            assert [e.position for e in read_everything(copy)] == list(range(1, head + 1))
            for command_id, ack in acks.items():
                if ack.position <= head:
                    assert copy.get_ack(command_id) == ack, command_id
                else:
                    assert copy.get_ack(command_id) is None, command_id
        finally:
            copy.close()
        heads.append(head)
    assert heads[0] < heads[1]
    assert server.terminate() == 0

    # A server on a restore of the first backup: a retried command gets its
    # original Ack; a command after the backup's end runs again, as new.
    restored = tmp_path / "restored"
    result = motet.run("restore", str(destinations[0]), "--data", str(restored))
    assert result.returncode == 0, result.stderr
    assert f"up to position {heads[0]:,}" in result.stdout
    orders = sorted(
        (ack.position, int(command_id.split("-")[1]))
        for command_id, ack in acks.items()
        if command_id.startswith("order-")
    )
    kept = next(n for position, n in reversed(orders) if position <= heads[0])
    lost = next(n for position, n in orders if position > heads[0])
    again = motet_server(data=restored)
    async with open_client(port=again.port) as client:
        for n, expected in ((kept, acks[f"order-{kept}"]), (lost, None)):
            ack = await client.send(
                place_order(f"u{n % USERS}", f"o{n}", float(n % 50 + 1)), command_id=f"order-{n}"
            )
            assert ack == (expected or Ack(acks[f"order-{lost}"].stream, ack.version, heads[0] + 1))
    assert again.terminate() == 0


def test_restore_refuses_a_data_directory_that_holds_a_store(motet: Any, tmp_path: Path) -> None:
    assert motet.run("demo", "--data", str(tmp_path / "data")).returncode == 0
    assert (
        motet.run("backup", "--data", str(tmp_path / "data"), str(tmp_path / "b")).returncode == 0
    )

    refused = motet.run("restore", str(tmp_path / "b"), "--data", str(tmp_path / "data"))

    assert refused.returncode == 1
    assert refused.stderr == (
        f"motet: error: {tmp_path / 'data'} is not empty (found: data.mdb, lock.mdb); give a "
        "new or empty directory, nothing is ever written over\n"
    )
