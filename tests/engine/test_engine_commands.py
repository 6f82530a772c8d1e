"""Sending commands through the engine: idempotent retries, optimistic
concurrency, rejections and bad input, full mailboxes, handler bugs,
passivation and the live-actor cap, subscriptions, and the public API."""

from __future__ import annotations

import ast
import inspect
import itertools
import pkgutil
from contextlib import aclosing
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import motet.actors as actors
import motet.engine as engine_package
import motet.storage as storage
from motet.actors.errors import InternalError
from motet.engine import (
    Aggregate,
    App,
    CommandRejected,
    Conflict,
    Overloaded,
    RecordedEvent,
    UnknownMessageType,
    open_engine,
)
from motet.engine.example import (
    CreateUser,
    OrderPlaced,
    PlaceOrder,
    UpdateUser,
    UserCreated,
    UserUpdated,
    app,
)
from tests.support.commands import create_user as create
from tests.support.commands import place_order


def order(order_id: str, user_id: str = "u1", amount: float = 10) -> PlaceOrder:
    return place_order(user_id, order_id, amount)


# -- idempotent retries ------------------------------------------------------------------


async def test_a_retried_command_id_returns_the_original_ack_and_runs_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    async with open_engine(path, app) as engine:
        await engine.send(create())
        first = await engine.send(order("o1"), command_id="cmd-1")
        again = await engine.send(order("o1"), command_id="cmd-1")
        assert again == first
        assert (first.stream, first.version, first.position) == ("User-u1", 2, 2)
        assert engine.head_position == 2
        events = await engine.read_stream("User-u1")
        assert [type(e.data) for e in events] == [UserCreated, OrderPlaced]
        assert events[1].metadata.command_id == "cmd-1"
        state = engine.registry.live("User-u1").state  # type: ignore[union-attr]
        assert state.order_count == 1

        # Two concurrent sends with one id: one runs, both get its Ack.
        acks: list[Any] = []

        async def send_twice() -> None:
            acks.append(await engine.send(order("o2"), command_id="cmd-2"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_twice)
            nursery.start_soon(send_twice)
        assert len(acks) == 2
        assert acks[0] == acks[1]
        assert (acks[0].version, acks[0].position) == (3, 3)
        assert engine.head_position == 3

    # After a restart the command-id index still knows both.
    async with open_engine(path, app) as engine:
        assert await engine.send(order("o1"), command_id="cmd-1") == first
        assert await engine.send(order("o2"), command_id="cmd-2") == acks[0]
        assert engine.head_position == 3
        assert len(await engine.read_stream("User-u1")) == 3
        # A new id runs as usual.
        assert (await engine.send(order("o3"), command_id="cmd-3")).version == 4


# -- optimistic concurrency --------------------------------------------------------------


async def test_a_wrong_expected_version_is_a_conflict_and_writes_nothing() -> None:
    async with open_engine(None, app) as engine:
        await engine.send(create())
        with pytest.raises(
            Conflict, match=r"stream 'User-u1' is at version 1, expected version 5"
        ) as caught:
            await engine.send(order("o1"), expected_version=5)
        assert (caught.value.stream, caught.value.expected, caught.value.actual) == (
            "User-u1",
            5,
            1,
        )
        with pytest.raises(Conflict, match=r"at version 1, expected version 0"):
            await engine.send(order("o1"), expected_version=0)
        assert engine.head_position == 1
        ack = await engine.send(order("o1"), expected_version=1)
        assert ack.version == 2
        with pytest.raises(ValueError, match=r"expected_version must be an int >= 0, got -1"):
            await engine.send(order("o2"), expected_version=-1)
        assert engine.head_position == 2


# -- rejections and bad input ------------------------------------------------------------


async def test_a_domain_rejection_raises_its_message_and_writes_nothing(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        await engine.send(create())
        with pytest.raises(CommandRejected, match=r"^amount must be > 0, got -5$"):
            await engine.send(order("o1", amount=-5))
        with pytest.raises(CommandRejected, match=r"user 'ghost' does not exist"):
            await engine.send(UpdateUser(user_id="ghost", city="Rome"))
        with pytest.raises(CommandRejected, match=r"user 'u1' already exists"):
            await engine.send(create())
        await engine.writer.wait_idle()
        assert engine.head_position == 1
        assert engine.store.stream_version("User-u1") == 1
        assert engine.store.stream_version("User-ghost") == 0
        assert engine.store.streams() == [("User-u1", 1)]
        # The rejections left the aggregate usable, at the right version.
        assert (await engine.send(order("o2"))).version == 2


async def test_unknown_command_types_and_empty_ids_are_refused_at_the_edge() -> None:
    class NotACommand(msgspec.Struct, frozen=True, tag="NotACommand"):
        user_id: str

    async with open_engine(None, app) as engine:
        with pytest.raises(UnknownMessageType, match="NotACommand"):
            await engine.send(NotACommand(user_id="u1"))
        with pytest.raises(ValueError, match=r"PlaceOrder.user_id must be a non-empty string"):
            await engine.send(order("o1", user_id=""))
        with pytest.raises(ValueError, match="command_id must be a non-empty string"):
            await engine.send(create(), command_id="")
        assert engine.head_position == 0
        assert engine.registry.statistics().started == 0


async def test_the_mediator_routes_and_sends_like_the_engine() -> None:
    class NotACommand(msgspec.Struct, frozen=True, tag="NotACommand"):
        user_id: str

    async with open_engine(None, app) as engine:
        aggregate, aggregate_id = engine.mediator.route(order("o1", user_id="u7"))
        assert (aggregate.name, aggregate_id) == ("User", "u7")
        ack = await engine.mediator.send(create(), command_id="c-1")
        assert (ack.stream, ack.version) == ("User-u1", 1)
        assert await engine.mediator.send(create(), command_id="c-1") == ack
        with pytest.raises(UnknownMessageType, match="NotACommand"):
            await engine.mediator.send(NotACommand(user_id="u1"))
        assert engine.head_position == 1


# -- full mailboxes ----------------------------------------------------------------------


async def test_a_full_mailbox_answers_overloaded_at_once(tmp_path: Path) -> None:
    path = tmp_path / "store"
    async with open_engine(path, app) as engine:
        await engine.send(create())

    # Reopened, u1 has no live actor. Tasks started in one batch all run
    # before the actor they start does, so nothing drains the mailbox while
    # they tell it: the first two fill it, the rest must be turned away.
    outcomes: list[tuple[str, Any]] = []
    async with open_engine(path, app, mailbox_size=2) as engine:

        async def send(n: int) -> None:
            try:
                ack = await engine.send(order(f"o{n}"))
            except Overloaded as exc:
                outcomes.append(("overloaded", exc))
            else:
                outcomes.append(("ok", ack))

        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(send, n)

        kinds = [kind for kind, _ in outcomes]
        assert sorted(kinds) == ["ok"] * 2 + ["overloaded"] * 4
        # Immediately: every refusal came before the first command committed.
        assert kinds == ["overloaded"] * 4 + ["ok"] * 2
        for kind, result in outcomes:
            if kind == "overloaded":
                assert str(result) == "mailbox of User-u1 is full (2 commands waiting)"
        assert sorted(ack.version for kind, ack in outcomes if kind == "ok") == [2, 3]
        assert engine.head_position == 3
        # Once drained, the aggregate takes commands again.
        assert (await engine.send(order("later"))).version == 4


# -- handler bugs -------------------------------------------------------------------------


class Add(msgspec.Struct, frozen=True, kw_only=True, tag="Add"):
    counter_id: str
    amount: int


class Divide(msgspec.Struct, frozen=True, kw_only=True, tag="Divide"):
    counter_id: str
    by: int


class ValueSet(msgspec.Struct, frozen=True, kw_only=True, tag="ValueSet"):
    value: int


class Counter(msgspec.Struct, frozen=True, kw_only=True, tag="Counter"):
    value: int = 0


def decide_counter(state: Counter, command: Add | Divide) -> list[ValueSet]:
    match command:
        case Add():
            return [ValueSet(value=state.value + command.amount)]
        case Divide():
            return [ValueSet(value=state.value // command.by)]  # a bug when by == 0
    raise TypeError(command)


def evolve_counter(state: Counter, event: ValueSet) -> Counter:
    return Counter(value=event.value)


counter = Aggregate(
    name="Counter",
    state_type=Counter,
    initial=Counter(),
    decide=decide_counter,
    evolve=evolve_counter,
    commands={Add: "counter_id", Divide: "counter_id"},
    events=(ValueSet,),
)
counter_app = App(aggregates=(counter,))


async def test_a_handler_bug_fails_one_command_and_the_actor_keeps_working(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "store", counter_app) as engine:
        assert (await engine.send(Add(counter_id="c", amount=10))).version == 1
        with pytest.raises(
            InternalError,
            match=r"Counter handler failed on Divide: ZeroDivisionError: integer division",
        ):
            await engine.send(Divide(counter_id="c", by=0))
        assert engine.head_position == 1
        ack = await engine.send(Add(counter_id="c", amount=5))
        assert (ack.version, ack.position) == (2, 2)
        assert engine.registry.live("Counter-c").state == Counter(value=15)  # type: ignore[union-attr]

        # The same while earlier appends of this actor are still being committed.
        results: dict[str, Any] = {}

        async def send(key: str, command: Any) -> None:
            try:
                results[key] = await engine.send(command)
            except InternalError as exc:
                results[key] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "add", Add(counter_id="c", amount=1))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, "bug", Divide(counter_id="c", by=0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, "halve", Divide(counter_id="c", by=2))
        assert isinstance(results["bug"], InternalError)
        assert results["add"].version == 3
        assert results["halve"].version == 4
        assert engine.registry.live("Counter-c").state == Counter(value=8)  # type: ignore[union-attr]
        values = [r.data.value for r in await engine.read_stream("Counter-c")]
        assert values == [10, 15, 16, 8]
        assert engine.head_position == 4


# -- passivation and the live-actor cap ----------------------------------------------------


async def test_idle_actors_are_passivated_and_reload_from_storage(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # One command each: the mock clock also jumps while a commit runs in a
    # worker thread, so an actor touched twice might be passivated in between.
    async with open_engine(tmp_path / "store", app, passivate_after=10) as engine:
        for user_id in ("a", "b", "c"):
            await engine.send(create(user_id))
        await trio.sleep(30)
        stats = engine.registry.statistics()
        assert stats.actors == 0
        assert stats.passivated == 3
        assert "actors=0" in repr(engine.registry)
        assert "passivated=3" in repr(engine.registry)

        ack = await engine.send(order("o2", user_id="b", amount=5))
        assert (ack.stream, ack.version, ack.position) == ("User-b", 2, 4)
        actor = engine.registry.live("User-b")
        assert actor is not None
        assert (actor.state.name, actor.state.order_count, actor.state.total_spent) == (
            "Name b",
            1,
            5.0,
        )
        assert engine.registry.statistics().started == 4
        assert engine.registry.statistics().actors == 1


async def test_the_live_actor_cap_stops_least_recently_used_actors() -> None:
    cap = 5
    users = [f"u{n}" for n in range(20)]
    async with open_engine(None, app, max_actors=cap, passivate_after=1e9) as engine:
        for user_id in users:
            await engine.send(create(user_id))
            assert engine.registry.statistics().actors <= cap
        for round_ in range(2):
            for user_id in users:
                await engine.send(order(f"o{round_}", user_id=user_id, amount=round_ + 1))
                assert engine.registry.statistics().actors <= cap
        stats = engine.registry.statistics()
        assert stats.evicted > 0
        assert stats.actors == cap
        assert stats.started == cap + stats.evicted
        assert f"actors={cap}" in repr(engine.registry)
        # The most recently used ones are the live ones.
        assert [engine.registry.live(f"User-{u}") is not None for u in users[-cap:]] == [True] * cap
        for user_id in users:
            ack = await engine.send(UpdateUser(user_id=user_id, city="Lyon"))
            assert ack.version == 4
            state = engine.registry.live(f"User-{user_id}").state  # type: ignore[union-attr]
            assert (state.order_count, state.total_spent, state.city) == (2, 3.0, "Lyon")


async def test_concurrent_commands_under_a_tiny_cap_never_conflict() -> None:
    # An evicted actor that was still handed a command would run beside its
    # replacement: two writers of one stream, and a spurious Conflict.
    async with open_engine(None, app, max_actors=1) as engine:
        for n in range(10):
            await engine.send(create(f"u{n}"))
        errors: list[BaseException] = []
        acks: list[Any] = []

        async def sender(task: int) -> None:
            for k in range(20):
                try:
                    command = order(f"{task}-{k}", user_id=f"u{(task + k) % 10}")
                    acks.append(await engine.send(command))
                except Exception as exc:
                    errors.append(exc)

        async with trio.open_nursery() as nursery:
            for task in range(30):
                nursery.start_soon(sender, task)
        assert errors == []
        assert len(acks) == 600
        for n in range(10):
            versions = [r.version for r in await engine.read_stream(f"User-u{n}")]
            assert versions == list(range(1, 62))

        # The smallest case: u0 handed a command, then evicted by a new actor.
        outcomes: list[Any] = []

        async def send(command: Any) -> None:
            try:
                outcomes.append(await engine.send(command))
            except Exception as exc:
                outcomes.append(exc)

        await engine.send(order("warm", user_id="u0"))
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, order("x", user_id="u0"))
            nursery.start_soon(send, create("fresh"))
            nursery.start_soon(send, order("y", user_id="u0"))
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        assert sorted(o.version for o in outcomes if o.stream == "User-u0") == [63, 64]


# -- subscriptions --------------------------------------------------------------------------


async def test_subscribe_catches_up_then_follows_new_commits(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        acks = [await engine.send(create("u1"))]
        acks += [await engine.send(order(f"o{n}", amount=n)) for n in range(1, 5)]
        sent: list[Any] = [create("u1")] + [order(f"o{n}", amount=n) for n in range(1, 5)]

        send_channel, receive_channel = trio.open_memory_channel[RecordedEvent](100)

        async def subscriber(from_position: int, batch_size: int) -> None:
            async with (
                send_channel,
                aclosing(engine.subscribe(from_position, batch_size=batch_size)) as events,
            ):
                async for event in events:
                    await send_channel.send(event)

        async def take(count: int) -> list[RecordedEvent]:
            with trio.fail_after(10):
                return [await receive_channel.receive() for _ in range(count)]

        async with trio.open_nursery() as nursery:
            # A small batch size makes the catch-up take several reads.
            nursery.start_soon(subscriber, 0, 2)
            caught_up = await take(5)
            await trio.testing.wait_all_tasks_blocked()
            assert receive_channel.statistics().current_buffer_used == 0

            more = [order(f"live{n}", amount=100 + n) for n in range(5)]
            more.append(UpdateUser(user_id="u1", city="Nice"))
            for command in more:
                acks.append(await engine.send(command))
            sent += more
            live = await take(len(more))
            nursery.cancel_scope.cancel()

        received = caught_up + live
        assert [e.position for e in received] == list(range(1, 12))
        assert [(e.stream, e.version, e.position) for e in received] == [
            (a.stream, a.version, a.position) for a in acks
        ]
        for event, command in zip(received, sent, strict=True):
            match command:
                case CreateUser():
                    assert isinstance(event.data, UserCreated)
                    assert event.type == "UserCreated"
                    assert event.data.email == command.email
                case PlaceOrder():
                    assert isinstance(event.data, OrderPlaced)
                    assert event.type == "OrderPlaced"
                    assert (event.data.order_id, event.data.amount) == (
                        command.order_id,
                        command.amount,
                    )
                case UpdateUser():
                    assert isinstance(event.data, UserUpdated)
                    assert event.data.city == "Nice"

        # from_position=N starts after position N.
        async with aclosing(engine.subscribe(7)) as events:
            tail = []
            with trio.fail_after(10):
                async for event in events:
                    tail.append(event.position)
                    if event.position == 11:
                        break
        assert tail == [8, 9, 10, 11]
        with pytest.raises(ValueError, match="from_position must be >= 0, got -1"):
            async with aclosing(engine.subscribe(-1)) as events:
                await events.__anext__()


# -- the public API ---------------------------------------------------------------------------


def test_engine_exports_the_embedded_api() -> None:
    expected = {
        "open_engine",
        "CommandRejected",
        "Conflict",
        "Overloaded",
        "NotFound",
        "Ack",
        "App",
        "Aggregate",
    }
    assert expected <= set(engine_package.__all__)


def _documented_assignments(packages: list[ModuleType]) -> set[str]:
    """Module-level names in the packages' modules followed by a docstring."""
    names: set[str] = set()
    modules = [
        str(Path(package.__path__[0]) / f"{info.name}.py")
        for package in packages
        for info in pkgutil.iter_modules(package.__path__)
        if not info.ispkg
    ]
    for filename in modules:
        assert filename is not None
        body = ast.parse(Path(filename).read_text()).body
        for statement, following in itertools.pairwise(body):
            if not (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
                and following.value.value.strip()
            ):
                continue
            if isinstance(statement, ast.Assign):
                targets = statement.targets
            elif isinstance(statement, ast.AnnAssign):
                targets = [statement.target]
            else:
                continue
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("package", [engine_package, actors, storage], ids=lambda p: p.__name__)
def test_every_exported_name_exists_and_has_a_docstring(package: ModuleType) -> None:
    assert package.__doc__ and package.__doc__.strip()
    exported = package.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    # Re-exported aliases (engine.Upcaster) are documented where they are defined.
    documented = _documented_assignments([engine_package, actors, storage])
    undocumented = []
    for name in exported:
        assert hasattr(package, name), f"{package.__name__}.{name} is in __all__ but missing"
        obj = getattr(package, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            # Its own docstring, not one inherited from a base class.
            doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        else:
            # Constants and type aliases: the string right after the assignment.
            doc = "yes" if name in documented else None
        if not (isinstance(doc, str) and doc.strip()):
            undocumented.append(name)
    assert undocumented == [], f"{package.__name__}: no docstring for {undocumented}"
