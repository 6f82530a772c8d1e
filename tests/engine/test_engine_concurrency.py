"""Many concurrent senders on a few aggregates, checked against a sequential model.

1,000 tasks send commands to 100 users of the example app at the same time.
Whatever order trio runs them in, the log must come out as if they had been
applied one at a time: every Ack a unique position, positions gap-free, each
stream's versions contiguous, and each user's state equal to a fold of the
commands in the order of their acknowledged versions.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from motet.engine import Ack, open_engine
from motet.engine.example import (
    CreateUser,
    OrderPlaced,
    PlaceOrder,
    UpdateUser,
    UserCreated,
    UserUpdated,
    app,
    user,
)
from tests.support.folds import fold_user as fold

USERS = 100
TASKS = 1_000
COMMANDS_PER_TASK = 3
SEED = 20_240_611


class Model(msgspec.Struct, kw_only=True):
    """What the test expects of one user, folded from the commands it sent."""

    name: str
    city: str | None
    order_count: int = 0
    total_spent: float = 0.0


def user_id(n: int) -> str:
    return f"u{n:03d}"


def plan(task: int) -> list[PlaceOrder | UpdateUser]:
    """The commands one task sends: its own seeded RNG, so the plan does not
    depend on the order trio runs the tasks in."""
    rng = random.Random(SEED * 10_000 + task)
    commands: list[PlaceOrder | UpdateUser] = []
    for k in range(COMMANDS_PER_TASK):
        target = user_id(rng.randrange(USERS))
        if rng.random() < 0.8:
            # Whole amounts keep every float sum exact, whatever the order.
            amount = rng.randint(1, 500)
            commands.append(PlaceOrder(user_id=target, order_id=f"o{task}-{k}", amount=amount))
        else:
            commands.append(UpdateUser(user_id=target, city=f"city-{task}-{k}"))
    return commands


async def test_a_thousand_concurrent_senders_match_a_sequential_model(tmp_path: Path) -> None:
    acked: list[tuple[Any, Ack]] = []
    path = tmp_path / "store"

    async with open_engine(path, app, mailbox_size=1_024) as engine:
        async with trio.open_nursery() as nursery:
            for n in range(USERS):

                async def create(n: int = n) -> None:
                    command = CreateUser(
                        user_id=user_id(n),
                        name=f"User {n}",
                        email=f"user{n}@example.org",
                        password="pw",
                        city="start",
                    )
                    acked.append((command, await engine.send(command)))

                nursery.start_soon(create)

        async def sender(task: int) -> None:
            for command in plan(task):
                acked.append((command, await engine.send(command)))

        async with trio.open_nursery() as nursery:
            for task in range(TASKS):
                nursery.start_soon(sender, task)

        total = USERS + TASKS * COMMANDS_PER_TASK
        assert len(acked) == total

        # Positions: unique and gap-free; every command here appends one event.
        positions = [ack.position for _, ack in acked]
        assert len(set(positions)) == total
        assert set(positions) == set(range(1, total + 1))
        assert engine.head_position == total == engine.store.head_position

        # Versions: per stream, the acks are exactly 1..n.
        by_stream: dict[str, list[tuple[Any, Ack]]] = defaultdict(list)
        for command, ack in acked:
            assert ack.stream == user.stream_of(command.user_id)
            by_stream[ack.stream].append((command, ack))
        assert len(by_stream) == USERS
        for stream, entries in by_stream.items():
            entries.sort(key=lambda entry: entry[1].version)
            versions = [ack.version for _, ack in entries]
            assert versions == list(range(1, len(entries) + 1)), stream
            # Positions grow with versions inside a stream (commit order).
            stream_positions = [ack.position for _, ack in entries]
            assert stream_positions == sorted(stream_positions), stream

        # The sequential model: each user's commands in the order of their versions.
        models: dict[str, Model] = {}
        for stream, entries in by_stream.items():
            create_command = entries[0][0]
            assert isinstance(create_command, CreateUser)
            model = Model(name=create_command.name, city=create_command.city)
            for command, _ in entries[1:]:
                if isinstance(command, PlaceOrder):
                    model.order_count += 1
                    model.total_spent += command.amount
                else:
                    model.city = command.city
            models[stream] = model
        assert sum(m.order_count for m in models.values()) > 2_000

        # The log: each stream reads back as 1..n, event by event as acknowledged.
        for stream, entries in by_stream.items():
            recorded = await engine.read_stream(stream)
            assert [r.version for r in recorded] == list(range(1, len(entries) + 1))
            for record, (command, ack) in zip(recorded, entries, strict=True):
                assert (record.stream, record.version, record.position) == (
                    ack.stream,
                    ack.version,
                    ack.position,
                )
                match command:
                    case CreateUser():
                        assert isinstance(record.data, UserCreated)
                        assert record.data.email == command.email
                    case PlaceOrder():
                        assert isinstance(record.data, OrderPlaced)
                        assert (record.data.order_id, record.data.amount) == (
                            command.order_id,
                            command.amount,
                        )
                    case UpdateUser():
                        assert isinstance(record.data, UserUpdated)
                        assert record.data.city == command.city

        # The live actors hold exactly the model's state.
        for stream, model in models.items():
            actor = engine.registry.live(stream)
            assert actor is not None
            assert actor.version == len(by_stream[stream])
            state = actor.state
            assert (state.name, state.city, state.order_count, state.total_spent) == (
                model.name,
                model.city,
                model.order_count,
                model.total_spent,
            ), stream
        live_states = {stream: engine.registry.live(stream).state for stream in models}  # type: ignore[union-attr]

    # A fresh engine folds the same states from the log.
    async with open_engine(path, app) as engine:
        assert engine.head_position == total
        everything = engine.store.read_all(0, limit=total + 10)
        assert [e.position for e in everything] == list(range(1, total + 1))
        for stream, model in models.items():
            state = fold([r.data for r in await engine.read_stream(stream)])
            assert state == live_states[stream]
            assert (state.name, state.city, state.order_count, state.total_spent) == (
                model.name,
                model.city,
                model.order_count,
                model.total_spent,
            ), stream


async def test_batches_split_at_max_batch_still_answer_every_sender(tmp_path: Path) -> None:
    # 60 senders, at most 7 commands per write transaction: the commands left
    # queued behind a full batch must be answered by a later commit.
    async with open_engine(tmp_path / "store", app, max_batch=7) as engine:
        for i in range(6):
            await engine.send(
                CreateUser(user_id=f"u{i}", name="N", email=f"u{i}@example.org", password="pw")
            )
        before = engine.statistics().commits
        acks: list[Ack] = []

        async def place(n: int) -> None:
            acks.append(
                await engine.send(PlaceOrder(user_id=f"u{n % 6}", order_id=f"o{n}", amount=1.0))
            )

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for n in range(60):
                    nursery.start_soon(place, n)
        assert len(acks) == 60
        assert sorted(ack.position for ack in acks) == list(range(7, 67))
        assert engine.statistics().commits - before >= 60 // 7
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        async with open_engine(None, app, max_batch=0):
            pass
