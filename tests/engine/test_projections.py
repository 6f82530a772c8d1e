"""Projections and queries through a real engine on a real LMDB store: the
users read model against an independent fold of the log (live, after a
restart from its snapshot, after a rebuild), read-your-writes with ``after=``,
index maintenance through the example app, a failing projection (status,
retry, skip, fix), and snapshots that cannot be used."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import shutil
import tempfile
import threading
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from motet.actors.errors import CommandRejected, NotFound, QueryTimeout
from motet.actors.projection import Projection, ProjectionFailed, Query
from motet.engine import App, Engine, open_engine
from motet.engine.example import (
    CreateUser,
    DeleteUser,
    GetUserByEmail,
    GetUserById,
    GetUsersByCity,
    OrderPlaced,
    PlaceOrder,
    TopSpenders,
    UpdateUser,
    UserCreated,
    UserDeleted,
    UserRow,
    UserUpdated,
    app,
    queries,
    user,
    users_projection,
)
from motet.storage import LmdbStore
from motet.storage.records import Checkpoint, RecordedEvent, StoredEvent
from tests.support.commands import create_user as create
from tests.support.commands import place_order

USER_IDS = ["u0", "u1", "u2", "u3"]
EMAILS = ["a@x.org", "b@x.org", "c@x.org"]
CITIES = ["Paris", "Lyon"]


def order(user_id: str, amount: float, order_id: str = "o") -> PlaceOrder:
    return place_order(user_id, order_id, amount)


def as_dict(value: Any) -> Any:
    if isinstance(value, list):
        return [as_dict(v) for v in value]
    return msgspec.structs.asdict(value)


# -- an independent fold of the log -----------------------------------------------------------


def fold_log(engine: Engine, upto: int | None = None) -> dict[str, dict[str, Any]]:
    """Every live user after the log's events up to ``upto`` (default: all),
    folded here from the raw log, without the projection's handlers."""
    users: dict[str, dict[str, Any]] = {}
    position = 0
    while batch := engine.store.read_all(position, 500):
        for record in batch:
            if upto is not None and record.position > upto:
                return users
            event = decode(engine, record)
            if isinstance(event, UserCreated):
                users[event.user_id] = {
                    "user_id": event.user_id,
                    "name": event.name,
                    "email": event.email,
                    "city": event.city,
                    "order_count": 0,
                    "total_spent": 0.0,
                    "last_order_at": None,
                    "_created": record.position,
                }
            elif isinstance(event, UserUpdated):
                for name in ("name", "email", "city"):
                    if getattr(event, name) is not None:
                        users[event.user_id][name] = getattr(event, name)
            elif isinstance(event, UserDeleted):
                del users[event.user_id]
            elif isinstance(event, OrderPlaced):
                found = users[event.user_id]
                found["order_count"] += 1
                found["total_spent"] += event.amount
                found["last_order_at"] = event.at
            position = record.position
    return users


def decode(engine: Engine, record: StoredEvent) -> Any:
    return engine.codec.decode_payload(record.type, record.event_version, record.data)


def row_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A folded user as the read model's row holds it."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """A folded user as the queries answer it: ``last_order_at`` in ISO 8601 UTC."""
    fields = row_fields(row)
    if fields["last_order_at"] is not None:
        at = datetime.datetime.fromtimestamp(fields["last_order_at"], datetime.UTC)
        fields["last_order_at"] = at.isoformat().replace("+00:00", "Z")
    return fields


def expected_answers(
    users: dict[str, dict[str, Any]],
    user_ids: Sequence[str] = USER_IDS,
    emails: Sequence[str] = EMAILS,
    cities: Sequence[str] = CITIES,
) -> dict[str, Any]:
    by_email: dict[str, Any] = {}
    for email in emails:
        holders = [u for u in users.values() if u["email"] == email]
        # Emails are not unique: the earliest registration wins.
        by_email[email] = summary(min(holders, key=lambda u: u["_created"])) if holders else None
    spenders = sorted(users.values(), key=lambda u: (-u["total_spent"], u["user_id"]))
    return {
        "by_id": {uid: summary(users[uid]) if uid in users else None for uid in user_ids},
        "by_email": by_email,
        "by_city": {
            city: [summary(users[uid]) for uid in sorted(users) if users[uid]["city"] == city]
            for city in cities
        },
        "top": [summary(u) for u in spenders],
        "top2": [summary(u) for u in spenders[:2]],
    }


