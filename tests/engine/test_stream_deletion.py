"""Deleting streams and retention through a real engine on a real LMDB store:
soft deletes refuse commands, hard deletes remove events while every other
event keeps its position, projections (live, restarted and rebuilt from 0)
equal an independent fold of what is left, subscriptions and ``verify``
skip the removed positions, retention keeps what replay needs, and
``compact_store`` gives the space back."""

from __future__ import annotations

import dataclasses
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
import trio.testing

from motet.engine import (
    App,
    CommandRejected,
    NotFound,
    Retention,
    StorageError,
    StreamDeleted,
    Unavailable,
    open_engine,
)
from motet.engine.example import GetUserById, UpdateUser, app, user
from motet.storage.compact import compact_store
from motet.storage.verify import verify_store
from tests.engine.test_projections import USER_IDS, answers, expected_answers, fold_log
from tests.support.commands import create_user, place_order
from tests.support.logs import read_everything
from tests.support.postgres import Cluster, new_schema_url


async def seed(engine: object, users: list[str], orders: int = 2) -> None:
    for user_id in users:
        await engine.send(create_user(user_id, city="Paris"))  # type: ignore[attr-defined]
    for n in range(orders):
        for user_id in users:
            await engine.send(place_order(user_id, f"o{n}", 10.0 + n))  # type: ignore[attr-defined]


