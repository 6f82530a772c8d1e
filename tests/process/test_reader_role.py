"""``motet serve --role reader`` beside a running writer on the same LMDB
directory, as real processes: the reader follows the writer's log under load
and answers what the writer answers, refuses commands, writes nothing, can
be killed without harming the writer; and the read-only handle under it
refuses writes and keeps up when the writer grows the map.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from motet.engine import Unavailable, open_engine
from motet.engine.example import GetUserById, OrderPlaced, PlaceOrder, TopSpenders, app
from motet.engine.net.client import Client, open_client
from motet.storage import LmdbStore, StorageError
from motet.storage.records import Append, Checkpoint
from tests.support.commands import create_user, place_order

USERS = 20
ORDERS = 300


async def _load(client: Client) -> int:
    """Create the users, then place ``ORDERS`` orders from 10 tasks; the
    highest Ack position."""
    last = 0
    for i in range(USERS):
        last = max(last, (await client.send(create_user(f"u{i}"))).position)

    async def orders(task: int) -> None:
        nonlocal last
        for n in range(task, ORDERS, 10):
            ack = await client.send(place_order(f"u{n % USERS}", f"o{n}", float(n % 50 + 1)))
            last = max(last, ack.position)

    async with trio.open_nursery() as nursery:
        for task in range(10):
            nursery.start_soon(orders, task)
    return last


async def _answers(client: Client, after: int) -> list[Any]:
    users = [
        await client.ask(GetUserById(user_id=f"u{i}"), after=after, timeout=20)
        for i in range(USERS)
    ]
    return [*users, await client.ask(TopSpenders(limit=5), after=after, timeout=20)]


async def test_a_reader_beside_a_loaded_writer_answers_as_the_writer_does(
    motet: Any, motet_server: Any
) -> None:
    writer = motet_server()
    reader = motet_server("--role", "reader", "--http-port", "0", data=writer.data)
    assert "role: reader" in reader.log()
    async with (
        open_client(port=writer.port) as to_writer,
        open_client(port=reader.port) as to_reader,
    ):
        seen: list[int] = []

        async def follow() -> None:
            # The reader's live subscription, while the writer is under load.
            async for event in to_reader.subscribe(0):
                seen.append(event.position)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            last = await _load(to_writer)
            with trio.fail_after(20):
                while not seen or seen[-1] < last:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert seen == list(range(1, last + 1))

        assert await _answers(to_reader, last) == await _answers(to_writer, last)
        assert await to_reader.read_stream("User-u3") == await to_writer.read_stream("User-u3")
        status = await to_reader.status()
        assert status.head_position == last
        assert [p.position for p in status.projections] == [last] * len(status.projections)

        with pytest.raises(Unavailable, match=r"role 'reader'.*PlaceOrder.*'writer'"):
            await to_reader.send(place_order("u1", "refused"))
        assert (await to_reader.status()).head_position == last

    request = urllib.request.Request(
        f"http://127.0.0.1:{reader.http_port}/commands/PlaceOrder",
        data=json.dumps({"user_id": "u1", "order_id": "x", "amount": 1}).encode(),
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 503
    assert json.load(refused.value)["error"]["code"] == "unavailable"
    with urllib.request.urlopen(
        f"http://127.0.0.1:{reader.http_port}/queries/GetUserById?user_id=u1", timeout=10
    ) as answer:
        assert json.load(answer)["user_id"] == "u1"

    # SIGKILL of the reader (mid-read or not) leaves the writer serving.
    reader.kill()
    async with open_client(port=writer.port) as to_writer:
        ack = await to_writer.send(place_order("u2", "after-kill"))
        assert ack.position == last + 1
    # A new reader after the killed one catches up from the log.
    again = motet_server("--role", "reader", data=writer.data)
    async with open_client(port=again.port) as to_reader:
        user = await to_reader.ask(GetUserById(user_id="u2"), after=ack.position, timeout=20)
        assert user["order_count"] == ORDERS // USERS + 1
    assert again.terminate() == 0
    assert writer.terminate() == 0
    checked = motet.run("verify", "--data", str(writer.data))
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_reader_saves_no_checkpoint_and_a_read_only_store_refuses_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data"
    async with open_engine(path, app, durability="none") as engine:
        for i in range(3):
            await engine.send(create_user(f"u{i}"))
        await engine.send(PlaceOrder(user_id="u1", order_id="o1", amount=5.0))
    store = LmdbStore(path, readonly=True)
    saved = {name: store.get_checkpoint(name) for name in store.checkpoint_names()}
    store.close()
    # Stale checkpoints: the reader must fold the last event itself.
    writer = LmdbStore(path)
    event = app.codec().encode_event(OrderPlaced(user_id="u2", order_id="o2", amount=7.0, at=1.0))
    writer.append_batch([Append("User-u2", 1, [event])], 1.0)
    writer.close()

    async with open_engine(path, app, role="reader") as reader:
        assert "reader" in repr(reader)
        user = await reader.ask(GetUserById(user_id="u2"), after=5)
        assert user.order_count == 1
        with pytest.raises(Unavailable, match="role 'reader'"):
            await reader.send(place_order("u1", "o3"))
        for projection in reader.projections.values():
            await projection.save()  # a no-op in a reader
    store = LmdbStore(path, readonly=True)
    try:
        assert {name: store.get_checkpoint(name) for name in store.checkpoint_names()} == saved
        with pytest.raises(StorageError, match=r"cannot append to .* read-only"):
            store.append_batch([Append("User-u9", 0, [event])], 1.0)
        with pytest.raises(StorageError, match=r"cannot save checkpoint 'users' .* read-only"):
            store.put_checkpoint("users", Checkpoint(1, 1, None))
        with pytest.raises(ValueError, match="read-only: open the engine with role='reader'"):
            async with open_engine(store, app):
                pass
    finally:
        store.close()
    with pytest.raises(ValueError, match="in-memory store"):
        async with open_engine("memory:", app, role="reader"):
            pass
    with pytest.raises(ValueError, match="role must be one of writer, reader, got 'leader'"):
        async with open_engine(path, app, role="leader"):  # type: ignore[arg-type]
            pass


_GROWING_WRITER = """
import sys
from motet.storage import Append, LmdbStore, NewEvent
store = LmdbStore(sys.argv[1], durability="none", map_size=1 << 20)
for batch in range(40):
    store.append_batch([Append(f"S-{batch}", 0, [NewEvent("Blob", 1, bytes(8000))] * 20)], 1.0)
print(store.map_size, store.head_position)
store.close()
"""


def test_a_read_only_handle_follows_a_writer_that_grew_the_map(tmp_path: Path) -> None:
    path = tmp_path / "store"
    LmdbStore(path, map_size=1 << 20).close()
    # Its map as small as the writer's, so that the writer's growth outruns it.
    reader = LmdbStore(path, readonly=True, map_size=1 << 20)
    try:
        assert reader.map_size == 1 << 20
        done = subprocess.run(
            [sys.executable, "-c", _GROWING_WRITER, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        map_size, head = (int(n) for n in done.stdout.split())
        assert map_size > 1 << 20
        assert reader.wait_for_commit(0, 10.0) == head == 800
        events = reader.read_all(0, 1000)
        assert [e.position for e in events] == list(range(1, 801))
        assert reader.map_size == map_size
    finally:
        reader.close()


def test_a_reader_without_a_store_says_so_in_one_line(motet: Any) -> None:
    done = motet.run(
        "serve", "--role", "reader", "--data", "missing", "--port", "0", "--no-metrics"
    )
    assert done.returncode == 1, done.stderr
    assert "missing holds no Motet store (no data.mdb)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (motet.directory / "missing").exists()
