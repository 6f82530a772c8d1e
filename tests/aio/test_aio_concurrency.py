"""Many asyncio tasks on the asyncio engine at once, and cancellation under load.

1,000 tasks under ``asyncio.run`` send commands to 100 users: the log must
come out as if the commands had been applied one at a time (positions unique
and gap-free, versions contiguous per stream, read models equal to a fold of
the acknowledged commands). Then tasks are cancelled at random moments while
their commands are queued, deciding or committing: every Ack a task got is in
the log, and every cancelled command is in the log whole or not at all.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from motet.engine import Ack, Overloaded
from motet.engine.aio import Engine, open_engine
from motet.engine.example import (
    CreateUser,
    GetUserById,
    GetUsersByCity,
    PlaceOrder,
    UpdateUser,
    app,
    user,
)

USERS = 100
TASKS = 1_000
COMMANDS_PER_TASK = 3
SEED = 20_261_201


def user_id(n: int) -> str:
    return f"u{n:03d}"


def plan(task: int) -> list[PlaceOrder | UpdateUser]:
    """One task's commands, from its own seeded RNG (independent of scheduling)."""
    rng = random.Random(SEED * 10_000 + task)
    commands: list[PlaceOrder | UpdateUser] = []
    for k in range(COMMANDS_PER_TASK):
        target = user_id(rng.randrange(USERS))
        if rng.random() < 0.8:
            commands.append(
                PlaceOrder(user_id=target, order_id=f"o{task}-{k}", amount=rng.randint(1, 500))
            )
        else:
            commands.append(UpdateUser(user_id=target, city=f"city-{task}-{k}"))
    return commands


async def create_users(engine: Engine) -> list[tuple[Any, Ack]]:
    commands = [
        CreateUser(
            user_id=user_id(n),
            name=f"User {n}",
            email=f"u{n}@example.org",
            password="pw",
            city="start",
        )
        for n in range(USERS)
    ]
    acks = await asyncio.gather(*(engine.send(command) for command in commands))
    return list(zip(commands, acks, strict=True))


def test_a_thousand_asyncio_tasks_match_a_sequential_model(
    tmp_path: Path, run_on_loop: Any
) -> None:
    path = tmp_path / "store"

    async def main() -> tuple[int, dict[str, Any]]:
        async with open_engine(path, app, mailbox_size=1_024) as engine:
            acked = await create_users(engine)

            async def sender(task: int) -> None:
                for command in plan(task):
                    acked.append((command, await engine.send(command)))

            async with asyncio.TaskGroup() as group:
                for task in range(TASKS):
                    group.create_task(sender(task))

            total = USERS + TASKS * COMMANDS_PER_TASK
            assert len(acked) == total
            positions = [ack.position for _, ack in acked]
            assert sorted(positions) == list(range(1, total + 1))
            assert engine.head_position == total

            by_stream: dict[str, list[tuple[Any, Ack]]] = defaultdict(list)
            for command, ack in acked:
                assert ack.stream == user.stream_of(command.user_id)
                by_stream[ack.stream].append((command, ack))
            expected: dict[str, dict[str, Any]] = {}
            for stream, entries in by_stream.items():
                entries.sort(key=lambda entry: entry[1].version)
                assert [a.version for _, a in entries] == list(range(1, len(entries) + 1))
                assert [a.position for _, a in entries] == sorted(a.position for _, a in entries)
                created = entries[0][0]
                model = {"city": created.city, "order_count": 0, "total_spent": 0.0}
                for command, _ in entries[1:]:
                    if isinstance(command, PlaceOrder):
                        model["order_count"] += 1
                        model["total_spent"] += command.amount
                    else:
                        model["city"] = command.city
                expected[created.user_id] = model
                recorded = await engine.read_stream(stream)
                assert [(r.version, r.position) for r in recorded] == [
                    (a.version, a.position) for _, a in entries
                ]

            # The read model, read after the last position, equals the fold.
            for uid, model in expected.items():
                summary = await engine.ask(GetUserById(user_id=uid), after=total)
                got = {
                    "city": summary.city,
                    "order_count": summary.order_count,
                    "total_spent": summary.total_spent,
                }
                assert got == model, uid
            by_city = Counter(m["city"] for m in expected.values())
            for city, count in by_city.items():
                assert len(await engine.ask(GetUsersByCity(city=city))) == count
            return total, expected

    total, expected = run_on_loop(main)

    async def reopened() -> None:
        async with open_engine(path, app) as engine:
            assert engine.head_position == total
            for uid in random.Random(SEED).sample(sorted(expected), 10):
                summary = await engine.ask(GetUserById(user_id=uid), after=total)
                assert summary.order_count == expected[uid]["order_count"]

    asyncio.run(reopened())


