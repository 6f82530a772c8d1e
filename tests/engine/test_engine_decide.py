"""What the engine accepts from ``decide`` and as ``expected_version``:
anything else fails the command clearly and leaves the actor consistent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from motet.actors.definition import Aggregate
from motet.engine import App, InternalError, open_engine
from motet.engine.example import CreateUser, PlaceOrder, app


class Add(msgspec.Struct, frozen=True, kw_only=True, tag="Add"):
    counter_id: str
    mode: str = "list"


class Added(msgspec.Struct, frozen=True, kw_only=True, tag="Added"):
    n: int = 1


class Stray(msgspec.Struct, frozen=True, kw_only=True, tag="Stray"):
    pass


def _generate(state: int) -> Iterator[Added]:
    yield Added(n=state + 1)


def decide(state: int, command: Add) -> Any:
    if command.mode == "list":
        return [Added(n=state + 1)]
    if command.mode == "tuple":
        return (Added(n=state + 1), Added(n=state + 2))
    if command.mode == "generator":
        return _generate(state)
    if command.mode == "single":
        return Added(n=state + 1)
    if command.mode == "none":
        return None
    if command.mode == "stray":
        return [Added(n=state + 1), Stray()]
    raise AssertionError(command.mode)


def evolve(state: int, event: Any) -> int:
    return state + 1


counter = Aggregate(
    name="Counter",
    state_type=int,
    initial=0,
    decide=decide,
    evolve=evolve,
    commands={Add: "counter_id"},
    events=(Added,),
)
# Stray is an event of another aggregate of the app, so the codec knows it.
other = Aggregate(
    name="Other",
    state_type=int,
    initial=0,
    decide=lambda state, command: [],
    evolve=evolve,
    commands={},
    events=(Stray,),
)
counters = App(aggregates=(counter, other))


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("generator", r"Counter\.decide must return a list or tuple of events, got generator"),
        ("single", r"Counter\.decide must return a list or tuple of events, got Added"),
        ("none", r"Counter\.decide must return a list or tuple of events, got NoneType"),
        ("stray", r"Counter\.decide returned a Stray, which is not an event of Counter"),
    ],
)
async def test_decide_must_return_a_list_of_the_aggregates_events(mode: str, message: str) -> None:
    async with open_engine(None, counters) as engine:
        first = await engine.send(Add(counter_id="c"))

        with pytest.raises(InternalError, match=message):
            await engine.send(Add(counter_id="c", mode=mode))

        # Nothing was written, and the actor goes on from where it was.
        assert engine.head_position == 1
        ack = await engine.send(Add(counter_id="c", mode="tuple"))
        assert (ack.version, ack.position) == (first.version + 2, 3)
        events = await engine.read_stream("Counter-c")
        assert [event.data for event in events] == [Added(n=1), Added(n=2), Added(n=3)]


@pytest.mark.parametrize("value", [True, False, 1.0, "1"])
async def test_expected_version_must_be_an_int_not_a_bool(value: Any) -> None:
    async with open_engine(None, app) as engine:
        ack = await engine.send(
            CreateUser(user_id="u", name="U", email="u@example.org", password="pw")
        )
        assert ack.version == 1

        with pytest.raises(ValueError, match=r"^expected_version must be an int >= 0, got "):
            await engine.send(
                PlaceOrder(user_id="u", order_id="o", amount=1.0), expected_version=value
            )
        assert engine.head_position == 1
