"""Closing and reopening an engine: state survives, snapshots are written, used,
ignored when their schema is old and skipped when corrupt; the store's format
is checked on open and its map grows by itself."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest
import trio

from motet.engine import App, CommandRejected, StoreFormatError, open_engine
from motet.engine.example import CreateUser, PlaceOrder, UpdateUser, UserState, app, user
from motet.storage import Append, LmdbStore, MemoryStore, Snapshot
from tests.support.commands import place_order
from tests.support.folds import fold_user as fold

STREAM = "User-u1"
CREATE = CreateUser(user_id="u1", name="Ada", email="ada@example.org", password="pw", city="Oslo")
_state_decoder = msgspec.msgpack.Decoder(UserState)


def order(n: int, amount: float = 10) -> PlaceOrder:
    return place_order("u1", f"o{n}", amount)


async def folded(engine: Any, stream: str = STREAM) -> UserState:
    return fold([record.data for record in await engine.read_stream(stream)])


async def loaded_state(engine: Any, stream: str = STREAM) -> UserState:
    """The state the aggregate's actor loads, without changing it: a rejected
    command makes the actor load (snapshot + later events) and writes nothing."""
    head = engine.head_position
    with pytest.raises(CommandRejected, match="already exists"):
        await engine.send(CREATE)
    assert engine.head_position == head
    actor = engine.registry.live(stream)
    assert actor is not None
    return actor.state  # type: ignore[no-any-return]


async def write_history(path: Path, orders: int, **options: Any) -> UserState:
    """Create u1 and place ``orders`` orders (amounts 1, 2, 3…); return the live state."""
    async with open_engine(path, app, **options) as engine:
        await engine.send(CREATE)
        for n in range(1, orders + 1):
            await engine.send(order(n, amount=n))
        await engine.writer.wait_idle()
        actor = engine.registry.live(STREAM)
        assert actor is not None
        return actor.state  # type: ignore[no-any-return]


def put_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Overwrite u1's snapshot through the store's own append (snapshot only)."""
    store = LmdbStore(path)
    try:
        version = store.stream_version(STREAM)
        [result] = store.append_batch([Append(STREAM, version, [], snapshot=snapshot)], time.time())
        assert result.version == version  # type: ignore[union-attr]
    finally:
        store.close()


# -- close and reopen --------------------------------------------------------------


async def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store"
    async with open_engine(path, app) as engine:
        await engine.send(CREATE)
        for n in range(1, 8):
            await engine.send(order(n, amount=n * 1.5))
        await engine.send(UpdateUser(user_id="u1", city="Bergen"))
        before = engine.registry.live(STREAM).state  # type: ignore[union-attr]
        assert before == await folded(engine)
        head = engine.head_position

    async with open_engine(path, app) as engine:
        assert engine.head_position == head == 9
        assert await folded(engine) == before
        assert await loaded_state(engine) == before
        assert (before.order_count, before.total_spent, before.city) == (7, 42.0, "Bergen")
        ack = await engine.send(order(99))
        assert (ack.stream, ack.version, ack.position) == (STREAM, 10, 10)


# -- snapshots ----------------------------------------------------------------------


def unsealed(engine: Any, state: bytes) -> bytes:
    """A snapshot's state as encoded: the user's snapshots are sealed (they
    hold personal data)."""
    opened = engine.codec.open_sealed(STREAM, state)
    assert opened is not None
    return opened[0]


async def test_a_snapshot_is_written_every_n_events_and_loaded_on_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    live = await write_history(path, orders=11, snapshot_every=5)  # 12 events

    async with open_engine(path, app, snapshot_every=5) as engine:
        snapshot = engine.store.load_snapshot(STREAM)
        assert snapshot is not None
        assert (snapshot.version, snapshot.schema_version) == (10, user.state_version)
        first_ten = [r.data for r in await engine.read_stream(STREAM)][:10]
        # The user's state holds personal data: the snapshot is sealed under its key.
        opened = engine.codec.open_sealed(STREAM, snapshot.state)
        assert opened is not None and opened[0] != snapshot.state
        assert opened[1] == [STREAM.partition("-")[2]]
        assert _state_decoder.decode(opened[0]) == fold(first_ten)
        assert await loaded_state(engine) == live == await folded(engine)
        assert engine.registry.live(STREAM).version == 12  # type: ignore[union-attr]


async def test_reopen_really_starts_from_the_snapshot(tmp_path: Path) -> None:
    # A snapshot saying something the events do not: only a loader that
    # uses it can see order_count=999.
    path = tmp_path / "store"
    live = await write_history(path, orders=11, snapshot_every=5)
    marked = msgspec.structs.replace(live, order_count=999)
    put_snapshot(path, Snapshot(12, user.state_version, msgspec.msgpack.encode(marked)))

    async with open_engine(path, app, snapshot_every=5) as engine:
        assert await loaded_state(engine) == marked
        # Events after the snapshot are folded on top of it.
        ack = await engine.send(order(50, amount=50))
        assert ack.version == 13
        state = engine.registry.live(STREAM).state  # type: ignore[union-attr]
        assert (state.order_count, state.total_spent) == (1000, live.total_spent + 50)