async def answers(
    engine: Engine,
    after: int | None,
    user_ids: Sequence[str] = USER_IDS,
    emails: Sequence[str] = EMAILS,
    cities: Sequence[str] = CITIES,
) -> dict[str, Any]:
    async def one(query: Any) -> Any:
        try:
            return as_dict(await engine.ask(query, after=after, timeout=10))
        except NotFound:
            return None

    return {
        "by_id": {uid: await one(GetUserById(user_id=uid)) for uid in user_ids},
        "by_email": {email: await one(GetUserByEmail(email=email)) for email in emails},
        "by_city": {city: await one(GetUsersByCity(city=city)) for city in cities},
        "top": await one(TopSpenders(limit=1_000)),
        "top2": await one(TopSpenders(limit=2)),
    }


# -- the read model equals a fold of the log, live and after a restart ------------------------

ids = st.sampled_from(USER_IDS)
commands = st.lists(
    st.one_of(
        st.builds(
            CreateUser,
            user_id=ids,
            name=st.sampled_from(["Ann", "Bo"]),
            email=st.sampled_from([*EMAILS, "not-an-email"]),
            password=st.just("pw"),
            city=st.sampled_from([None, *CITIES]),
        ),
        st.builds(
            UpdateUser,
            user_id=ids,
            name=st.sampled_from([None, "Cy", "Di"]),
            email=st.sampled_from([None, *EMAILS]),
            city=st.sampled_from([None, *CITIES]),
        ),
        st.builds(DeleteUser, user_id=ids),
        st.builds(
            PlaceOrder,
            user_id=ids,
            order_id=st.just("o"),
            amount=st.sampled_from([1.0, 2.5, 4.0, 0.0, -3.0]),
        ),
    ),
    min_size=5,
    max_size=30,
)


@settings(max_examples=25, deadline=None)
@given(
    batches=st.lists(commands, min_size=1, max_size=4),
)
async def test_the_users_model_equals_a_fold_of_the_log_live_and_after_reopening(
    batches: list[list[Any]],
) -> None:
    # Hypothesis does not reset function-scoped fixtures between examples.
    directory = tempfile.mkdtemp(prefix="motet-projections-")
    try:
        async with open_engine(directory, app, durability="none") as engine:
            last = 0
            for batch in batches:
                # Each batch is sent concurrently: the log decides the order, and
                # the projection must follow the log, not the order of sending.
                async def send(command: Any) -> None:
                    nonlocal last
                    try:
                        ack = await engine.send(command)
                    except CommandRejected:
                        return
                    last = max(last, ack.position)

                async with trio.open_nursery() as nursery:
                    for command in batch:
                        nursery.start_soon(send, command)
                assert last == engine.head_position
                assert await answers(engine, after=last) == expected_answers(fold_log(engine))
            assert engine.projection("users").position == engine.head_position
            live = await answers(engine, after=last)
            head = engine.head_position

        async with open_engine(directory, app, durability="none") as engine:
            users = engine.projection("users")
            # The snapshot saved at close was restored: nothing to replay.
            assert engine.head_position == head
            assert users.position == head
            again = await answers(engine, after=head)
            assert users.events_applied == 0
            assert again == live == expected_answers(fold_log(engine))
    finally:
        shutil.rmtree(directory)


# -- after= ---------------------------------------------------------------------------------


