"""Work on the event loop stays bounded, and a closed engine answers nothing.

- status and a metrics scrape cost O(aggregate types + projections), not
  O(live actors): the live counts are kept as actors start and stop;
- list queries answer at most a bounded page;
- after the engine closed, ``ask``, ``read_stream`` and ``subscribe`` raise
  :class:`EngineClosed`, as ``send`` does.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from motet.engine import Engine, EngineClosed, open_engine
from motet.engine.example import GetUserById, GetUsersByCity, app
from motet.engine.example.read import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    UserRow,
    UsersModel,
    get_users_by_city,
)
from tests.support.commands import create_user

create = partial(create_user, name="Ann")

LIVE = 100_000
BOUND = 0.020  # seconds: the loose bound of one status or scrape (well under 5 ms in fact)


def walked_counts(engine: Engine) -> dict[str, int]:
    """The live actors per aggregate, counted by walking them (the slow truth)."""
    return dict(Counter(actor.definition.name for actor in engine.registry._actors.values()))


def slowest(call: object, times: int = 5) -> float:
    worst = 0.0
    for _ in range(times):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        worst = max(worst, time.perf_counter() - started)
    return worst


async def test_status_and_a_scrape_do_not_walk_100000_live_actors() -> None:
    user = app.aggregates[0]
    async with open_engine(None, app, passivate_after=1e9) as engine:
        for n in range(LIVE):
            engine.registry.actor_for(user, f"u{n}")
        assert engine.status().actors_by_aggregate == {"User": LIVE}
        assert engine.status().actors == LIVE
        assert engine.metrics is not None
        assert f'motet_actors_active{{aggregate="User"}} {float(LIVE)}' in (
            engine.metrics.exposition().decode()
        )

        status_seconds = slowest(engine.status)
        scrape_seconds = slowest(engine.metrics.exposition)

    assert status_seconds < BOUND, f"status() took {status_seconds * 1000:.1f} ms"
    assert scrape_seconds < BOUND, f"a scrape took {scrape_seconds * 1000:.1f} ms"


async def test_live_counts_stay_exact_through_eviction() -> None:
    cap = 5
    async with open_engine(None, app, max_actors=cap, passivate_after=1e9) as engine:
        for n in range(20):
            await engine.send(create(f"u{n}"))
            assert engine.status().actors_by_aggregate == walked_counts(engine)
        assert engine.registry.statistics().evicted == 15
        assert engine.status().actors_by_aggregate == {"User": cap}
        assert engine.registry.statistics().by_aggregate == {"User": cap}


async def test_live_counts_stay_exact_through_passivation(
    mock_clock: trio.testing.MockClock,
) -> None:
    # The clock moves only when told: an autojumping one could pass the idle
    # time while a command waits for its commit in the writer's thread.
    async with open_engine(None, app, passivate_after=10) as engine:
        for user_id in ("a", "b", "c"):
            await engine.send(create(user_id))
        assert engine.status().actors_by_aggregate == {"User": 3}
        for _ in range(8):  # the sweep runs every passivate_after / 4 seconds
            mock_clock.jump(5)
            await trio.testing.wait_all_tasks_blocked()
        assert engine.registry.statistics().passivated == 3
        assert engine.status().actors_by_aggregate == {}
        assert engine.status().actors == 0
        assert engine.metrics is not None
        assert 'motet_actors_active{aggregate="User"} 0.0' in engine.metrics.exposition().decode()
        await engine.send(create("d"))
        assert engine.status().actors_by_aggregate == {"User": 1} == walked_counts(engine)


# -- list queries are bounded ---------------------------------------------------------


def city_model(n: int) -> UsersModel:
    return UsersModel(
        [UserRow(user_id=f"u{k:06d}", name="N", email=f"{k}@x.org", city="Lyon") for k in range(n)]
    )


def test_users_by_city_answers_a_bounded_page_and_pages_on() -> None:
    model = city_model(2_500)

    first = get_users_by_city(model, GetUsersByCity(city="Lyon"))
    assert isinstance(first, list)
    assert len(first) == DEFAULT_LIST_LIMIT == 100
    assert [u.user_id for u in first] == [f"u{k:06d}" for k in range(100)]

    seen = []
    after = None
    while True:
        page = get_users_by_city(
            model, GetUsersByCity(city="Lyon", limit=MAX_LIST_LIMIT, after_user_id=after)
        )
        if not page:
            break
        assert len(page) <= MAX_LIST_LIMIT
        seen.extend(u.user_id for u in page)
        after = page[-1].user_id
    assert seen == [f"u{k:06d}" for k in range(2_500)]


@pytest.mark.parametrize("limit", [0, -1, MAX_LIST_LIMIT + 1])
def test_users_by_city_refuses_a_limit_out_of_range(limit: int) -> None:
    with pytest.raises(ValueError, match=rf"limit must be between 1 and 1000, got {limit}"):
        get_users_by_city(city_model(1), GetUsersByCity(city="Lyon", limit=limit))


def test_the_answer_for_a_large_city_stays_small() -> None:
    model = city_model(66_667)
    answer = get_users_by_city(model, GetUsersByCity(city="Lyon"))
    assert len(answer) == DEFAULT_LIST_LIMIT
    assert len(msgspec.json.encode(answer)) < 20_000


# -- a closed engine answers nothing ---------------------------------------------------


@pytest.mark.parametrize("where", ["memory", "lmdb"])
async def test_a_closed_engine_refuses_reads_queries_and_subscriptions(
    where: str, tmp_path: Path
) -> None:
    path = None if where == "memory" else tmp_path / "store"
    async with open_engine(path, app) as engine:
        ack = await engine.send(create("u1"))
        assert (await engine.ask(GetUserById(user_id="u1"), after=ack.position)).name == "Ann"

    with pytest.raises(EngineClosed):
        await engine.send(create("u2"))
    with pytest.raises(EngineClosed):
        await engine.ask(GetUserById(user_id="u1"))
    with pytest.raises(EngineClosed):
        await engine.read_stream("User-u1")
    with pytest.raises(EngineClosed):
        async for _ in engine.subscribe(0):
            pass


async def test_waiting_queries_and_subscriptions_end_when_the_engine_closes() -> None:
    ended: list[type[BaseException]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, open_engine(None, app) as engine:
            ack = await engine.send(create("u1"))

            async def ask_later() -> None:
                try:
                    await engine.ask(GetUserById(user_id="u1"), after=ack.position + 5)
                except EngineClosed:
                    ended.append(EngineClosed)

            async def follow() -> None:
                try:
                    async for _ in engine.subscribe(0):
                        pass
                except EngineClosed:
                    ended.append(EngineClosed)

            nursery.start_soon(ask_later)
            nursery.start_soon(follow)
            await trio.sleep(0.1)
    assert ended == [EngineClosed, EngineClosed]