async def test_a_soft_deleted_stream_refuses_commands_and_keeps_its_events(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        await seed(engine, ["u0", "u1"])
        before = read_everything(engine.store)

        record = await engine.delete_stream("User-u1")

        with pytest.raises(StreamDeleted, match="stream 'User-u1' was deleted"):
            await engine.send(place_order("u1", "late"))
        await engine.send(place_order("u0", "later"))
        assert record.deleted and not record.hard
        assert await engine.stream_deletion("User-u1") == record
        assert await engine.stream_deletion("User-u0") is None
        assert len(await engine.read_stream("User-u1")) == 3
        assert read_everything(engine.store)[: len(before)] == before
    async with open_engine(tmp_path / "store", app) as engine:
        with pytest.raises(StreamDeleted):
            await engine.send(place_order("u1", "after-restart"))


async def test_a_hard_delete_keeps_every_other_position_and_projections_fold_the_rest(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        await seed(engine, USER_IDS)
        before = read_everything(engine.store)

        await engine.delete_stream("User-u1", hard=True)
        await engine.delete_stream("User-u3", hard=True)
        ack = await engine.send(place_order("u0", "after", 5.0))

        left = read_everything(engine.store)
        assert left[:-1] == [e for e in before if e.stream not in ("User-u1", "User-u3")]
        assert left[-1].position == before[-1].position + 1 == ack.position
        assert await engine.read_stream("User-u1") == []
        with pytest.raises(StreamDeleted):
            await engine.send(place_order("u1", "gone"))
        # The live model folded u1 and u3 before they were deleted ...
        assert (await engine.ask(GetUserById(user_id="u1"), after=ack.position)).user_id == "u1"
        # ... a rebuild from position 0 folds what is left.
        await engine.projection("users").rebuild()
        expected = expected_answers(fold_log(engine))
        assert await answers(engine, ack.position) == expected
        with pytest.raises(NotFound):
            await engine.ask(GetUserById(user_id="u3"))
        events = []
        async with aclosing(engine.subscribe(0)) as subscription:
            async for record in subscription:
                events.append(record.position)
                if record.position == ack.position:
                    break
        assert events == [e.position for e in left]
    verification = verify_store(tmp_path / "store")
    assert verification.sound, verification.problems
    assert verification.removed == 2 * 3


async def test_a_projection_restarted_after_the_newest_events_were_removed_reaches_the_head(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        await seed(engine, ["u0", "u1"], orders=0)
        await seed(engine, ["u2"], orders=3)
        head = engine.head_position
        await engine.delete_stream("User-u2", hard=True)
    async with open_engine(tmp_path / "store", dataclasses.replace(app)) as engine:
        assert engine.head_position == head
        await engine.wait_for(head, timeout=5)
        assert engine.projection("users").position == head
        ack = await engine.send(create_user("u3"))
        assert ack.position == head + 1
        assert (await engine.ask(GetUserById(user_id="u3"), after=ack.position)).user_id == "u3"


async def test_a_subscriber_waiting_past_removed_positions_gets_the_next_event(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        await seed(engine, ["u0"], orders=0)
        await seed(engine, ["u1"], orders=2)
        await engine.delete_stream("User-u1", hard=True)
        seen: list[int] = []

        async def follow() -> None:
            async with aclosing(engine.subscribe(0)) as subscription:
                async for record in subscription:
                    seen.append(record.position)
                    if len(seen) == 2:
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [1]
            ack = await engine.send(create_user("u2"))
        assert seen == [1, ack.position]


async def test_deleting_needs_a_stream_with_events_and_a_writer(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        with pytest.raises(NotFound, match="has no events"):
            await engine.delete_stream("User-nobody", hard=True)
        with pytest.raises(ValueError, match="stream must be a non-empty string"):
            await engine.delete_stream("")
        await seed(engine, ["u0"], orders=0)
    async with open_engine(tmp_path / "store", app, role="reader") as reader:
        with pytest.raises(Unavailable, match="only the writer"):
            await reader.delete_stream("User-u0")
        with pytest.raises(Unavailable, match="only the writer"):
            await reader.apply_retention()


def retaining(retention: Retention, snapshot_every: int = 4) -> App:
    kept = dataclasses.replace(user, snapshot_every=snapshot_every, retention=retention)
    return dataclasses.replace(app, aggregates=(kept,))


async def test_compacting_retention_removes_what_the_snapshot_covers_and_replay_still_works(
    tmp_path: Path,
) -> None:
    compacting = retaining(Retention(compact=True))
    async with open_engine(tmp_path / "store", compacting) as engine:
        await seed(engine, ["u0"], orders=5)  # versions 1..6, a snapshot at 4
        await seed(engine, ["u1"], orders=1)  # versions 1..2, no snapshot

        result = await engine.apply_retention()
        again = await engine.apply_retention()

        assert (result.streams, result.truncated, result.removed) == (2, 1, 4)
        assert result.by_category == {"User": 4}
        assert again.removed == 0
        assert [e.version for e in await engine.read_stream("User-u0")] == [5, 6]
        assert len(await engine.read_stream("User-u1")) == 2
    async with open_engine(tmp_path / "store", compacting) as engine:
        # The aggregate replays from its snapshot: its state is whole.
        ack = await engine.send(UpdateUser(user_id="u0", name="Renamed"))
        assert ack.version == 7
        found = await engine.ask(GetUserById(user_id="u0"), after=ack.position)
        assert found.name == "Renamed"
    assert verify_store(tmp_path / "store").sound


async def test_max_events_keeps_the_newest_and_never_what_replay_needs(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", retaining(Retention(max_events=2))) as engine:
        await seed(engine, ["u0"], orders=9)  # versions 1..10, snapshot at 8

        result = await engine.apply_retention()

        # Keeping 2 would remove up to 8; the snapshot at 8 allows it.
        assert result.removed == 8
        assert [e.version for e in await engine.read_stream("User-u0")] == [9, 10]
    async with open_engine(
        tmp_path / "store2", retaining(Retention(max_events=1), snapshot_every=100)
    ) as engine:
        await seed(engine, ["u0"], orders=3)
        assert (await engine.apply_retention()).removed == 0  # no snapshot: all kept


async def test_max_age_removes_only_old_events(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", retaining(Retention(max_age=3600.0))) as engine:
        await seed(engine, ["u0"], orders=5)
        assert (await engine.apply_retention()).removed == 0  # everything is young
    async with open_engine(tmp_path / "store", retaining(Retention(max_age=1e-9))) as engine:
        await trio.sleep(0.01)
        assert (await engine.apply_retention()).removed == 4  # up to the snapshot


async def test_the_engine_applies_retention_periodically(tmp_path: Path) -> None:
    async with open_engine(
        tmp_path / "store", retaining(Retention(compact=True)), retention_every=0.05
    ) as engine:
        await seed(engine, ["u0"], orders=5)
        with trio.fail_after(5):
            while engine.store.stream_deletion("User-u0") is None:
                await trio.sleep(0.01)
        assert [e.version for e in await engine.read_stream("User-u0")] == [5, 6]


def test_a_retention_must_limit_something() -> None:
    with pytest.raises(ValueError, match="needs max_age, max_events or compact"):
        Retention()
    with pytest.raises(ValueError, match="max_events must be >= 1, got 0"):
        Retention(max_events=0)
    with pytest.raises(ValueError, match="max_age must be > 0 seconds, got -1"):
        Retention(max_age=-1)


async def test_compacting_after_hard_deleting_half_the_streams_shrinks_the_file(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    users = [f"u{n}" for n in range(200)]
    # No projection: its saved model would hold the deleted users too.
    writes_only = dataclasses.replace(app, projections=(), queries=())
    async with open_engine(store, writes_only, durability="none") as engine:
        for user_id in users:
            await engine.send(create_user(user_id, name="x" * 400))
        for user_id in users[::2]:
            await engine.delete_stream(f"User-{user_id}", hard=True)
        kept = read_everything(engine.store)
    size = (store / "data.mdb").stat().st_size

    result = compact_store(store)

    assert result.before == size
    assert result.after < result.before * 0.6, result
    assert (store / "data.mdb").stat().st_size == result.after
    assert verify_store(store).sound
    async with open_engine(store, writes_only) as engine:
        assert read_everything(engine.store) == kept
        with pytest.raises(StreamDeleted):
            await engine.send(place_order("u0"))
        ack = await engine.send(place_order("u1"))
        assert ack.position == 201


async def test_compacting_is_refused_while_the_store_is_open(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        await seed(engine, ["u0"], orders=0)
        with pytest.raises(StorageError, match="in use: another process has this store open"):
            await trio.to_thread.run_sync(compact_store, tmp_path / "store")


async def test_on_postgresql_a_deletion_by_one_process_refuses_the_others_appends(
    postgres_cluster: Cluster,
) -> None:
    url = new_schema_url(postgres_cluster)
    async with open_engine(url, app) as first, open_engine(url, app) as second:
        await seed(first, ["u0", "u1", "u2"], orders=1)
        # The second engine loads u1 before the deletion: only the store can refuse it.
        await second.send(place_order("u1", "before"))

        await first.delete_stream("User-u1", hard=True)
        await first.delete_stream("User-u2")

        with pytest.raises(StreamDeleted, match="User-u1"):
            await second.send(place_order("u1", "after"))
        with pytest.raises(StreamDeleted, match="User-u2"):
            await second.send(place_order("u2", "after"))
        ack = await second.send(place_order("u0", "after"))
        await first.wait_for(ack.position, timeout=10)
        positions = [e.position for e in read_everything(first.store)]
        assert positions == [1, 3, 4, 6, ack.position] == [1, 3, 4, 6, 8]
        await first.projection("users").rebuild()
        assert await answers(first, ack.position) == expected_answers(fold_log(first))


async def test_a_state_schema_bump_after_compaction_replays_what_is_left_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    compacting = retaining(Retention(compact=True))
    async with open_engine(tmp_path / "store", compacting) as engine:
        await seed(engine, ["u0"], orders=5)
        assert (await engine.apply_retention()).removed == 4
    bumped = dataclasses.replace(compacting.aggregates[0], state_version=2)
    async with open_engine(
        tmp_path / "store", dataclasses.replace(compacting, aggregates=(bumped,))
    ) as engine:
        # UserCreated is gone and the snapshot is of another schema: the
        # aggregate only has the orders left, as if the user never existed.
        with pytest.raises(CommandRejected, match="user 'u0' does not exist"):
            await engine.send(place_order("u0", "late"))
    warned = "events up to version 4 were removed and no usable snapshot covers them"
    assert warned in caplog.text


async def test_compacting_after_retention_shrinks_the_file_and_replay_still_works(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    compacting = dataclasses.replace(
        retaining(Retention(compact=True), snapshot_every=20), projections=(), queries=()
    )
    async with open_engine(store, compacting, durability="none") as engine:
        for n in range(40):
            await seed(engine, [f"u{n}"], orders=19)  # versions 1..20, a snapshot at 20
        result = await engine.apply_retention()
    assert result.removed == 40 * 20

    compaction = compact_store(store)

    assert compaction.after < compaction.before * 0.5, compaction
    assert verify_store(store).removed == 40 * 20
    async with open_engine(store, compacting) as engine:
        ack = await engine.send(place_order("u7", "after"))
        assert ack.version == 21
        assert [e.version for e in await engine.read_stream("User-u7")] == [21]