async def test_a_snapshot_of_an_old_state_schema_is_ignored_and_replaced(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    live = await write_history(path, orders=11, snapshot_every=5)
    # Poison the schema-1 snapshot so that using it would show.
    marked = msgspec.structs.replace(live, order_count=999)
    put_snapshot(path, Snapshot(12, 1, msgspec.msgpack.encode(marked)))

    user_v2 = dataclasses.replace(user, state_version=2)
    app_v2 = App(aggregates=(user_v2,))
    async with open_engine(path, app_v2, snapshot_every=5) as engine:
        assert await loaded_state(engine) == live  # rebuilt from events
        await engine.writer.wait_idle()
        snapshot = engine.store.load_snapshot(STREAM)
        assert snapshot is not None
        assert (snapshot.version, snapshot.schema_version) == (12, 2)
        assert _state_decoder.decode(unsealed(engine, snapshot.state)) == live
        assert engine.statistics().snapshots == 1

    # The old code now finds a schema it does not know, and rebuilds too.
    async with open_engine(path, app, snapshot_every=5) as engine:
        assert await loaded_state(engine) == live


@pytest.mark.parametrize("how", ["state bytes", "record bytes"])
async def test_a_corrupt_snapshot_falls_back_to_full_replay(tmp_path: Path, how: str) -> None:
    path = tmp_path / "store"
    live = await write_history(path, orders=11, snapshot_every=5)
    if how == "state bytes":
        # A well-formed snapshot record whose state does not decode.
        put_snapshot(path, Snapshot(12, user.state_version, b"\xc1 not msgpack"))
    else:
        # The record itself is garbage: written straight into LMDB.
        with lmdb.open(str(path), max_dbs=10) as env:
            snapshots = env.open_db(b"snapshots", create=False)
            with env.begin(write=True, db=snapshots) as txn:
                assert txn.get(STREAM.encode()) is not None
                txn.put(STREAM.encode(), b"\x00garbage\xff\xc1")

    async with open_engine(path, app, snapshot_every=5) as engine:
        assert await loaded_state(engine) == live
        assert engine.registry.live(STREAM).version == 12  # type: ignore[union-attr]
        ack = await engine.send(order(77))
        assert ack.version == 13
        await engine.writer.wait_idle()
        # The unreadable snapshot was replaced by a good one.
        snapshot = engine.store.load_snapshot(STREAM)
        assert snapshot is not None
        assert snapshot.schema_version == user.state_version
        assert snapshot.version == 12
        assert _state_decoder.decode(unsealed(engine, snapshot.state)) == live


# -- in-memory engine ------------------------------------------------------------------


async def test_open_engine_without_a_path_uses_a_memory_store() -> None:
    async with open_engine(None, app) as engine:
        assert isinstance(engine.store, MemoryStore)
        assert (await engine.send(CREATE)).version == 1
        ack = await engine.send(order(1, amount=12.5))
        assert (ack.stream, ack.version, ack.position) == (STREAM, 2, 2)
        state = engine.registry.live(STREAM).state  # type: ignore[union-attr]
        assert (state.order_count, state.total_spent) == (1, 12.5)
        assert await folded(engine) == state
        with pytest.raises(CommandRejected, match=r"amount must be > 0, got 0"):
            await engine.send(order(2, amount=0))
        assert engine.head_position == 2


# -- the store's format --------------------------------------------------------------


async def test_opening_a_directory_of_something_else_raises_store_format_error(
    tmp_path: Path,
) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(StoreFormatError, match="holds no Motet store"):
        async with open_engine(other, app):
            pass  # pragma: no cover
    assert os.listdir(other) == ["cat.jpg"]
    assert (other / "cat.jpg").read_bytes() == b"\xff\xd8\xff"


async def test_opening_a_foreign_lmdb_environment_raises_store_format_error(
    tmp_path: Path,
) -> None:
    foreign = tmp_path / "foreign"
    with lmdb.open(str(foreign)) as env, env.begin(write=True) as txn:
        txn.put(b"some", b"thing")
    with pytest.raises(StoreFormatError, match="not a Motet store"):
        async with open_engine(foreign, app):
            pass  # pragma: no cover
    with lmdb.open(str(foreign)) as env, env.begin() as txn:
        assert txn.get(b"some") == b"thing"


async def test_opening_a_file_raises_store_format_error(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("hello")
    with pytest.raises(StoreFormatError, match="is a file"):
        async with open_engine(a_file, app):
            pass  # pragma: no cover
    assert a_file.read_text() == "hello"


# -- map growth -----------------------------------------------------------------------


async def test_the_map_grows_by_itself_through_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "store"
    small = 64 * 1024
    commands = 3_000
    senders = 20
    versions: list[int] = []
    async with open_engine(path, app, store_options={"map_size": small}) as engine:
        await engine.send(CREATE)

        async def sender(task: int) -> None:
            for n in range(task, commands - 1, senders):
                versions.append((await engine.send(order(n, amount=1))).version)

        async with trio.open_nursery() as nursery:
            for task in range(senders):
                nursery.start_soon(sender, task)
        assert sorted(versions) == list(range(2, commands + 1))
        assert engine.head_position == commands
        assert engine.store.map_size > small  # type: ignore[attr-defined]
        live = engine.registry.live(STREAM).state  # type: ignore[union-attr]
        assert live.order_count == commands - 1

    async with open_engine(path, app, store_options={"map_size": small}) as engine:
        assert engine.head_position == commands
        assert await folded(engine) == live
        assert (await engine.send(order(commands))).version == commands + 1


async def test_an_error_raised_in_the_body_comes_out_as_itself() -> None:
    caught: CommandRejected | None = None
    try:
        async with open_engine(None, app) as engine:
            await engine.send(UpdateUser(user_id="nobody", name="N"))
    except CommandRejected as exc:
        caught = exc
    assert caught is not None
    assert str(caught) == "user 'nobody' does not exist"

    with pytest.raises(KeyError, match="mine"):
        async with open_engine(None, app):
            raise KeyError("mine")
