"""``motet export`` beside a running ``motet serve``, ``motet import`` into a
new directory and a second server on it, as real processes: both servers
answer every ``read`` with the same bytes, the same positions and queries,
and the imported one answers a retried command id with the original Ack; an
export taken under load holds exactly the commands acknowledged up to its
last position."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import trio

from motet.engine.example import GetUserById
from motet.engine.net.client import open_client
from motet.storage import LmdbStore
from motet.storage.records import Ack
from tests.support.commands import create_user, place_order

USERS = 8
ORDERS = 120


def _raw_reads(port: int, streams: list[str]) -> list[bytes]:
    """Each stream's ``read`` reply line, exactly as the server sent it."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = sock.makefile("rb")
        for number, stream in enumerate(streams, 1):
            request = {"id": number, "op": "read", "stream": stream, "from": 0, "limit": 10000}
            sock.sendall(json.dumps(request).encode() + b"\n")
            replies.append(lines.readline())
    return replies


async def test_a_log_exported_from_a_running_server_and_imported_answers_the_same(
    motet: Any, motet_server: Any, tmp_path: Path
) -> None:
    source = motet_server()
    acks: dict[str, Ack] = {}
    async with open_client(port=source.port) as client:
        for i in range(USERS):
            acks[f"c{i}"] = await client.send(
                create_user(f"u{i}", city="Oslo"), command_id=f"c{i}", correlation_id="setup"
            )
        for n in range(ORDERS):
            acks[f"o{n}"] = await client.send(
                place_order(f"u{n % USERS}", f"o{n}", n + 0.25),
                command_id=f"o{n}",
                correlation_id=f"corr-{n}",
                causation_id=f"c{n % USERS}",
            )
    head = max(ack.position for ack in acks.values())
    export_file = tmp_path / "events.ndjson"

    exported = motet.run("export", "--data", str(source.data), "--out", str(export_file))
    assert exported.returncode == 0, exported.stderr
    imported = motet.run("import", str(export_file), "--data", str(tmp_path / "copy"))
    assert imported.returncode == 0, imported.stderr
    assert f"imported {head:,} events (positions 1..{head:,})" in imported.stderr
    copy = motet_server(data=tmp_path / "copy")

    streams = [f"User-u{i}" for i in range(USERS)]
    original = _raw_reads(source.port, streams)
    assert _raw_reads(copy.port, streams) == original
    assert b'"correlation_id":"corr-' in original[0]
    async with open_client(port=source.port) as a, open_client(port=copy.port) as b:
        assert (await b.status()).head_position == (await a.status()).head_position == head
        for i in range(USERS):
            query = GetUserById(user_id=f"u{i}")
            assert await b.ask(query, after=head, timeout=20) == await a.ask(
                query, after=head, timeout=20
            )
        retried = await b.send(place_order("u5", "o5", 5.25), command_id="o5")
        assert retried == acks["o5"]
        fresh = await b.send(place_order("u5", "new", 1.0), command_id="new")
        assert fresh.position == head + 1
    assert copy.terminate() == 0
    assert source.terminate() == 0


async def test_an_export_under_load_is_a_prefix_of_the_acknowledged_commands(
    motet: Any, motet_server: Any, tmp_path: Path
) -> None:
    server = motet_server()
    acks: dict[str, Ack] = {}
    export_file = tmp_path / "events.ndjson"
    async with open_client(port=server.port) as client:
        for i in range(USERS):
            acks[f"c{i}"] = await client.send(create_user(f"u{i}"), command_id=f"c{i}")
        done = trio.Event()

        async def orders(task: int) -> None:
            n = task
            while not done.is_set():
                acks[f"o{n}"] = await client.send(
                    place_order(f"u{n % USERS}", f"o{n}", 1.0), command_id=f"o{n}"
                )
                n += 4

        async with trio.open_nursery() as nursery:
            for task in range(4):
                nursery.start_soon(orders, task)
            await trio.sleep(0.3)
            before = max(ack.position for ack in acks.values())
            exported = await trio.to_thread.run_sync(
                lambda: motet.run("export", "--data", str(server.data), "--out", str(export_file))
            )
            await trio.sleep(0.2)
            done.set()
    assert exported.returncode == 0, exported.stderr
    last = json.loads(export_file.read_bytes().splitlines()[-1])["last_position"]
    assert before <= last < max(ack.position for ack in acks.values())

    imported = motet.run("import", str(export_file), "--data", str(tmp_path / "copy"))
    assert imported.returncode == 0, imported.stderr
    copy = LmdbStore(tmp_path / "copy", readonly=True)
    try:
        assert copy.head_position == last
        for command_id, ack in acks.items():
            assert copy.get_ack(command_id) == (ack if ack.position <= last else None)
    finally:
        copy.close()
    assert server.terminate() == 0
