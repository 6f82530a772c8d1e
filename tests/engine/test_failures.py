"""Failure paths: a really full disk, a failed commit, a handler bug in
``evolve``, a cancelled sender, and bad bytes on disk.

Each one must fail only what it has to, with an error that says what went
wrong, lose nothing that was acknowledged, and leave the engine up, with
later commands continuing the streams where the log says they are.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest
import trio
import trio.testing

from motet.engine import (
    Ack,
    Aggregate,
    App,
    CodecError,
    CommandRejected,
    Engine,
    InternalError,
    ProjectionFailed,
    StorageError,
    open_engine,
)
from motet.engine.example import (
    GetUserById,
    OrderPlaced,
    UpdateUser,
    UserCreated,
    UserUpdated,
    app,
)
from motet.storage import Append, Conflict, LmdbStore, NewEvent, StoredEvent
from tests.support.commands import create_user
from tests.support.commands import place_order as order

# What the StorageError of a full disk must say.
DISK_FULL = r"the disk is full \(no space left on device"

create = partial(create_user, name="Ann")


def assert_log_consistent(events: Sequence[Any], acks: Sequence[Ack]) -> None:
    """The whole log (``events``, read from position 0) is gap-free, every
    stream's versions are contiguous, and every Ack points at its event."""
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    versions: dict[str, int] = {}
    for event in events:
        versions[event.stream] = versions.get(event.stream, 0) + 1
        assert event.version == versions[event.stream], event
    at = {e.position: (e.stream, e.version) for e in events}
    for ack in acks:
        assert at.get(ack.position) == (ack.stream, ack.version), ack


async def read_log(engine: Engine) -> list[Any]:
    return await trio.to_thread.run_sync(engine.store.read_all, 0, 1_000_000)


# --- 1. A real full disk -------------------------------------------------------------

