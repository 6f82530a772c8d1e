"""The asyncio engine (motet.engine.aio) under asyncio.run and uvloop: the trio
engine's methods and exception classes, projections under control, closing,
cancellation of waits, and a failure of the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

import motet.engine
from motet.actors.projection import Projection, ProjectionFailed, Query
from motet.engine import (
    App,
    CommandRejected,
    Conflict,
    EngineClosed,
    NotFound,
    QueryTimeout,
    StoreFormatError,
    UnknownMessageType,
)
from motet.engine.aio import Engine, ProjectionHandle, open_engine
from motet.engine.example import (
    CreateUser,
    GetUserById,
    OrderPlaced,
    PlaceOrder,
    UpdateUser,
    app,
    queries,
    user,
    users_projection,
)
from motet.storage.records import StoredEvent


def create(user_id: str) -> CreateUser:
    return CreateUser(
        user_id=user_id, name=f"Name {user_id}", email=f"{user_id}@example.org", password="pw"
    )


def test_commands_queries_streams_and_subscriptions(run_on_loop: Any, tmp_path: Path) -> None:
    async def main() -> None:
        async with open_engine(tmp_path / "data", app, durability="none") as engine:
            assert isinstance(engine, Engine)
            ack = await engine.send(create("u1"), command_id="create-u1", correlation_id="c-1")
            assert (ack.stream, ack.version, ack.position) == ("User-u1", 1, 1)
            again = await engine.send(create("u1"), command_id="create-u1")
            assert again == ack
            ordered = await engine.send(PlaceOrder(user_id="u1", order_id="o1", amount=12.5))
            summary = await engine.ask(GetUserById(user_id="u1"), after=ordered.position)
            assert (summary.user_id, summary.order_count, summary.total_spent) == ("u1", 1, 12.5)

            events = await engine.read_stream("User-u1")
            assert [(e.version, e.type) for e in events] == [(1, "UserCreated"), (2, "OrderPlaced")]
            assert events[0].metadata.correlation_id == "c-1"
            assert await engine.read_stream("User-u1", 1, limit=5) == events[1:]
            assert await engine.read_stream("User-nobody") == []

            seen = []
            async with contextlib.aclosing(engine.subscribe()) as stream:
                async for event in stream:
                    seen.append(event.position)
                    if event.position == 2:
                        # Live: a command sent while subscribed arrives next.
                        await engine.send(UpdateUser(user_id="u1", city="Oslo"))
                    if event.position == 3:
                        break
            assert seen == [1, 2, 3]
            async with contextlib.aclosing(engine.subscribe(2)) as stream:
                assert (await anext(stream)).position == 3

            forgotten = await engine.forget("u1")
            assert (forgotten.position, forgotten.key_deleted) == (4, True)
            assert (await engine.read_stream("User-u1"))[0].data.name == ""
            with pytest.raises(ValueError, match="subject must be a non-empty string"):
                await engine.forget("")

            status = engine.status()
            assert status.head_position == engine.head_position == 4
            assert [p.name for p in status.projections] == ["users"]
            assert "CreateUser" in status.commands
            statistics = engine.statistics()
            assert statistics.events_appended == 4
            assert engine.metrics is not None
            assert "running" in repr(engine)
        assert "closed" in repr(engine)

    run_on_loop(main)


def test_errors_are_the_embedded_api_classes(tmp_path: Path) -> None:
    async def main() -> None:
        async with open_engine(None, app) as engine:
            await engine.send(create("u1"))
            with pytest.raises(CommandRejected, match="user 'u1' already exists") as rejected:
                await engine.send(create("u1"))
            assert type(rejected.value) is motet.engine.CommandRejected
            with pytest.raises(Conflict, match="expected version 5") as conflict:
                await engine.send(UpdateUser(user_id="u1", city="Oslo"), expected_version=5)
            assert (conflict.value.stream, conflict.value.expected) == ("User-u1", 5)
            with pytest.raises(NotFound, match="no user 'u2'"):
                await engine.ask(GetUserById(user_id="u2"))
            with pytest.raises(QueryTimeout, match="did not reach position 99"):
                await engine.ask(GetUserById(user_id="u1"), after=99, timeout=0.05)
            with pytest.raises(ValueError, match="after must be a position >= 0, got -1"):
                await engine.ask(GetUserById(user_id="u1"), after=-1)
            with pytest.raises(UnknownMessageType):
                await engine.send(object())
            with pytest.raises(UnknownMessageType):
                await engine.ask(object())
            with pytest.raises(ValueError, match="from_position must be >= 0, got -1"):
                await anext(engine.subscribe(-1))
            with pytest.raises(KeyError, match="no projection 'nope'; known: users"):
                engine.projection("nope")

    asyncio.run(main())
    # Opening errors too: a directory that is not a Motet store.
    (tmp_path / "not-a-store").mkdir()
    (tmp_path / "not-a-store" / "notes.txt").write_text("mine")

    async def open_foreign() -> None:
        async with open_engine(tmp_path / "not-a-store", app):
            raise AssertionError("opened")

    with pytest.raises(StoreFormatError):
        asyncio.run(open_foreign())
    assert (tmp_path / "not-a-store" / "notes.txt").read_text() == "mine"


def test_a_second_engine_on_the_same_loop_is_refused_and_engines_in_turn_work(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with open_engine(tmp_path / "a", app, durability="none") as engine:
            await engine.send(create("u1"))
            with pytest.raises(RuntimeError, match="this thread already runs trio"):
                async with open_engine(tmp_path / "b", app):
                    pass
        async with open_engine(tmp_path / "a", app, durability="none") as engine:
            assert engine.head_position == 1

    asyncio.run(main())


def test_closing_ends_waits_and_commits_what_was_accepted(tmp_path: Path) -> None:
    async def main() -> None:
        async with open_engine(tmp_path / "data", app, durability="none") as engine:
            await engine.send(create("u1"))
            waiting_query = asyncio.create_task(
                engine.ask(GetUserById(user_id="u1"), after=1_000, timeout=60)
            )
            subscription = engine.subscribe(1)
            waiting_event = asyncio.create_task(anext(subscription))
            sends = [
                asyncio.create_task(
                    engine.send(PlaceOrder(user_id="u1", order_id=f"o{i}", amount=1))
                )
                for i in range(50)
            ]
            await asyncio.sleep(0)
        with pytest.raises(EngineClosed):
            await waiting_query
        with pytest.raises(EngineClosed):
            await waiting_event
        acks = await asyncio.gather(*sends)
        assert sorted(a.position for a in acks) == list(range(2, 52))
        with pytest.raises(EngineClosed, match="closing"):
            await engine.send(create("u2"))
        with pytest.raises(EngineClosed):
            await engine.ask(GetUserById(user_id="u1"))
        async with open_engine(tmp_path / "data", app, durability="none") as engine:
            assert engine.head_position == 51

    asyncio.run(main())


def test_cancelling_a_wait_cancels_only_the_wait(run_on_loop: Any) -> None:
    async def main() -> None:
        async with open_engine(None, app) as engine:
            ack = await engine.send(create("u1"))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await engine.ask(GetUserById(user_id="u1"), after=ack.position + 1, timeout=60)
            subscriber = asyncio.create_task(anext(engine.subscribe(ack.position)))
            await asyncio.sleep(0.01)
            subscriber.cancel()
            with pytest.raises(asyncio.CancelledError):
                await subscriber
            # The engine carries on and the cancelled calls' trio tasks ended.
            later = await engine.send(PlaceOrder(user_id="u1", order_id="o1", amount=3))
            assert (
                await engine.ask(GetUserById(user_id="u1"), after=later.position)
            ).order_count == 1
            await asyncio.sleep(0.01)
            assert "running=0" in repr(engine._calls)

    run_on_loop(main)


# -- projections under control --------------------------------------------------------


class AuditedAmounts(msgspec.Struct, frozen=True, kw_only=True, tag="AuditedAmounts"):
    pass


class Audit:
    def __init__(self) -> None:
        self.amounts: list[float] = []


def audit_app(fixed: list[bool]) -> App:
    def on_order(model: Audit, event: OrderPlaced, record: StoredEvent) -> None:
        if event.amount == 13 and not fixed[0]:
            raise RuntimeError(f"cannot audit {event.order_id!r}")
        model.amounts.append(event.amount)

    audit = Projection(name="audit", initial=Audit, handlers={OrderPlaced: on_order})
    return App(
        aggregates=(user,),
        projections=(users_projection, audit),
        queries=(*queries, Query(AuditedAmounts, "audit", lambda model, _: list(model.amounts))),
    )


def test_a_failing_projection_is_paused_resumed_retried_skipped_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="motet")
    fixed = [False]

    async def main() -> None:
        async with open_engine(tmp_path / "data", audit_app(fixed), durability="none") as engine:
            audit = engine.projection("audit")
            assert isinstance(audit, ProjectionHandle)
            assert set(engine.projections) == {"users", "audit"}
            await engine.send(create("u1"))
            await engine.send(PlaceOrder(user_id="u1", order_id="o1", amount=5))
            bad = await engine.send(PlaceOrder(user_id="u1", order_id="o2", amount=13))
            with pytest.raises(ProjectionFailed, match=f"stopped at position {bad.position}"):
                await engine.ask(AuditedAmounts(), after=bad.position)
            assert audit.status().state == "failed"
            assert audit.failed_position == bad.position
            assert "cannot audit 'o2'" in (audit.error or "")
            assert await engine.ask(AuditedAmounts()) == [5]

            audit.retry()  # still broken: stops on the same event again
            with pytest.raises(ProjectionFailed):
                await audit.wait_for(bad.position)
            audit.skip()
            later = await engine.send(PlaceOrder(user_id="u1", order_id="o3", amount=7))
            assert await engine.ask(AuditedAmounts(), after=later.position) == [5, 7]

            audit.pause()
            paused = await engine.send(PlaceOrder(user_id="u1", order_id="o4", amount=8))
            with pytest.raises(QueryTimeout):
                await engine.ask(AuditedAmounts(), after=paused.position, timeout=0.05)
            audit.resume()
            assert await engine.ask(AuditedAmounts(), after=paused.position) == [5, 7, 8]

            fixed[0] = True
            await audit.rebuild()
            assert await engine.ask(AuditedAmounts()) == [5, 13, 7, 8]
            assert audit.position == engine.head_position
            await audit.save()

    asyncio.run(main())


# -- the runtime failing under the block --------------------------------------------------


def test_a_runtime_failure_cancels_the_block_and_is_raised_from_it() -> None:
    """When the trio runtime fails (here a task in the actors' nursery raises),
    the block is cancelled, as asyncio.TaskGroup does for a failing child,
    waiting calls end with EngineClosed, and the failure comes out of the
    ``async with`` itself, as from the trio engine."""
    waits: list[asyncio.Task[Any]] = []

    async def main() -> None:
        async with open_engine(None, app) as engine:
            await engine.send(create("u1"))

            async def crash() -> None:
                raise ZeroDivisionError("the runtime broke")

            waits.append(
                asyncio.create_task(engine.ask(GetUserById(user_id="u1"), after=50, timeout=60))
            )
            await asyncio.sleep(0.01)
            # Engine internals, only to make the runtime fail.
            engine._engine.registry._nursery.start_soon(crash)  # type: ignore[union-attr]
            await asyncio.sleep(30)
            raise AssertionError("the block was not cancelled")

    async def guarded() -> None:
        async with asyncio.timeout(10):
            try:
                await main()
            finally:
                with pytest.raises(EngineClosed):
                    await waits[0]

    with pytest.raises(BaseExceptionGroup) as failed:
        asyncio.run(guarded())
    assert failed.group_contains(ZeroDivisionError, match="the runtime broke")


def test_a_slow_subscriber_slows_its_producer_and_misses_nothing() -> None:
    async def main() -> None:
        async with open_engine(None, app) as engine:
            await engine.send(create("u1"))
            for n in range(40):
                await engine.send(PlaceOrder(user_id="u1", order_id=f"o{n}", amount=1))
            positions = []
            async with contextlib.aclosing(engine.subscribe(batch_size=3)) as stream:
                async for event in stream:
                    positions.append(event.position)
                    if len(positions) % 10 == 0:
                        await asyncio.sleep(0.01)  # the producer waits for room
                    if event.position == 41:
                        break
            assert positions == list(range(1, 42))

    asyncio.run(main())


def test_metrics_are_served_over_http_from_the_guest_run() -> None:
    httpx = pytest.importorskip("httpx")

    async def main() -> None:
        async with open_engine(None, app, metrics_port=0) as engine:
            await engine.send(create("u1"))
            assert engine.metrics_port
            async with httpx.AsyncClient() as http:
                reply = await http.get(f"http://127.0.0.1:{engine.metrics_port}/metrics")
            assert reply.status_code == 200
            assert "motet_log_head_position 1.0" in reply.text

    asyncio.run(main())
