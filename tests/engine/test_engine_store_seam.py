"""The engine's side of the store contract: how a store is named, the
causal metadata of a command, and what the runtime promises a store that
blocks or that other processes append to as well."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from motet.actors.definition import Aggregate
from motet.actors.projection import Projection, Query
from motet.engine import App, Engine, open_engine
from motet.engine.example import (
    CreateUser,
    GetUserById,
    PlaceOrder,
    UserCreated,
    app,
)
from motet.storage import Append, LmdbStore, MemoryStore, Metadata, StorageError
from motet.storage.records import (
    Ack,
    Checkpoint,
    GroupProgress,
    ParkedEvent,
    RecordedEvent,
    Snapshot,
    StoredEvent,
    StreamDeletion,
)


def create(user: str) -> CreateUser:
    return CreateUser(user_id=user, name=user.title(), email=f"{user}@example.org", password="pw")


def order(user: str, order_id: str, amount: float = 10.0) -> PlaceOrder:
    return PlaceOrder(user_id=user, order_id=order_id, amount=amount)


async def first_events(engine: Engine, count: int, after: int = 0) -> list[RecordedEvent]:
    """The first ``count`` events :meth:`Engine.subscribe` yields after ``after``."""
    found: list[RecordedEvent] = []
    with trio.fail_after(5):
        async with aclosing(engine.subscribe(after)) as events:  # type: ignore[type-var]
            async for event in events:
                found.append(event)
                if len(found) == count:
                    break
    return found


# --- correlation and causation ---------------------------------------------------------


async def test_correlation_and_causation_ids_come_back_with_the_events() -> None:
    async with open_engine(None, app) as engine:
        await engine.send(create("ann"), correlation_id="corr-1")
        ack = await engine.send(
            order("ann", "o1"), command_id="cmd-2", correlation_id="corr-1", causation_id="evt-1"
        )

        stream = await engine.read_stream(ack.stream)
        subscribed = await first_events(engine, 2)

    assert [event.metadata for event in stream] == [
        Metadata(correlation_id="corr-1"),
        Metadata(command_id="cmd-2", correlation_id="corr-1", causation_id="evt-1"),
    ]
    assert subscribed == stream


async def test_submit_and_the_mediator_carry_the_causal_ids_too() -> None:
    async with open_engine(None, app) as engine:
        await engine.mediator.send(create("bob"), correlation_id="c", causation_id="m")
        done: list[Ack | BaseException | None] = []
        engine.submit(
            order("bob", "o1"),
            lambda ack, error: done.append(error or ack),
            correlation_id="c2",
        )
        with trio.fail_after(5):
            while not done:
                await trio.sleep(0.01)
        assert isinstance(done[0], Ack)

        stream = await engine.read_stream("User-bob")

    assert [(e.metadata.correlation_id, e.metadata.causation_id) for e in stream] == [
        ("c", "m"),
        ("c2", None),
    ]


@pytest.mark.parametrize("field", ["correlation_id", "causation_id"])
@pytest.mark.parametrize("value", [7, b"bytes", ["x"]])
async def test_a_causal_id_that_is_not_a_string_is_refused_naming_the_field(
    field: str, value: Any
) -> None:
    async with open_engine(None, app) as engine:
        with pytest.raises(ValueError, match=rf"^{field} must be a string or None, got "):
            await engine.send(create("cat"), **{field: value})
        with pytest.raises(ValueError, match=rf"^{field} must be a string or None"):
            engine.submit(create("cat"), lambda ack, error: None, **{field: value})
        assert engine.head_position == 0
        assert engine.metrics is not None
        sample = engine.metrics.registry.get_sample_value(
            "motet_commands_total", {"type": "CreateUser", "outcome": "invalid"}
        )
        assert sample == 2


# --- naming the store ------------------------------------------------------------------


@pytest.mark.parametrize("where", [None, "memory:"])
async def test_none_and_memory_url_open_a_memory_store(where: str | None) -> None:
    async with open_engine(where, app) as engine:
        assert isinstance(engine.store, MemoryStore)
        assert engine.status().durability == "none"


@pytest.mark.parametrize("as_text", [False, True])
async def test_a_directory_path_opens_an_lmdb_store(tmp_path: Path, as_text: bool) -> None:
    path = tmp_path / "data"
    async with open_engine(str(path) if as_text else path, app, durability="none") as engine:
        assert isinstance(engine.store, LmdbStore)
        assert engine.status().durability == "none"
        await engine.send(create("dan"))
    async with open_engine(path, app) as engine:
        assert engine.head_position == 1
        assert engine.status().durability == "sync"


async def test_store_options_reach_the_lmdb_store(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "d", app, store_options={"map_size": 1 << 21}) as engine:
        assert isinstance(engine.store, LmdbStore)
        assert engine.store.map_size == 1 << 21


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1", r"unknown store URL scheme 'redis'"),
        ("lmdb://./data", r"unknown store URL scheme 'lmdb'"),
    ],
)
async def test_a_url_of_an_unsupported_store_is_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        async with open_engine(url, app):
            pass  # pragma: no cover


async def test_a_given_store_is_used_and_left_open() -> None:
    store = MemoryStore()
    async with open_engine(app=app, store=store) as engine:
        assert engine.store is store
        await engine.send(create("eve"))
    assert store.head_position == 1
    assert store.read_all()[0].stream == "User-eve"  # still open
    async with open_engine(store, app) as engine:  # positionally, too
        assert engine.head_position == 1
    store.close()


async def test_store_object_with_path_options_or_path_is_refused(tmp_path: Path) -> None:
    store = MemoryStore()
    with pytest.raises(ValueError, match="apply to a store opened from a path"):
        async with open_engine(store=store, app=app, durability="sync"):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="give a path or a store, not both"):
        async with open_engine(tmp_path, app, store=store):
            pass  # pragma: no cover
    with pytest.raises(TypeError, match="needs the app"):
        async with open_engine(store=store):
            pass  # pragma: no cover


# --- projection handlers see the public record ---------------------------------------


class Note(msgspec.Struct, frozen=True, kw_only=True, tag="Note"):
    pad_id: str
    text: str


class Noted(msgspec.Struct, frozen=True, kw_only=True, tag="Noted"):
    text: str


class GetRecords(msgspec.Struct, frozen=True, kw_only=True, tag="GetRecords"):
    pass


def _decide(state: int, command: Note) -> list[Noted]:
    return [Noted(text=command.text)]


def _on_noted(model: list[Any], event: Noted, record: RecordedEvent) -> None:
    model.append(record)


pads = App(
    aggregates=(
        Aggregate(
            name="Pad",
            state_type=int,
            initial=0,
            decide=_decide,
            evolve=lambda state, event: state + 1,
            commands={Note: "pad_id"},
            events=(Noted,),
        ),
    ),
    projections=(Projection(name="records", initial=list, handlers={Noted: _on_noted}),),
    queries=(Query(GetRecords, "records", lambda model, query: list(model)),),
)


async def test_projection_handlers_receive_the_decoded_recorded_event() -> None:
    async with open_engine(None, pads) as engine:
        ack = await engine.send(Note(pad_id="p", text="hello"), correlation_id="corr")
        (record,) = await engine.ask(GetRecords(), after=ack.position)

    assert type(record) is RecordedEvent
    assert record.data == Noted(text="hello")
    assert (record.position, record.stream, record.version, record.type) == (1, "Pad-p", 1, "Noted")
    assert record.metadata.correlation_id == "corr"


# --- a store whose calls block ---------------------------------------------------------


class BlockingStore:
    """A memory store that says its calls block (as a network store's do),
    and fails any call made on the thread that created it (the event loop's)."""

    blocking = True
    shared = False

    def __init__(self) -> None:
        self._inner = MemoryStore()
        self._loop_thread = threading.get_ident()
        self.calls: Counter[str] = Counter()
        self.wrong_thread: list[str] = []

    def __repr__(self) -> str:
        return f"<BlockingStore {self._inner!r}>"

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if threading.get_ident() == self._loop_thread:
            self.wrong_thread.append(name)
            raise AssertionError(f"{name} was called on the event loop's thread")

    @property
    def durability(self) -> str:
        return self._inner.durability

    @property
    def head_position(self) -> int:
        return self._inner.head_position

    def append_batch(
        self, appends: Sequence[Append], timestamp: float, keys: Any = None
    ) -> list[Any]:
        self._enter("append_batch")
        return self._inner.append_batch(appends, timestamp, keys)

    def get_key(self, subject: str) -> bytes | None:
        self._enter("get_key")
        return self._inner.get_key(subject)

    def get_keys(self, subjects: Sequence[str]) -> dict[str, bytes]:
        self._enter("get_keys")
        return self._inner.get_keys(subjects)

    def put_keys(self, keys: Any) -> None:
        self._enter("put_keys")
        self._inner.put_keys(keys)

    def read_stream(
        self, stream: str, after_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        self._enter("read_stream")
        return self._inner.read_stream(stream, after_version, limit)

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        self._enter("read_all")
        return self._inner.read_all(after_position, limit)

    def read_category(
        self, category: str, after_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        self._enter("read_category")
        return self._inner.read_category(category, after_position, limit)

    def stream_version(self, stream: str) -> int:
        self._enter("stream_version")
        return self._inner.stream_version(stream)

    def streams(self) -> list[tuple[str, int]]:
        self._enter("streams")
        return self._inner.streams()

    def load_snapshot(self, stream: str) -> Snapshot | None:
        self._enter("load_snapshot")
        return self._inner.load_snapshot(stream)

    def get_ack(self, command_id: str) -> Ack | None:
        self._enter("get_ack")
        return self._inner.get_ack(command_id)

    def get_checkpoint(self, name: str) -> Checkpoint | None:
        self._enter("get_checkpoint")
        return self._inner.get_checkpoint(name)

    def put_checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        self._enter("put_checkpoint")
        self._inner.put_checkpoint(name, checkpoint)

    def checkpoint_names(self) -> list[str]:
        self._enter("checkpoint_names")
        return self._inner.checkpoint_names()

    def delete_stream(self, stream: str, *, hard: bool, timestamp: float) -> StreamDeletion:
        self._enter("delete_stream")
        return self._inner.delete_stream(stream, hard=hard, timestamp=timestamp)

    def truncate_stream(self, stream: str, through_version: int) -> int:
        self._enter("truncate_stream")
        return self._inner.truncate_stream(stream, through_version)

    def stream_deletion(self, stream: str) -> StreamDeletion | None:
        self._enter("stream_deletion")
        return self._inner.stream_deletion(stream)

    def removed_runs(self) -> list[tuple[int, int]]:
        self._enter("removed_runs")
        return self._inner.removed_runs()

    def get_group(self, name: str) -> GroupProgress | None:
        self._enter("get_group")
        return self._inner.get_group(name)

    def put_group(self, name: str, progress: GroupProgress) -> None:
        self._enter("put_group")
        self._inner.put_group(name, progress)

    def group_names(self) -> list[str]:
        self._enter("group_names")
        return self._inner.group_names()

    def park(self, name: str, event: ParkedEvent) -> None:
        self._enter("park")
        self._inner.park(name, event)

    def parked(self, name: str) -> list[ParkedEvent]:
        self._enter("parked")
        return self._inner.parked(name)

    def unpark(self, name: str, position: int) -> bool:
        self._enter("unpark")
        return self._inner.unpark(name, position)

    def wait_for_commit(self, after_position: int, timeout: float) -> int:
        self._enter("wait_for_commit")
        return self._inner.wait_for_commit(after_position, timeout)

    def close(self) -> None:
        self._enter("close")
        self._inner.close()


async def test_a_blocking_store_is_never_called_on_the_event_loop_thread() -> None:
    store = BlockingStore()
    with trio.fail_after(20):
        async with open_engine(store=store, app=app, snapshot_every=2) as engine:
            first = await engine.send(create("fay"), command_id="cmd-1")
            # A retried command id is looked up in the store, off the loop.
            assert await engine.send(create("fay"), command_id="cmd-1") == first
            for n in range(3):
                await engine.send(order("fay", f"o{n}"))
            summary = await engine.ask(GetUserById(user_id="fay"), after=engine.head_position)
            assert summary.order_count == 3
            assert len(await engine.read_stream("User-fay")) == 4
            assert [e.position for e in await first_events(engine, 4)] == [1, 2, 3, 4]
            status = engine.status()
            assert status.projections[0].position == 4
            assert engine.metrics is not None
            engine.metrics.registry.collect()
            async with engine.consume("g", types=["OrderPlaced"]) as member:
                async for delivery in member:
                    await delivery.ack()
                    if delivery.event.version == 4:
                        break

        # Reopened: actors load (snapshot and events) and projections restore
        # through the store, and a command id is found in the store's index.
        async with open_engine(store=store, app=app) as engine:
            assert await engine.send(create("fay"), command_id="cmd-1") == first
            ack = await engine.send(order("fay", "o9"))
            assert ack.version == 5
            summary = await engine.ask(GetUserById(user_id="fay"), after=ack.position)
            assert summary.order_count == 4

    assert store.wrong_thread == []
    for call in (
        "append_batch",
        "read_stream",
        "read_all",
        "load_snapshot",
        "get_ack",
        "group_names",
        "get_group",
        "put_group",
    ):
        assert store.calls[call] > 0, call
    store._inner.close()


# --- a store other processes append to ------------------------------------------------


def append_directly(store: MemoryStore, engine: Engine, user: str) -> Callable[[], None]:
    """A call that appends a UserCreated to ``store`` the way another
    process would: straight to the log, from another thread."""
    new = engine.codec.encode_event(
        UserCreated(user_id=user, name=user.title(), email=f"{user}@example.org", password_hash="x")
    )

    def append() -> None:
        stream = f"User-{user}"
        (result,) = store.append_batch(
            [Append(stream, store.stream_version(stream), [new])], time.time()
        )
        assert isinstance(result, Ack), result

    return append


async def test_projections_and_subscribers_see_commits_made_around_the_engine() -> None:
    store = MemoryStore(shared=True)
    async with open_engine(store=store, app=app) as engine:
        await engine.send(create("gus"))
        seen: list[RecordedEvent] = []

        async def subscriber() -> None:
            async for event in engine.subscribe(0):
                seen.append(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber)
            await trio.to_thread.run_sync(append_directly(store, engine, "hal"))
            await trio.to_thread.run_sync(append_directly(store, engine, "ivy"))

            with trio.fail_after(5):
                summary = await engine.ask(GetUserById(user_id="ivy"), after=3)
                # A read may return events past the head the watcher has
                # reported so far; the head catches up by itself.
                while len(seen) < 3 or engine.head_position < 3:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

        assert summary.name == "Ivy"
        assert engine.head_position == 3
        assert [(e.position, e.stream) for e in seen] == [
            (1, "User-gus"),
            (2, "User-hal"),
            (3, "User-ivy"),
        ]
        # The engine's own writer goes on after the foreign commits.
        ack = await engine.send(order("hal", "o1"))
        assert (ack.stream, ack.version, ack.position) == ("User-hal", 2, 4)
    store.close()


async def test_an_unshared_store_is_not_watched() -> None:
    store = MemoryStore()
    async with open_engine(store=store, app=app) as engine:
        await trio.to_thread.run_sync(append_directly(store, engine, "jo"))
        await trio.sleep(0.2)
        # Nobody told the runtime: this store promised it is the only writer.
        assert engine.head_position == 0
    store.close()


def test_wait_for_commit_on_a_closed_store_returns_at_once() -> None:
    store = MemoryStore(shared=True)
    store.close()
    started = time.monotonic()
    assert store.wait_for_commit(0, 5.0) == 0
    assert time.monotonic() - started < 1.0
    with pytest.raises(StorageError, match="closed"):
        store.read_all()