async def test_after_waits_for_exactly_the_acked_position(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", app, durability="none") as engine:
        users = engine.projection("users")
        created = await engine.send(create("u1"))
        await engine.ask(GetUserById(user_id="u1"), after=created.position)

        users.pause()
        ack = await engine.send(order("u1", 5.0))
        await trio.testing.wait_all_tasks_blocked()
        assert users.position == ack.position - 1

        answered: list[Any] = []

        async def ask_after(position: int) -> None:
            answered.append(await engine.ask(GetUserById(user_id="u1"), after=position, timeout=10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_after, ack.position)
            await trio.testing.wait_all_tasks_blocked()
            assert answered == []
            # One position earlier is already applied: that query answers at once,
            # from the data before the order.
            before = await engine.ask(GetUserById(user_id="u1"), after=ack.position - 1, timeout=0)
            assert before.order_count == 0
            assert answered == []
            users.resume()
        [after] = answered
        assert after.order_count == 1
        assert after.total_spent == 5.0
        assert users.position == ack.position


async def test_after_a_position_never_written_times_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_engine(tmp_path / "store", app, durability="none") as engine:
        ack = await engine.send(create("u1"))
        head = engine.head_position
        assert head == ack.position
        started = trio.current_time()
        with pytest.raises(
            QueryTimeout,
            match=rf"'users' did not reach position {head + 100} within 0.5 s "
            rf"\(it is at {head}, the log's head is {head}\)",
        ):
            await engine.ask(GetUserById(user_id="u1"), after=head + 100, timeout=0.5)
        assert trio.current_time() - started >= 0.5
        with pytest.raises(QueryTimeout):
            await engine.ask(GetUserById(user_id="u1"), after=head + 1, timeout=0)
        # A reached position needs no time at all, even with timeout 0.
        found = await engine.ask(GetUserById(user_id="u1"), after=head, timeout=0)
        assert found.user_id == "u1"
        with pytest.raises(ValueError, match="after must be a position >= 0, got -1"):
            await engine.ask(GetUserById(user_id="u1"), after=-1)
        with pytest.raises(ValueError, match="timeout must be >= 0 seconds, got -1"):
            await engine.ask(GetUserById(user_id="u1"), after=head, timeout=-1)
        with pytest.raises(ValueError, match="timeout must be >= 0 seconds, got nan"):
            await engine.ask(GetUserById(user_id="u1"), after=head, timeout=math.nan)


async def test_a_thousand_writers_each_read_their_own_order(tmp_path: Path) -> None:
    user_count, writers = 50, 1_000
    async with open_engine(tmp_path / "store", app, durability="none") as engine:
        async with trio.open_nursery() as nursery:
            for i in range(user_count):
                nursery.start_soon(engine.send, create(f"u{i:02}"))

        seen: list[tuple[str, int, Any]] = []

        async def write_then_read(i: int) -> None:
            user_id = f"u{i % user_count:02}"
            ack = await engine.send(order(user_id, float(i % 7 + 1), f"o{i}"))
            found = await engine.ask(GetUserById(user_id=user_id), after=ack.position, timeout=30)
            seen.append((user_id, ack.position, found))

        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(write_then_read, i)

        assert len(seen) == writers
        # Each user's (position, order_count, total_spent) after each of its
        # orders, folded from the log.
        after_each: dict[str, list[tuple[int, int, float]]] = {}
        position = 0
        while batch := engine.store.read_all(position, 500):
            for record in batch:
                event = decode(engine, record)
                if isinstance(event, OrderPlaced):
                    states = after_each.setdefault(event.user_id, [])
                    count, total = states[-1][1:] if states else (0, 0.0)
                    states.append((record.position, count + 1, total + event.amount))
                position = record.position
        for user_id, acked, found in seen:
            states = after_each[user_id]
            own = next(i for i, state in enumerate(states) if state[0] == acked)
            # The answer includes the writer's own order: it is the state right
            # after that order or after a later one of the same user.
            assert (found.order_count, found.total_spent) in [s[1:] for s in states[own:]]
            assert found.order_count >= own + 1
        assert sum(len(states) for states in after_each.values()) == writers
        assert engine.projection("users").position == engine.head_position


# -- index maintenance through the example app ----------------------------------------------


async def test_email_city_and_delete_keep_every_query_right(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", app, durability="none") as engine:
        await engine.send(create("u1", email="ann@x.org", city="Paris"))
        await engine.send(create("u2", email="bob@x.org", city="Paris"))
        ack = await engine.send(create("u3", email="cy@x.org", city="Lyon"))

        async def city(name: str) -> list[str]:
            found = await engine.ask(GetUsersByCity(city=name), after=ack.position)
            return [row.user_id for row in found]

        assert await city("Paris") == ["u1", "u2"]
        assert await city("Lyon") == ["u3"]

        ack = await engine.send(UpdateUser(user_id="u1", email="ann@new.org"))
        with pytest.raises(NotFound, match=r"no user with email 'ann@x\.org'"):
            await engine.ask(GetUserByEmail(email="ann@x.org"), after=ack.position)
        moved = await engine.ask(GetUserByEmail(email="ann@new.org"), after=ack.position)
        assert (moved.user_id, moved.email, moved.city) == ("u1", "ann@new.org", "Paris")

        ack = await engine.send(UpdateUser(user_id="u2", city="Lyon"))
        assert await city("Paris") == ["u1"]
        assert await city("Lyon") == ["u2", "u3"]
        ack = await engine.send(UpdateUser(user_id="u1", city="Lyon", name="Ann B"))
        assert await city("Paris") == []
        assert await city("Lyon") == ["u1", "u2", "u3"]
        renamed = await engine.ask(GetUserById(user_id="u1"), after=ack.position)
        assert (renamed.name, renamed.email, renamed.city) == ("Ann B", "ann@new.org", "Lyon")

        await engine.send(order("u2", 50.0))
        ack = await engine.send(DeleteUser(user_id="u2"))
        with pytest.raises(NotFound, match="no user 'u2'"):
            await engine.ask(GetUserById(user_id="u2"), after=ack.position)
        with pytest.raises(NotFound, match=r"no user with email 'bob@x\.org'"):
            await engine.ask(GetUserByEmail(email="bob@x.org"), after=ack.position)
        assert await city("Lyon") == ["u1", "u3"]
        top = await engine.ask(TopSpenders(limit=10), after=ack.position)
        assert [row.user_id for row in top] == ["u1", "u3"]


async def test_an_email_shared_by_two_users_finds_the_first_registered(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", app, durability="none") as engine:
        await engine.send(create("u9", email="same@x.org"))
        await engine.send(create("u1", email="same@x.org"))
        ack = await engine.send(UpdateUser(user_id="u1", name="Second"))
        found = await engine.ask(GetUserByEmail(email="same@x.org"), after=ack.position)
        assert found.user_id == "u9"
        ack = await engine.send(DeleteUser(user_id="u9"))
        found = await engine.ask(GetUserByEmail(email="same@x.org"), after=ack.position)
        assert found.user_id == "u1"


async def test_top_spenders_breaks_ties_by_user_id_and_validates_the_limit(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "store", app, durability="none") as engine:
        for user_id in ("u4", "u3", "u1", "u2"):
            await engine.send(create(user_id))
        await engine.send(order("u3", 10.0))
        await engine.send(order("u2", 4.0))
        await engine.send(order("u1", 10.0))
        await engine.send(order("u4", 3.0))
        ack = await engine.send(order("u2", 6.0))  # u2 ties at 10 with u1 and u3

        async def top(limit: int) -> list[tuple[str, float]]:
            found = await engine.ask(TopSpenders(limit=limit), after=ack.position)
            return [(row.user_id, row.total_spent) for row in found]

        assert await top(10) == [("u1", 10.0), ("u2", 10.0), ("u3", 10.0), ("u4", 3.0)]
        assert await top(2) == [("u1", 10.0), ("u2", 10.0)]
        assert await top(1_000) == await top(10)
        ack = await engine.send(order("u4", 7.0))
        assert await top(10) == [("u1", 10.0), ("u2", 10.0), ("u3", 10.0), ("u4", 10.0)]
        ack = await engine.send(order("u3", 0.5))
        assert await top(2) == [("u3", 10.5), ("u1", 10.0)]

        for bad in (0, -1, 1_001):
            with pytest.raises(ValueError, match=rf"limit must be between 1 and 1000, got {bad}"):
                await engine.ask(TopSpenders(limit=bad), after=ack.position)


async def test_concurrent_orders_of_one_user_lose_no_update(tmp_path: Path) -> None:
    orders = 300
    async with open_engine(
        tmp_path / "store", app, durability="none", mailbox_size=orders
    ) as engine:
        await engine.send(create("u1"))
        await engine.send(create("u2"))
        async with trio.open_nursery() as nursery:
            for i in range(1, orders + 1):
                nursery.start_soon(engine.send, order("u1", float(i), f"o{i}"))
                if i % 3 == 0:
                    nursery.start_soon(engine.send, order("u2", 1.0, f"p{i}"))
        head = engine.head_position
        first = await engine.ask(GetUserById(user_id="u1"), after=head)
        second = await engine.ask(GetUserById(user_id="u2"), after=head)
        assert first.order_count == orders
        assert first.total_spent == orders * (orders + 1) / 2
        assert second.order_count == orders // 3
        assert second.total_spent == float(orders // 3)
        folded = fold_log(engine)
        assert first.last_order_at == summary(folded["u1"])["last_order_at"]
        assert as_dict(first) == summary(folded["u1"])
        assert as_dict(second) == summary(folded["u2"])


# -- a failing projection ------------------------------------------------------------------


class AuditedAmounts(msgspec.Struct, frozen=True, kw_only=True, tag="AuditedAmounts"):
    pass


class Audit:
    def __init__(self) -> None:
        self.amounts: list[float] = []


def audit_app(handler_fixed: list[bool]) -> App:
    """The example app plus an ``audit`` projection whose handler refuses
    orders of 13 until ``handler_fixed[0]`` is set."""

    def on_order(model: Audit, event: OrderPlaced, record: RecordedEvent) -> None:
        if event.amount == 13 and not handler_fixed[0]:
            raise RuntimeError(f"cannot audit {event.order_id!r}")
        model.amounts.append(event.amount)

    audit = Projection(name="audit", initial=Audit, handlers={OrderPlaced: on_order})
    return App(
        aggregates=(user,),
        projections=(users_projection, audit),
        queries=(*queries, Query(AuditedAmounts, "audit", lambda model, _: list(model.amounts))),
    )


def status_of(engine: Engine, name: str) -> Any:
    [found] = [p for p in engine.status().projections if p.name == name]
    return found


async def test_a_failing_projection_stops_alone_and_can_be_retried_skipped_or_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fixed = [False]
    async with open_engine(tmp_path / "store", audit_app(fixed), durability="none") as engine:
        audit = engine.projection("audit")
        await engine.send(create("u1"))
        good = await engine.send(order("u1", 5.0, "o1"))
        bad = await engine.send(order("u1", 13.0, "o13"))
        later = await engine.send(order("u1", 7.0, "o2"))

        assert await engine.ask(AuditedAmounts(), after=good.position) == [5.0]
        stopped = f"'audit' stopped at position {bad.position}: RuntimeError: cannot audit 'o13'"
        with pytest.raises(ProjectionFailed, match=stopped):
            await engine.ask(AuditedAmounts(), after=later.position)
        # Up to the failing event it still answers, from its last state.
        assert await engine.ask(AuditedAmounts(), after=bad.position - 1) == [5.0]
        assert await engine.ask(AuditedAmounts()) == [5.0]

        status = status_of(engine, "audit")
        assert status.state == "failed"
        assert status.position == bad.position - 1
        assert status.failed_position == bad.position
        assert status.error == "RuntimeError: cannot audit 'o13'"
        assert status.lag_events == engine.head_position - status.position
        assert f"projection audit stopped at position {bad.position}" in caplog.text
        assert "failed" in repr(audit)

        # The other projection and the engine carry on.
        ack = await engine.send(order("u1", 2.0, "o3"))
        found = await engine.ask(GetUserById(user_id="u1"), after=ack.position)
        assert found.order_count == 4
        users_status = status_of(engine, "users")
        assert (users_status.state, users_status.error) == ("running", None)
        assert users_status.position == ack.position
        assert status_of(engine, "audit").position == bad.position - 1

        # Retrying while the handler is still broken fails at the same event.
        audit.retry()
        with pytest.raises(ProjectionFailed, match=stopped):
            await engine.ask(AuditedAmounts(), after=ack.position)
        assert status_of(engine, "audit").failed_position == bad.position
        # So does a rebuild, which keeps the current model.
        model = audit.model
        with pytest.raises(ProjectionFailed, match=f"failed at position {bad.position}"):
            await audit.rebuild()
        assert audit.model is model
        assert status_of(engine, "audit").state == "failed"

        # Skipping the event moves past it; the projection catches up.
        audit.skip()
        assert await engine.ask(AuditedAmounts(), after=ack.position, timeout=10) == [5.0, 7.0, 2.0]
        status = status_of(engine, "audit")
        assert (status.state, status.error, status.failed_position) == ("running", None, None)
        assert status.position == engine.head_position

        # Another bad event, then the handler is fixed and a retry applies it.
        bad = await engine.send(order("u1", 13.0, "o13b"))
        ack = await engine.send(order("u1", 1.0, "o4"))
        with pytest.raises(ProjectionFailed, match=f"stopped at position {bad.position}"):
            await engine.ask(AuditedAmounts(), after=ack.position)
        fixed[0] = True
        audit.retry()
        assert await engine.ask(AuditedAmounts(), after=ack.position) == [5.0, 7.0, 2.0, 13.0, 1.0]
        assert status_of(engine, "audit").state == "running"
        # A rebuild now folds every event, the first 13 included.
        await audit.rebuild()
        every_order = [5.0, 13.0, 7.0, 2.0, 13.0, 1.0]
        assert await engine.ask(AuditedAmounts(), after=ack.position) == every_order


# -- snapshots and rebuilds ----------------------------------------------------------------


async def seed(engine: Engine) -> int:
    """A little of everything; returns the head position."""
    await engine.send(create("u0", email="a@x.org", city="Paris"))
    await engine.send(create("u1", email="b@x.org", city="Lyon"))
    await engine.send(create("u2", email="a@x.org", city="Paris"))
    await engine.send(create("u3", email="c@x.org"))
    for i, (user_id, amount) in enumerate([("u0", 3.0), ("u1", 9.5), ("u2", 3.0), ("u0", 1.0)]):
        await engine.send(order(user_id, amount, f"o{i}"))
    await engine.send(UpdateUser(user_id="u1", email="c@x.org", city="Paris"))
    await engine.send(DeleteUser(user_id="u0"))
    await engine.send(UpdateUser(user_id="u3", city="Lyon"))
    ack = await engine.send(order("u3", 2.0, "o9"))
    return ack.position


async def test_a_restart_from_the_snapshot_equals_a_full_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "store"
    async with open_engine(path, app, durability="none") as engine:
        head = await seed(engine)
        live = await answers(engine, after=head)
        assert live == expected_answers(fold_log(engine))
    with closing(LmdbStore(path)) as store:
        saved = store.get_checkpoint("users")
    assert saved is not None and saved.position == head and saved.schema_version == 1

    async with open_engine(path, app, durability="none") as engine:
        users = engine.projection("users")
        assert users.position == head
        restored = await answers(engine, after=head)
        assert users.events_applied == 0
        restored_model = users.model
        await users.rebuild()
        assert users.model is not restored_model
        assert users.position == head
        rebuilt = await answers(engine, after=head)
        assert restored == rebuilt == live == expected_answers(fold_log(engine))


async def saved_snapshot(path: Path) -> tuple[int, dict[str, Any], Checkpoint]:
    """Seed a store at ``path``; return its head, the answers and the checkpoint."""
    async with open_engine(path, app, durability="none") as engine:
        head = await seed(engine)
        live = await answers(engine, after=head)
    with closing(LmdbStore(path)) as store:
        checkpoint = store.get_checkpoint("users")
    assert checkpoint is not None and checkpoint.position == head
    return head, live, checkpoint


async def assert_rebuilt_from_the_log(path: Path, head: int, live: dict[str, Any]) -> None:
    async with open_engine(path, app, durability="none") as engine:
        users = engine.projection("users")
        assert await answers(engine, after=head) == live == expected_answers(fold_log(engine))
        # Every event was applied again: the snapshot was not used.
        assert users.events_applied == head
    # Closing saved a good snapshot again, so the next start needs no replay.
    async with open_engine(path, app, durability="none") as engine:
        users = engine.projection("users")
        assert users.position == head
        assert await answers(engine, after=head) == live
        assert users.events_applied == 0


async def test_a_corrupt_snapshot_falls_back_to_a_rebuild(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="motet.projections")
    path = tmp_path / "store"
    head, live, _ = await saved_snapshot(path)
    # Overwritten while the engine is open (with nothing new to save at close).
    async with open_engine(path, app, durability="none") as engine:
        await trio.to_thread.run_sync(
            engine.store.put_checkpoint,
            "users",
            Checkpoint(head, 1, b"garbage"),
            limiter=engine.writer.limiter,
        )
    assert caplog.records == []

    await assert_rebuilt_from_the_log(path, head, live)
    [warning] = caplog.records
    assert warning.name == "motet.projections"
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("projection users: unreadable snapshot (")
    assert warning.getMessage().endswith("); rebuilding")


async def test_a_snapshot_of_another_schema_falls_back_to_a_rebuild(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="motet.projections")
    path = tmp_path / "store"
    head, live, checkpoint = await saved_snapshot(path)
    # Readable bytes, but written by another version of the model's code.
    with closing(LmdbStore(path)) as store:
        store.put_checkpoint("users", Checkpoint(head, 99, checkpoint.model))

    await assert_rebuilt_from_the_log(path, head, live)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            "motet.projections",
            logging.WARNING,
            "projection users: snapshot has schema 99, code has 1; rebuilding from the log",
        )
    ]


async def test_a_snapshot_past_the_head_of_the_log_falls_back_to_a_rebuild(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="motet.projections")
    path = tmp_path / "store"
    head, live, checkpoint = await saved_snapshot(path)
    with closing(LmdbStore(path)) as store:
        store.put_checkpoint("users", Checkpoint(head + 5, 1, checkpoint.model))

    await assert_rebuilt_from_the_log(path, head, live)
    assert [r.getMessage() for r in caplog.records] == [
        f"projection users: snapshot at position {head + 5} is past the log's head {head}; "
        "rebuilding"
    ]


async def test_queries_answer_from_the_old_model_until_a_rebuild_swaps_it_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_engine(tmp_path / "store", app, durability="none") as engine:
        users = engine.projection("users")
        head = await seed(engine)
        before = await answers(engine, after=head)

        # Hold the rebuild after its first read of the log (it reads in a worker
        # thread; the live projection reads on the event loop, unaffected).
        read_all = engine.store.read_all
        release = threading.Event()
        first_read_done = trio.Event()
        rebuild_reads: list[int] = []

        def held_read_all(after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
            events = read_all(after_position, limit)
            if threading.current_thread() is not threading.main_thread():
                rebuild_reads.append(after_position)
                trio.from_thread.run_sync(first_read_done.set)
                assert release.wait(timeout=10)
            return events

        monkeypatch.setattr(engine.store, "read_all", held_read_all)
        old_model = users.model
        async with trio.open_nursery() as nursery:
            nursery.start_soon(users.rebuild)
            await first_read_done.wait()
            assert status_of(engine, "users").state == "rebuilding"
            assert users.model is old_model
            assert await answers(engine, after=head) == before

            # Writes during the rebuild still reach the queries, through the old model.
            await engine.send(order("u1", 100.0, "during"))
            ack = await engine.send(UpdateUser(user_id="u2", city="Lyon"))
            during = await answers(engine, after=ack.position)
            assert during == expected_answers(fold_log(engine))
            assert during != before
            assert users.model is old_model
            release.set()

        assert users.model is not old_model
        assert status_of(engine, "users").state == "running"
        # The rebuild read the log again past its first batch, to catch up with
        # the writes made meanwhile.
        assert rebuild_reads[0] == 0 and rebuild_reads[-1] == head
        assert users.position == ack.position
        assert await answers(engine, after=ack.position) == during


async def test_a_rebuild_racing_a_catch_up_read_applies_each_event_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The live projection, far behind, reads a batch in a worker thread while a
    # rebuild swaps in a model that is already past the start of that batch:
    # the overlapping events must not be applied a second time.
    user_count, orders = 20, 2_050
    async with open_engine(tmp_path / "store", app, durability="none") as engine:
        users = engine.projection("users")
        for i in range(user_count):
            await engine.send(create(f"u{i:02}"))
        users.pause()
        async with trio.open_nursery() as nursery:
            for i in range(orders):
                nursery.start_soon(engine.send, order(f"u{i % user_count:02}", float(i % 3 + 1)))
        head = engine.head_position
        behind = users.position
        assert head - behind > 2_000  # far enough behind to read in a worker thread

        read_all = engine.store.read_all
        release = threading.Event()
        first_read_done = trio.Event()

        def held_read_all(after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
            events = read_all(after_position, limit)
            if threading.current_thread() is not threading.main_thread():
                trio.from_thread.run_sync(first_read_done.set)
                assert release.wait(timeout=10)
            return events

        monkeypatch.setattr(engine.store, "read_all", held_read_all)
        # One worker thread: the live projection's read starts only once the
        # rebuild's read is over, so its batch (read from the old position)
        # overlaps the rebuilt model.
        trio.to_thread.current_default_thread_limiter().total_tokens = 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(users.rebuild)
            await first_read_done.wait()
            users.resume()
            await trio.testing.wait_all_tasks_blocked()
            assert users.position == behind
            release.set()

        assert await answers(
            engine, after=head, user_ids=[f"u{i:02}" for i in range(user_count)]
        ) == expected_answers(fold_log(engine), user_ids=[f"u{i:02}" for i in range(user_count)])
        assert users.position == head


async def test_the_model_is_saved_every_snapshot_every_events(tmp_path: Path) -> None:
    often = dataclasses.replace(users_projection, snapshot_every=5)
    frequent = App(aggregates=(user,), projections=(often,), queries=queries)
    async with open_engine(tmp_path / "store", frequent, durability="none") as engine:
        head = await seed(engine)
        await engine.ask(GetUserById(user_id="u1"), after=head)
        # Saving follows applying, in a worker thread: wait for it.
        with trio.fail_after(5):
            while (saved := engine.store.get_checkpoint("users")) is None or (
                saved.position <= head - 5
            ):
                await trio.sleep(0.01)
        assert saved.model is not None
        assert head - 5 < saved.position <= head
        # The model holds personal data: it is sealed under the read-model key.
        opened = engine.codec.open_sealed("users", saved.model)
        assert opened is not None and opened[0] != saved.model
        rows = msgspec.msgpack.decode(opened[0], type=list[UserRow])
        expected = fold_log(engine, upto=saved.position)
        assert sorted(
            (msgspec.structs.asdict(row) for row in rows), key=lambda r: r["user_id"]
        ) == [
            {**row_fields(u), "created_at_position": u["_created"]}
            for _, u in sorted(expected.items())
        ]