@pytest.mark.parametrize("durability", ["sync", "none"])
def test_cancelled_senders_lose_no_acknowledged_command_and_leave_no_half_command(
    tmp_path: Path, durability: str, run_on_loop: Any
) -> None:
    path = tmp_path / "store"
    rng = random.Random(SEED)
    acked: dict[str, Ack] = {}
    cancelled: dict[str, PlaceOrder | UpdateUser] = {}
    sent: dict[str, PlaceOrder | UpdateUser] = {}

    async def main() -> None:
        async with open_engine(path, app, durability=durability, mailbox_size=1_024) as engine:
            await create_users(engine)

            async def sender(task: int) -> None:
                for k, command in enumerate(plan(task)):
                    command_id = f"t{task}-{k}"
                    sent[command_id] = command
                    try:
                        acked[command_id] = await engine.send(command, command_id=command_id)
                    except asyncio.CancelledError:
                        cancelled[command_id] = command
                        raise
                    except Overloaded:  # pragma: no cover - a full mailbox refuses whole
                        continue

            tasks = [asyncio.create_task(sender(task)) for task in range(TASKS)]
            # Cancel half of the tasks at random moments of the load: a few
            # before their first command, most while one waits for its commit.
            loop = asyncio.get_running_loop()
            started = loop.time()
            for victim in rng.sample(tasks, TASKS // 2):
                if rng.random() < 0.1:
                    victim.cancel()
                else:
                    loop.call_at(started + rng.random() * 0.1, victim.cancel)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert sum(isinstance(r, asyncio.CancelledError) for r in results) > 100
            assert len(cancelled) > 100, "too few cancellations hit a waiting send"

    run_on_loop(main)

    async def check() -> None:
        async with open_engine(path, app, durability=durability) as engine:
            head = engine.head_position
            log = []
            async for event in engine.subscribe():
                log.append(event)
                if event.position == head:
                    break
            assert [e.position for e in log] == list(range(1, head + 1))
            by_command: dict[str, list[Any]] = defaultdict(list)
            for event in log:
                if event.metadata.command_id is not None:
                    by_command[event.metadata.command_id].append(event)
            # Every acknowledged command is in the log, where its Ack says.
            for command_id, ack in acked.items():
                [event] = by_command[command_id]
                assert (event.stream, event.version, event.position) == (
                    ack.stream,
                    ack.version,
                    ack.position,
                )
            # Every cancelled one is there whole (its one event) or not at all,
            # and a retry with its command id tells which without running it twice.
            committed = 0
            for command_id, command in cancelled.items():
                events = by_command.get(command_id, [])
                assert len(events) in (0, 1), command_id
                if events:
                    committed += 1
                    assert events[0].stream == user.stream_of(command.user_id)
                ack = await engine.send(command, command_id=command_id)
                if events:
                    assert ack.position == events[0].position
            assert set(by_command) <= set(sent)
            assert committed > 0
            retried = engine.head_position - head
            assert retried == len(cancelled) - committed

    asyncio.run(check())