DISK_SIZE = "4m"
BIG = 16_000  # characters of a user's name: a few overflow pages per event


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory with a real file system of ``DISK_SIZE`` mounted on it (a
    tmpfs, so mounting needs root); unmounted at teardown whatever happens.

    Without the permission to mount, the test is skipped, except on CI
    (``CI`` set), which runs as root and must run it.
    """
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        problem = None if done.returncode == 0 else done.stderr.strip() or f"exit {done.returncode}"
    except OSError as exc:
        problem = str(exc)
    if problem is not None:
        message = f"cannot mount a {DISK_SIZE} tmpfs on {mountpoint}: {problem}"
        permission = os.geteuid() != 0 or re.search(
            r"permission denied|not permitted|only root|must be superuser", problem, re.I
        )
        if os.environ.get("CI") or not permission:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mountpoint
    finally:
        subprocess.run(
            ["umount", "-l", str(mountpoint)], check=True, capture_output=True, timeout=10
        )


def grow_disk(mountpoint: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(mountpoint)],
        check=True,
        capture_output=True,
        timeout=10,
    )


def renamed(user_id: str, n: int) -> UpdateUser:
    return UpdateUser(user_id=user_id, name=f"{user_id}#{n}:" + "n" * BIG)


async def test_a_full_disk_fails_commands_clearly_and_loses_nothing_acknowledged(
    small_disk: Path,
) -> None:
    path = small_disk / "store"
    users = [f"u{n}" for n in range(4)]
    acks: list[Ack] = []
    names: dict[tuple[str, int], str] = {}  # (stream, version) -> acknowledged name
    errors: list[BaseException] = []

    with trio.fail_after(20):
        async with open_engine(
            path, app, durability="sync", store_options={"map_size": 256 * 1024}
        ) as engine:
            for user in users:
                acks.append(await engine.send(create(user)))

            async def fill(user: str) -> None:
                # Until this user's first failure; bounded in case the disk never fills.
                for n in range(400):
                    command = renamed(user, n)
                    try:
                        ack = await engine.send(command)
                    except StorageError as exc:
                        errors.append(exc)
                        return
                    acks.append(ack)
                    assert command.name is not None
                    names[(ack.stream, ack.version)] = command.name

            async with trio.open_nursery() as nursery:
                for user in users:
                    nursery.start_soon(fill, user)

            # A failed batch of several commands may leave room for one more:
            # fill that with single commands, so that the disk is really full.
            for n in range(200):
                command = renamed(users[n % len(users)], 500 + n)
                try:
                    ack = await engine.send(command)
                except StorageError as exc:
                    errors.append(exc)
                    break
                acks.append(ack)
                assert command.name is not None
                names[(ack.stream, ack.version)] = command.name

            assert errors, f"the disk never filled up ({len(acks)} commands acknowledged)"
            assert len(acks) > 100, "the disk filled up suspiciously early"
            for error in errors:
                assert isinstance(error, StorageError)
                assert re.search(DISK_FULL, str(error)), str(error)
            assert isinstance(engine.store, LmdbStore)
            assert engine.store.map_size > 256 * 1024, "the map never had to grow"
            assert engine.statistics().failed_commits >= 1

            # The failed commits left no trace, and everything acknowledged is there.
            head = max(ack.position for ack in acks)
            assert engine.head_position == head
            log = await read_log(engine)
            assert_log_consistent(log, acks)
            assert len(log) == len(acks)
            for user in users:
                events = await engine.read_stream(f"User-{user}")
                assert isinstance(events[0].data, UserCreated)
                for event in events[1:]:
                    assert isinstance(event.data, UserUpdated)
                    assert event.data.name == names[(event.stream, event.version)]

            # The disk is still full: a big command still fails the same way.
            with pytest.raises(StorageError, match=DISK_FULL):
                await engine.send(renamed("u0", 1000))
            assert engine.head_position == head
            assert "stale" in repr(engine.registry.live("User-u0"))

            # The engine stays up: queries answer, status works.
            last = {ack.stream: ack for ack in acks}
            summary = await engine.ask(GetUserById(user_id="u1"), after=head, timeout=5)
            assert summary.name == names.get(("User-u1", last["User-u1"].version), "Ann")
            status = engine.status()
            assert status.head_position == head
            assert [(p.name, p.state, p.position) for p in status.projections] == [
                ("users", "running", head)
            ]

            # Space freed: commands succeed again and continue each stream
            # where the log says it is (the actors reloaded after the failure).
            grow_disk(small_disk, "64m")
            for n, user in enumerate(users):
                stream = f"User-{user}"
                command = renamed(user, 2000 + n)
                ack = await engine.send(command)
                assert (ack.stream, ack.version, ack.position) == (
                    stream,
                    last[stream].version + 1,
                    head + n + 1,
                )
                acks.append(ack)
                assert command.name is not None
                names[(ack.stream, ack.version)] = command.name

        # Closed and reopened: every acknowledged command is there, the log gap-free.
        async with open_engine(path, app, durability="sync") as engine:
            log = await read_log(engine)
            assert_log_consistent(log, acks)
            assert len(log) == len(acks) == engine.head_position
            for user in users:
                events = await engine.read_stream(f"User-{user}")
                assert [e.version for e in events] == list(range(1, len(events) + 1))
                assert {(e.stream, e.version): e.data.name for e in events[1:]} == {
                    key: name for key, name in names.items() if key[0] == f"User-{user}"
                }
            summary = await engine.ask(GetUserById(user_id="u3"), after=engine.head_position)
            assert summary.name == names[max(key for key in names if key[0] == "User-u3")]


def test_the_store_reports_a_full_disk_and_works_again_once_space_is_freed(
    small_disk: Path,
) -> None:
    store = LmdbStore(small_disk / "store", map_size=16 << 20)
    try:
        first = store.append_batch([Append("s", 0, [NewEvent("E", 1, b"first")])], 1.0)
        assert first == [Ack("s", 1, 1)]
        # Another file leaves 64 KiB free, and a commit needs about 1 MiB: the
        # file system takes part of the write (LMDB calls that an I/O error).
        filler = small_disk / "filler"
        stat = os.statvfs(small_disk)
        filler.write_bytes(bytes(stat.f_bavail * stat.f_frsize - 64 * 1024))
        big = [Append("s", 1, [NewEvent("E", 1, bytes(4000)) for _ in range(250)])]
        with pytest.raises(StorageError, match=DISK_FULL):
            store.append_batch(big, 2.0)
        assert store.head_position == 1
        assert [(e.position, e.data) for e in store.read_all(0, 10)] == [(1, b"first")]

        filler.unlink()
        assert store.append_batch(big, 3.0) == [Ack("s", 251, 251)]
    finally:
        store.close()
    store = LmdbStore(small_disk / "store")
    try:
        events = store.read_all(0, 1000)
        assert [e.position for e in events] == [e.version for e in events] == list(range(1, 252))
    finally:
        store.close()


# --- A store whose commits fail (or wait) on demand -----------------------------------


class FaultyStore(LmdbStore):
    """A real LMDB store with a switch at its boundary: the next commit can be
    made to fail with :class:`StorageError`, or to wait until released (to
    queue more work behind it). It also counts stream loads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_next = False
        self.hold_next = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.held_streams: list[str] = []
        self.loads: Counter[str] = Counter()

    def append_batch(
        self, appends: Sequence[Append], timestamp: float, keys: Any = None
    ) -> list[Ack | Conflict]:
        if self.fail_next or self.hold_next:
            fail, self.fail_next, self.hold_next = self.fail_next, False, False
            self.held_streams = [append.stream for append in appends]
            self.entered.set()
            if not self.release.wait(10):
                raise AssertionError("the test never released the held commit")
            if fail:
                raise StorageError("injected failure: this commit did not happen")
        return super().append_batch(appends, timestamp, keys)  # type: ignore[return-value]

    def read_stream(
        self, stream: str, after_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        self.loads[stream] += 1
        return super().read_stream(stream, after_version, limit)


@pytest.fixture
def faulty_store(monkeypatch: pytest.MonkeyPatch) -> type[FaultyStore]:
    """Makes :func:`open_engine` build a :class:`FaultyStore` (the engine code
    is unchanged; only the store class it instantiates is swapped)."""
    monkeypatch.setattr("motet.storage.lmdb_store.LmdbStore", FaultyStore)
    return FaultyStore


async def wait_entered(store: FaultyStore) -> None:
    entered = await trio.to_thread.run_sync(store.entered.wait, 5)
    assert entered, "the held commit never started"


class Outcomes:
    """Collects what :meth:`Engine.submit` reports, by label."""

    def __init__(self) -> None:
        self.results: dict[str, Ack | BaseException] = {}
        self._changed = trio.Event()

    def submit(self, engine: Engine, label: str, command: Any, **options: Any) -> None:
        def done(ack: Ack | None, error: BaseException | None) -> None:
            self.results[label] = error if error is not None else ack  # type: ignore[assignment]
            self._changed.set()
            self._changed = trio.Event()

        engine.submit(command, done, **options)

    async def wait(self, count: int) -> None:
        with trio.fail_after(5):
            while len(self.results) < count:
                await self._changed.wait()


# --- 2. A failed commit ---------------------------------------------------------------


async def test_a_failed_commit_fails_its_batch_and_what_was_decided_on_top(
    tmp_path: Path, faulty_store: type[FaultyStore]
) -> None:
    with trio.fail_after(15):
        async with open_engine(tmp_path / "store", app) as engine:
            store = engine.store
            assert isinstance(store, FaultyStore)
            acks = [await engine.send(create(user)) for user in ("a", "b", "c")]
            acks.append(await engine.send(order("a", "a1")))
            assert [(ack.stream, ack.version) for ack in acks][-1] == ("User-a", 2)
            head = engine.head_position

            # One batch of three commands on a and b, held in the worker thread...
            store.fail_next = True
            outcomes = Outcomes()
            outcomes.submit(engine, "fa1", order("a", "fa1"), command_id="cmd-fa1")
            outcomes.submit(engine, "fa2", order("a", "fa2"))
            outcomes.submit(engine, "fb1", order("b", "fb1"))
            await wait_entered(store)
            assert store.held_streams == ["User-a", "User-a", "User-b"]
            # ...while more are decided on top of it (a, b), or beside it (c).
            outcomes.submit(engine, "fa3", order("a", "fa3"))
            outcomes.submit(engine, "fb2", order("b", "fb2"))
            outcomes.submit(engine, "c1", order("c", "c1"))
            store.release.set()
            await outcomes.wait(6)

            failed = {
                label: outcomes.results[label] for label in ("fa1", "fa2", "fb1", "fa3", "fb2")
            }
            for label, error in failed.items():
                assert isinstance(error, StorageError), (label, error)
                assert re.search("injected failure", str(error)), (label, error)
            ack_c = outcomes.results["c1"]
            assert isinstance(ack_c, Ack)
            assert (ack_c.stream, ack_c.version, ack_c.position) == ("User-c", 2, head + 1)
            acks.append(ack_c)
            stats = engine.statistics()
            assert stats.failed_commits == 1
            assert stats.head_position == head + 1
            # The actors of a and b dropped their optimistic state.
            for stream in ("User-a", "User-b"):
                assert "stale" in repr(engine.registry.live(stream))
            assert "live" in repr(engine.registry.live("User-c"))

            # Their next commands reload from storage and continue its versions.
            store.loads.clear()
            ack_a = await engine.send(order("a", "a2"))
            ack_b = await engine.send(order("b", "b2"))
            ack_c2 = await engine.send(order("c", "c2"))
            assert [(ack.stream, ack.version) for ack in (ack_a, ack_b, ack_c2)] == [
                ("User-a", 3),
                ("User-b", 2),
                ("User-c", 3),
            ]
            assert store.loads == Counter({"User-a": 1, "User-b": 1})
            acks += [ack_a, ack_b, ack_c2]

            # A failed command's id is free: its retry runs (once).
            retry = await engine.send(order("a", "fa1"), command_id="cmd-fa1")
            assert (retry.stream, retry.version) == ("User-a", 4)
            assert await engine.send(order("a", "fa1"), command_id="cmd-fa1") == retry
            acks.append(retry)

            log = await read_log(engine)
            assert_log_consistent(log, acks)
            assert len(log) == len(acks)
            placed = [msgspec.msgpack.decode(e.data, type=OrderPlaced).order_id for e in log[3:]]
            assert placed == ["a1", "c1", "a2", "b2", "c2", "fa1"]
            summary = await engine.ask(GetUserById(user_id="a"), after=engine.head_position)
            assert summary.order_count == 3
            assert engine.statistics().failed_commits == 1


# --- 3. A bug in evolve ---------------------------------------------------------------


class Put(msgspec.Struct, frozen=True, kw_only=True, tag="Put"):
    box_id: str
    item: str


class Added(msgspec.Struct, frozen=True, kw_only=True, tag="Added"):
    item: str
    count: int  # items in the box once this one is in


class Box(msgspec.Struct, frozen=True, kw_only=True, tag="Box"):
    items: tuple[str, ...] = ()


def decide_box(state: Box, command: Put) -> list[Added]:
    if command.item in state.items:
        raise CommandRejected(f"{command.item!r} is already in the box")
    return [Added(item=command.item, count=len(state.items) + 1)]


def evolve_box(state: Box, event: Added) -> Box:
    if event.item == "poison":
        raise RuntimeError("evolve cannot digest poison")
    return Box(items=(*state.items, event.item))


box_app = App(
    aggregates=(
        Aggregate(
            name="Box",
            state_type=Box,
            initial=Box(),
            decide=decide_box,
            evolve=evolve_box,
            commands={Put: "box_id"},
            events=(Added,),
        ),
    )
)


async def test_a_bug_in_evolve_fails_that_command_and_the_actor_reloads(
    tmp_path: Path, faulty_store: type[FaultyStore]
) -> None:
    with trio.fail_after(10):
        async with open_engine(tmp_path / "store", box_app) as engine:
            store = engine.store
            assert isinstance(store, FaultyStore)
            first = await engine.send(Put(box_id="b1", item="apple"))
            assert (first.version, first.position) == (1, 1)

            with pytest.raises(
                InternalError,
                match=r"^Box handler failed on Put: RuntimeError: evolve cannot digest poison$",
            ):
                await engine.send(Put(box_id="b1", item="poison"))
            assert "stale" in repr(engine.registry.live("Box-b1"))
            assert engine.head_position == 1

            store.loads.clear()
            second = await engine.send(Put(box_id="b1", item="pear"))
            assert (second.stream, second.version, second.position) == ("Box-b1", 2, 2)
            assert store.loads == Counter({"Box-b1": 1})
            with pytest.raises(CommandRejected, match=r"^'pear' is already in the box$"):
                await engine.send(Put(box_id="b1", item="pear"))
            # Other boxes never noticed.
            other = await engine.send(Put(box_id="b2", item="poison-free"))
            assert (other.stream, other.version) == ("Box-b2", 1)

            events = await engine.read_stream("Box-b1")
            assert [(e.version, e.data) for e in events] == [
                (1, Added(item="apple", count=1)),
                (2, Added(item="pear", count=2)),
            ]
            assert engine.statistics().failed_commits == 0


# --- 4. A cancelled sender ------------------------------------------------------------


async def test_a_cancelled_send_may_commit_and_its_retry_returns_the_original_ack(
    tmp_path: Path, faulty_store: type[FaultyStore]
) -> None:
    path = tmp_path / "store"
    with trio.fail_after(15):
        async with open_engine(path, app) as engine:
            store = engine.store
            assert isinstance(store, FaultyStore)
            await engine.send(create("u1"))

            # Cancelled right after the send started; retried at once, while
            # the first attempt is still in flight.
            command = order("u1", "o1")
            with trio.move_on_after(0) as scope:
                await engine.send(command, command_id="order-o1")
            assert scope.cancelled_caught
            ack = await engine.send(command, command_id="order-o1")
            assert (ack.stream, ack.version, ack.position) == ("User-u1", 2, 2)
            assert await engine.send(command, command_id="order-o1") == ack

            # The same for an aggregate whose actor still has to load.
            with trio.move_on_after(0) as scope:
                await engine.send(create("u2"), command_id="create-u2")
            assert scope.cancelled_caught
            ack_u2 = await engine.send(create("u2"), command_id="create-u2")
            assert (ack_u2.stream, ack_u2.version) == ("User-u2", 1)

            # Cancelled while its commit is in the worker thread: it commits anyway.
            store.hold_next = True
            answered = []

            async def give_up() -> None:
                answered.append(await engine.send(order("u1", "o2"), command_id="order-o2"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(give_up)
                await wait_entered(store)
                nursery.cancel_scope.cancel()
            assert answered == []

            # Retried while that commit still runs: the retry waits for it.
            async def retry() -> None:
                answered.append(await engine.send(order("u1", "o2"), command_id="order-o2"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(retry)
                await trio.testing.wait_all_tasks_blocked()
                assert answered == []
                store.release.set()
            [ack_o2] = answered
            assert (ack_o2.stream, ack_o2.version, ack_o2.position) == ("User-u1", 3, 4)

            events = await engine.read_stream("User-u1")
            assert [(e.version, e.metadata.command_id) for e in events] == [
                (1, None),
                (2, "order-o1"),
                (3, "order-o2"),
            ]

            # Cancelled, and the engine closes at once: it closes without
            # hanging, after committing what its actor had accepted.
            with trio.move_on_after(0) as scope:
                await engine.send(order("u1", "o3"), command_id="order-o3")
            assert scope.cancelled_caught

        async with open_engine(path, app) as engine:
            committed = engine.store.get_ack("order-o3")
            assert committed == Ack("User-u1", 4, 5)
            # A retry after the restart finds it in the command-id index.
            ack_o3 = await engine.send(order("u1", "o3"), command_id="order-o3")
            assert ack_o3 == committed
            log = await read_log(engine)
            assert_log_consistent(log, [ack, ack_u2, ack_o2, ack_o3])
            ids = [e.metadata.command_id for e in log if e.metadata.command_id]
            assert sorted(ids) == ["create-u2", "order-o1", "order-o2", "order-o3"]


async def test_senders_of_one_command_id_in_flight_all_get_its_ack_whoever_gives_up(
    tmp_path: Path, faulty_store: type[FaultyStore]
) -> None:
    with trio.fail_after(15):
        async with open_engine(tmp_path / "store", app) as engine:
            store = engine.store
            assert isinstance(store, FaultyStore)
            await engine.send(create("u1"))
            store.hold_next = True
            command = order("u1", "o1")
            answered: dict[str, Ack] = {}

            async def send(name: str, scope: trio.CancelScope | None = None) -> None:
                with scope or trio.CancelScope():
                    answered[name] = await engine.send(command, command_id="order-o1")

            async with trio.open_nursery() as nursery:
                # The first sender, who parks in the request, gives up; so does
                # one of those waiting behind it; the others still get the Ack.
                first, third = trio.CancelScope(), trio.CancelScope()
                nursery.start_soon(send, "first", first)
                await wait_entered(store)
                nursery.start_soon(send, "second")
                nursery.start_soon(send, "third", third)
                nursery.start_soon(send, "fourth")
                await trio.testing.wait_all_tasks_blocked()
                first.cancel()
                third.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert answered == {}
                nursery.start_soon(send, "late")
                await trio.testing.wait_all_tasks_blocked()
                store.release.set()

            assert set(answered) == {"second", "fourth", "late"}
            assert set(answered.values()) == {Ack("User-u1", 2, 2)}
            assert [e.version for e in await engine.read_stream("User-u1")] == [1, 2]


# --- 5. Bad bytes on disk -------------------------------------------------------------

GARBAGE = b"\xc1 not msgpack at all \xc1"


def overwrite(path: Path, database: bytes, key: bytes, value: bytes) -> None:
    """Overwrite one record of a closed store, behind Motet's back."""
    env = lmdb.open(str(path), max_dbs=8, subdir=True)
    try:
        db = env.open_db(database, create=False)
        with env.begin(write=True, db=db) as txn:
            assert txn.get(key) is not None, (database, key)
            txn.put(key, value)
    finally:
        env.close()


async def write_users(path: Path) -> list[Ack]:
    """u0, u1, u2 created (positions 1-3), then renamed (positions 4-6)."""
    async with open_engine(path, app) as engine:
        acks = [await engine.send(create(f"u{n}")) for n in range(3)]
        acks += [await engine.send(UpdateUser(user_id=f"u{n}", name="Bea")) for n in range(3)]
    assert [ack.position for ack in acks] == [1, 2, 3, 4, 5, 6]
    return acks


def test_the_store_names_the_position_of_a_corrupt_log_record(tmp_path: Path) -> None:
    path = tmp_path / "store"
    trio.run(write_users, path)
    overwrite(path, b"log", struct.pack(">Q", 2), GARBAGE)

    store = LmdbStore(path)
    try:
        assert store.head_position == 6
        # Reading up to the bad record gives what precedes it; reading from it fails.
        assert [e.position for e in store.read_all(0, 10)] == [1]
        with pytest.raises(CodecError, match=r"log record at position 2 .* is corrupt"):
            store.read_all(1, 10)
        assert [e.position for e in store.read_all(2, 10)] == [3, 4, 5, 6]
        with pytest.raises(CodecError, match=r"log record at position 2 \(event of 'User-u1'\)"):
            store.read_stream("User-u1")
        assert [e.version for e in store.read_stream("User-u0")] == [1, 2]
    finally:
        store.close()


async def test_bad_bytes_on_disk_fail_the_readers_not_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "store"
    await write_users(path)
    # The users projection saved a checkpoint at close; spoil it too, so the
    # projection has to replay the log over the bad record (u1's rename).
    overwrite(path, b"checkpoints", b"users", GARBAGE)
    overwrite(path, b"log", struct.pack(">Q", 5), GARBAGE)

    bad = r"log record at position 5 .*is corrupt"
    with trio.fail_after(10):
        async with open_engine(path, app) as engine:
            projection = engine.projection("users")
            with pytest.raises(
                ProjectionFailed, match=rf"stopped at position 5: CodecError: .*{bad}"
            ):
                await projection.wait_for(5)
            # It applied what precedes the bad record and stopped on it.
            [status] = engine.status().projections
            assert (status.state, status.position, status.failed_position) == ("failed", 4, 5)
            assert status.error is not None and re.search(bad, status.error), status.error
            assert (await engine.ask(GetUserById(user_id="u0"))).name == "Bea"
            assert (await engine.ask(GetUserById(user_id="u2"))).name == "Ann"

            # Readers of that record get an error naming its position...
            with pytest.raises(CodecError, match=bad):
                await engine.read_stream("User-u1")
            seen = []
            with pytest.raises(CodecError, match=bad):
                async for event in engine.subscribe(0):
                    seen.append(event.position)
            assert seen == [1, 2, 3, 4]
            with pytest.raises(InternalError, match=rf"User-u1 could not be loaded: .*{bad}"):
                await engine.send(UpdateUser(user_id="u1", name="Cy"))

            # ...the rest works.
            assert [e.version for e in await engine.read_stream("User-u2")] == [1, 2]
            ack = await engine.send(UpdateUser(user_id="u2", name="Cy"))
            assert (ack.stream, ack.version, ack.position) == ("User-u2", 3, 7)

            # An operator who gives up on the record lets the projection go on.
            projection.skip()
            summary = await engine.ask(GetUserById(user_id="u2"), after=7, timeout=5)
            assert summary.name == "Cy"
            assert (await engine.ask(GetUserById(user_id="u1"))).name == "Ann"
            [status] = engine.status().projections
            assert (status.state, status.position, status.error) == ("running", 7, None)
