"""Consumer groups in one process: delivery, acks and nacks, ordering per
stream, rebalancing, parking and replay, durable progress, bad input."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from motet.actors.consumer_group import BUCKETS, Delivery, bucket_of
from motet.engine import Engine, NotFound, open_engine
from motet.engine.example import app
from motet.storage.errors import InvalidMessage
from tests.support.commands import create_user, place_order


async def seed(engine: Engine, users: int, orders: int) -> int:
    """``users`` users with ``orders`` orders each; the head position."""
    for u in range(users):
        await engine.send(create_user(f"u{u}"))
    ack = None
    for o in range(orders):
        for u in range(users):
            ack = await engine.send(place_order(f"u{u}", f"o{o}", 1.0 + o))
    return engine.head_position if ack is None else ack.position


async def take(member: Any, count: int, *, ack: bool = False) -> list[Delivery]:
    """The next ``count`` deliveries, acked as they come with ``ack``."""
    out = []
    async for delivery in member:
        out.append(delivery)
        if ack:
            await delivery.ack()
        if len(out) == count:
            break
    return out


async def nothing_more(member: Any) -> None:
    with trio.move_on_after(0.2):
        extra = await take(member, 1)
        pytest.fail(f"unexpected delivery {extra}")


def test_the_bucket_of_a_stream_is_a_stable_hash() -> None:
    # Fixed values: the same in every process and release (CRC-32).
    assert bucket_of("User-u1") == 3268455953 % BUCKETS == 17
    assert {bucket_of(f"User-u{i}") for i in range(1000)} == set(range(BUCKETS))


async def test_one_member_gets_every_matching_event_in_order_and_acks_them(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "db", app) as engine:
        head = await seed(engine, users=3, orders=4)
        async with engine.consume("mailer", category="User", types=["OrderPlaced"]) as member:
            deliveries = await take(member, 12, ack=True)
            await nothing_more(member)
        assert {d.event.type for d in deliveries} == {"OrderPlaced"}
        by_stream: dict[str, list[int]] = defaultdict(list)
        for d in deliveries:
            by_stream[d.event.stream].append(d.event.version)
        assert by_stream == {f"User-u{u}": [2, 3, 4, 5] for u in range(3)}
        [status] = engine.status().groups
        assert status.name == "mailer"
        assert status.position == head
        assert status.lag_events == 0
        assert status.acked == 12


async def test_progress_survives_a_restart_and_only_unacked_events_come_again(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "db", app) as engine:
        await seed(engine, users=4, orders=3)
        async with engine.consume("mailer", types=["OrderPlaced"]) as member:
            # One event of each stream at a time: the first order of each user.
            first = await take(member, 4, ack=True)
            assert {d.event.version for d in first} == {2}
            second = await take(member, 4)
            # Acked out of order: u3's second order while the others wait.
            [u3] = [d for d in second if d.event.stream == "User-u3"]
            await u3.ack()
        acked = {d.position for d in first} | {u3.position}
    async with open_engine(tmp_path / "db", app) as engine:
        assert engine.status().groups[0].lag_events > 0
        async with engine.consume("mailer", types=["OrderPlaced"]) as member:
            again = await take(member, 7, ack=True)
            await nothing_more(member)
        assert not {d.position for d in again} & acked
        assert sorted((d.event.stream, d.event.version) for d in again) == sorted(
            [(f"User-u{u}", v) for u in range(3) for v in (3, 4)] + [("User-u3", 4)]
        )
        assert engine.status().groups[0].lag_events == 0


async def test_a_poison_event_is_parked_other_streams_flow_and_replay_delivers_it(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "db", app, group_max_attempts=3) as engine:
        await seed(engine, users=2, orders=2)
        poison = None
        handled: list[tuple[str, int]] = []
        async with engine.consume("billing", types=["OrderPlaced"]) as member:
            async for delivery in member:
                event = delivery.event
                if event.stream == "User-u0" and event.version == 2:
                    poison = delivery.position
                    await delivery.nack("amount is cursed", retry_after=0.01)
                    continue
                handled.append((event.stream, event.version))
                await delivery.ack()
                if len(handled) == 3:
                    break
            assert handled == [("User-u1", 2), ("User-u1", 3), ("User-u0", 3)] or sorted(
                handled
            ) == [("User-u0", 3), ("User-u1", 2), ("User-u1", 3)]
            [status] = engine.status().groups
            [parked] = status.parked
            assert (parked.position, parked.stream, parked.attempts) == (poison, "User-u0", 3)
            assert parked.error == "amount is cursed"
            assert status.lag_events == 0
            with pytest.raises(NotFound, match="has no parked event at position 1 "):
                await engine.groups.get("billing").replay(1)
            await engine.groups.get("billing").replay(poison)
            [again] = await take(member, 1)
            assert again.position == poison
            await again.ack()
        assert engine.status().groups[0].parked == []
    async with open_engine(tmp_path / "db", app) as engine:
        assert engine.status().groups[0].parked == []


async def test_members_share_streams_and_take_over_when_one_leaves(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "db", app) as engine:
        await seed(engine, users=20, orders=1)
        async with engine.consume("g", category="User", prefetch=5) as first:
            async with engine.consume("g", category="User", prefetch=5) as second:
                a = await take(first, 5)
                b = await take(second, 5)
                assert not {d.event.stream for d in a} & {d.event.stream for d in b}
                for d in b:
                    await d.ack()
            # second left with nothing unacked; first holds 5 unacked and gets the rest
            for d in a:
                await d.ack()
            await take(first, 30, ack=True)
            await nothing_more(first)
            assert engine.status().groups[0].lag_events == 0


async def test_bad_joins_acks_and_nacks_are_refused_precisely(tmp_path: Path) -> None:
    async with open_engine(None, app) as engine:
        with pytest.raises(
            InvalidMessage, match=r"^prefetch must be an integer from 1 to 10000, got 0$"
        ):
            async with engine.consume("g", prefetch=0):
                pass
        with pytest.raises(InvalidMessage, match="cannot contain '-', got 'User-1'"):
            async with engine.consume("g", category="User-1"):
                pass
        with pytest.raises(InvalidMessage, match="types must name at least one"):
            async with engine.consume("g", types=[]):
                pass
        with pytest.raises(ValueError, match="group must be a non-empty string"):
            async with engine.consume(""):
                pass
        async with engine.consume("g", category="User") as member:
            with pytest.raises(
                InvalidMessage, match="every member of a group uses the same filter"
            ):
                async with engine.consume("g", category="Order"):
                    pass
            with pytest.raises(NotFound, match="position 7 is not in flight for member g/"):
                await member.ack(7)
            with pytest.raises(InvalidMessage, match="retry_after must be a number of seconds"):
                member.nack(7, retry_after=-1)


async def test_group_metrics_show_lag_parked_in_flight_and_redeliveries(tmp_path: Path) -> None:
    from tests.engine.test_metrics import scrape

    async with open_engine(tmp_path / "db", app, metrics_port=0, group_max_attempts=2) as engine:
        await seed(engine, users=2, orders=1)
        async with engine.consume("g", types=["OrderPlaced"]) as member:
            scraped = await scrape(engine)
            assert scraped.value("motet_group_lag_events", group="g") == 2
            assert scraped.value("motet_group_in_flight", group="g") == 2
            assert scraped.value("motet_group_members", group="g") == 1
            async for delivery in member:
                if delivery.event.stream == "User-u0":
                    await delivery.nack("no")
                else:
                    await delivery.ack()
                if engine.status().groups[0].parked:
                    break
            scraped = await scrape(engine)
            assert scraped.value("motet_group_parked", group="g") == 1
            assert scraped.value("motet_group_lag_events", group="g") == 0
            assert scraped.value("motet_group_lag_seconds", group="g") == 0
            assert scraped.value("motet_group_redeliveries_total", group="g") == 1
            assert scraped.value("motet_group_acked_total", group="g") == 1
            assert scraped.value("motet_group_delivered_total", group="g") == 3


async def test_groups_work_on_postgresql(postgres_cluster: Any) -> None:
    from tests.support.postgres import new_schema_url

    url = new_schema_url(postgres_cluster)
    async with open_engine(url, app) as engine:
        await seed(engine, users=3, orders=2)
        async with engine.consume("pg", category="User", types=["OrderPlaced"]) as member:
            first = await take(member, 3, ack=True)
    async with open_engine(url, app) as engine:
        [status] = engine.status().groups
        assert status.lag_events == 3
        async with engine.consume("pg", category="User", types=["OrderPlaced"]) as member:
            rest = await take(member, 3, ack=True)
            await nothing_more(member)
        assert {d.event.version for d in first} == {2}
        assert {d.event.version for d in rest} == {3}
        assert engine.status().groups[0].lag_events == 0
