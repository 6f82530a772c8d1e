"""Projections caught up with the writer apply its last commit as decided
(motet.actors.committed) instead of reading it back: the records they get
must be exactly those a read of the log gives, and anything the writer
cannot vouch for must still come from the store."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from motet.actors.committed import CommittedBatch
from motet.actors.projection import Projection
from motet.actors.request import CommandRequest
from motet.engine import App, CommandRejected, Engine, open_engine
from motet.engine.example import (
    DeleteUser,
    OrderPlaced,
    PlaceOrder,
    UpdateUser,
    UserCreated,
    UserDeleted,
    UserUpdated,
    queries,
    user,
    users_projection,
)
from motet.storage import LmdbStore
from motet.storage.records import Ack, Append, NewEvent, RecordedEvent
from tests.support.commands import create_user


class Recorder:
    def __init__(self) -> None:
        self.records: list[RecordedEvent] = []


def record(model: Recorder, event: Any, recorded: RecordedEvent) -> None:
    model.records.append(recorded)


recorder = Projection(
    name="recorder",
    initial=Recorder,
    handlers={cls: record for cls in (UserCreated, UserUpdated, OrderPlaced, UserDeleted)},
)
recording_app = App(aggregates=(user,), projections=(users_projection, recorder), queries=queries)


async def read_log(engine: Engine) -> list[RecordedEvent]:
    records: list[RecordedEvent] = []
    position = 0
    while True:
        page, position = await engine.read_filtered(position, 1000)
        if not page:
            return records
        records.extend(page)


async def send_in_waves(engine: Engine) -> int:
    """Concurrent commands in several commits: creates with personal data,
    orders with command ids and metadata, updates, rejected commands and a
    delete mixed in. Returns how many commits they took."""
    commits_before = engine.writer.statistics().commits

    async def one(i: int) -> None:
        user_id = f"u{i % 40}"
        try:
            if i < 40:
                await engine.send(create_user(user_id, city="Paris" if i % 2 else None))
            elif i % 7 == 0:
                await engine.send(UpdateUser(user_id=user_id, city=f"City {i}"))
            elif i % 11 == 0:
                await engine.send(PlaceOrder(user_id="nobody", order_id=f"o{i}", amount=1.0))
            else:
                await engine.send(
                    PlaceOrder(user_id=user_id, order_id=f"o{i}", amount=float(i)),
                    command_id=f"c{i}",
                    correlation_id=f"flow{i % 3}",
                )
        except CommandRejected:
            pass

    for wave in range(6):
        async with trio.open_nursery() as nursery:
            for i in range(wave * 40, wave * 40 + 40):
                nursery.start_soon(one, i)
    await engine.send(DeleteUser(user_id="u3"))
    return engine.writer.statistics().commits - commits_before


async def test_a_caught_up_projection_gets_the_records_a_read_of_the_log_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    read_all = LmdbStore.read_all

    def counted(self: LmdbStore, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return read_all(self, *args, **kwargs)

    monkeypatch.setattr(LmdbStore, "read_all", counted)
    async with open_engine(tmp_path / "store", recording_app, durability="none") as engine:
        commits = await send_in_waves(engine)
        await engine.wait_for(engine.writer.head_position)
        live = engine.projections["recorder"].model.records
        logged = await read_log(engine)
    assert commits >= 6
    assert [r.position for r in live] == list(range(1, len(logged) + 1))
    assert live == logged
    assert any(r.metadata.command_id for r in live)
    # Caught up after (nearly) every commit, the projections read (nearly)
    # nothing back: two projections, each would read once per commit.
    assert reads < commits


async def test_after_a_restart_the_projection_reads_the_log_and_agrees(tmp_path: Path) -> None:
    path = tmp_path / "store"
    async with open_engine(path, recording_app, durability="none") as engine:
        await send_in_waves(engine)
        await engine.wait_for(engine.writer.head_position)
        live = list(engine.projections["recorder"].model.records)
    async with open_engine(path, recording_app, durability="none") as engine:
        await engine.wait_for(engine.writer.head_position)
        replayed = engine.projections["recorder"].model.records
    assert replayed == live


# -- the batch on its own ---------------------------------------------------------


def committed_request(stream: str, events: list[Any], ack: Ack | None) -> CommandRequest:
    request = CommandRequest(None)
    request.append = Append(
        stream,
        ack.version - len(events) if ack is not None else 0,
        [NewEvent("T", 1, b"") for _ in events],
    )
    request.decided = events
    request.ack = ack
    return request


def test_records_follow_the_acks_and_skip_snapshot_only_appends() -> None:
    requests = [
        committed_request("A-1", ["a1", "a2"], Ack("A-1", 7, 11)),
        committed_request("B-1", [], Ack("B-1", 3, 11)),  # a snapshot alone
        committed_request("C-1", ["c1"], Ack("C-1", 1, 12)),
    ]
    batch = CommittedBatch(requests, 3, 5.0)
    assert (batch.first, batch.last) == (10, 12)
    assert batch.records_after(8) is None
    assert batch.records_after(10) is None
    records = batch.records_after(9)
    assert records is not None
    assert [(r.position, r.stream, r.version, r.data, r.timestamp) for r in records] == [
        (10, "A-1", 6, "a1", 5.0),
        (11, "A-1", 7, "a2", 5.0),
        (12, "C-1", 1, "c1", 5.0),
    ]
    assert batch.records_after(9) is records  # built once, shared


def test_an_append_without_decided_events_sends_readers_to_the_store() -> None:
    undecided = committed_request("P-1", ["p1"], Ack("P-1", 1, 2))
    undecided.decided = None  # e.g. a process manager's record
    batch = CommittedBatch([committed_request("A-1", ["a1"], Ack("A-1", 1, 1)), undecided], 2, 1.0)
    assert batch.records_after(0) is None


def test_positions_that_do_not_add_up_send_readers_to_the_store() -> None:
    # Two events counted but the acks span three positions: another writer's
    # event sits in between (or a count is wrong); never guess.
    requests = [
        committed_request("A-1", ["a1"], Ack("A-1", 1, 1)),
        committed_request("B-1", ["b1"], Ack("B-1", 1, 3)),
    ]
    batch = CommittedBatch(requests, 2, 1.0)
    assert batch.records_after(batch.first - 1) is None


# -- giving way to the next commit ------------------------------------------------


class Owner:
    def append_settled(self, ok: bool) -> None:
        pass


class HeldStore(LmdbStore):
    """An LMDB store whose appends stop, until released, either at the
    durable step (after calling the writer's hook) or before writing."""

    def __init__(self, path: Path, *, at_durable_step: bool) -> None:
        super().__init__(path, durability="none")
        self.at_durable_step = at_durable_step
        self.reached = threading.Event()
        self.release = threading.Event()
        self.hook: Any = None

    @property
    def before_commit(self) -> Any:
        def hold() -> None:
            self.reached.set()
            if self.hook is not None:
                self.hook()
            self.release.wait(10)

        return hold if self.at_durable_step else self.hook

    @before_commit.setter
    def before_commit(self, hook: Any) -> None:
        self.hook = hook

    def append_batch(self, *args: Any, **kwargs: Any) -> Any:
        if not self.at_durable_step:
            self.reached.set()
            self.release.wait(10)
        return super().append_batch(*args, **kwargs)


def request_for(stream: str) -> CommandRequest:
    request = CommandRequest(None)
    request.append = Append(stream, 0, (NewEvent("E", 1, b"x"),))
    request.owner = Owner()
    return request


async def held_writer(store: HeldStore, nursery: trio.Nursery) -> Any:
    from motet.actors.writer import GroupCommitWriter

    writer = GroupCommitWriter(store)
    await nursery.start(writer.serve)
    return writer


async def test_yield_to_commit_returns_once_the_commit_only_flushes(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "store", at_durable_step=True)
    async with trio.open_nursery() as nursery:
        writer = await held_writer(store, nursery)
        with trio.fail_after(5):
            await writer.yield_to_commit(30.0)  # idle: at once
        request = request_for("A-1")
        writer.submit(request)
        with trio.fail_after(5):
            # Waits for the batch to start and to reach the durable step,
            # not for the 30 s bound, nor for the commit to end.
            await writer.yield_to_commit(30.0)
        assert store.reached.is_set() and not request.done
        store.release.set()
        await writer.wait_idle()
        assert request.ack is not None
        nursery.cancel_scope.cancel()
    store.close()


async def test_yield_to_commit_gives_up_after_its_timeout(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "store", at_durable_step=False)  # never reaches it
    async with trio.open_nursery() as nursery:
        writer = await held_writer(store, nursery)
        request = request_for("A-1")
        writer.submit(request)
        await trio.to_thread.run_sync(store.reached.wait, 5)
        started = trio.current_time()
        await writer.yield_to_commit(0.2)
        waited = trio.current_time() - started
        assert 0.15 < waited < 3 and not request.done
        store.release.set()
        await writer.wait_idle()
        nursery.cancel_scope.cancel()
    store.close()
