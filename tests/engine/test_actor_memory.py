"""What a live aggregate actor keeps between commands: no mailbox unless
commands queue, and its subjects in a tuple while they are few, so that ten
thousand idle actors give the garbage collector as little as possible to
walk; behaviour is the same either way."""

from __future__ import annotations

import gc
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import msgspec
import trio

from motet.actors.aggregate import AggregateActor
from motet.engine import Aggregate, App, Personal, open_engine
from motet.engine.example import app
from tests.support.commands import create_user, place_order


def tracked_containers(actor: AggregateActor[Any]) -> list[Any]:
    """The deques and sets an actor holds (what the collector would walk)."""
    return [o for o in gc.get_referents(actor) if type(o) in (deque, set, frozenset, list)]


def live(engine: Any, stream: str) -> AggregateActor[Any]:
    actor = engine.registry.live(stream)
    assert actor is not None
    return actor  # type: ignore[no-any-return]


async def test_an_idle_actor_keeps_no_mailbox_and_its_subject_in_a_tuple(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        await engine.send(create_user("u1"))
        await engine.send(place_order("u1", "o1", 10))
        actor = live(engine, "User-u1")
        assert actor.idle and actor.mailbox_used == 0
        assert actor.subjects == ("u1",)
        assert tracked_containers(actor) == []
        gc.collect()
        assert not gc.is_tracked(actor.subjects)

        # A loaded actor with nothing queued decides at once, in the
        # sender's task, without making a mailbox.
        answers: list[Any] = []
        answered = trio.Event()

        def on_done(ack: Any, error: BaseException | None) -> None:
            answers.append((ack.version, error))
            answered.set()

        engine.submit(place_order("u1", "o2", 5), on_done)
        assert actor.pending == 1 and actor.mailbox_used == 0
        assert tracked_containers(actor) == []
        await answered.wait()
        assert answers == [(3, None)]


async def test_commands_queue_in_a_mailbox_made_for_them_and_dropped_once_drained(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    async with open_engine(path, app) as engine:
        await engine.send(create_user("u1"))

    # Reopened, u1's actor must load first: commands sent meanwhile queue.
    async with open_engine(path, app) as engine:
        versions: list[int] = []
        all_answered = trio.Event()

        def on_done(ack: Any, error: BaseException | None) -> None:
            assert error is None
            versions.append(ack.version)
            if len(versions) % 3 == 0:
                all_answered.set()

        def submit_three(first: int) -> AggregateActor[Any]:
            # No checkpoint in between: the actor task cannot run yet.
            for n in range(first, first + 3):
                engine.submit(place_order("u1", f"o{n}", 1), on_done)
            actor = live(engine, "User-u1")
            assert actor.mailbox_used == 3
            assert [type(o) for o in tracked_containers(actor)] == [deque]
            return actor

        actor = submit_three(0)
        await all_answered.wait()
        assert sorted(versions) == [2, 3, 4]
        assert actor.idle and not actor.running
        assert tracked_containers(actor) == []
        # The next command finds the actor loaded: decided at once, in order.
        assert (await engine.send(place_order("u1", "later", 1))).version == 5
        assert tracked_containers(actor) == []

        # Queueing again (the actor reloads after a forget) makes a new
        # mailbox and drops it again.
        await engine.forget("u1")
        assert actor.subjects == ()
        all_answered = trio.Event()
        assert submit_three(3) is actor
        await all_answered.wait()
        assert sorted(versions[3:]) == [6, 7, 8]
        assert actor.subjects == ("u1",)
        assert tracked_containers(actor) == []


# -- an aggregate holding many subjects ---------------------------------------------------------


class Join(msgspec.Struct, frozen=True, kw_only=True, tag="Join"):
    club_id: str
    member: str


class Joined(msgspec.Struct, frozen=True, kw_only=True, tag="Joined"):
    member: str
    name: Annotated[str, Personal("member")]


class Meet(msgspec.Struct, frozen=True, kw_only=True, tag="Meet"):
    club_id: str
    members: tuple[str, ...]


club = Aggregate(
    name="Club",
    state_type=int,
    initial=0,
    decide=lambda members, command: (
        [Joined(member=command.member, name=f"name of {command.member}")]
        if type(command) is Join
        else [Joined(member=m, name=f"name of {m}") for m in command.members]
    ),
    evolve=lambda members, event: members + 1,
    commands={Join: "club_id", Meet: "club_id"},
    events=(Joined,),
    snapshot_every=7,
)
club_app = App(aggregates=(club,))


async def test_subjects_stay_a_tuple_while_few_then_become_a_set(tmp_path: Path) -> None:
    path = tmp_path / "store"
    members = [f"m{n:02}" for n in range(40)]
    async with open_engine(path, club_app) as engine:
        await engine.send(Meet(club_id="c", members=("m00", "m01", "m00")))
        actor = live(engine, "Club-c")
        assert actor.subjects == ("m00", "m01")
        for member in members[:16]:
            await engine.send(Join(club_id="c", member=member))
        assert type(actor.subjects) is tuple
        assert sorted(actor.subjects) == members[:16]
        await engine.send(Join(club_id="c", member=members[16]))
        assert type(actor.subjects) is set
        assert actor.subjects == set(members[:17])
        await engine.send(Meet(club_id="c", members=tuple(members)))
        assert actor.subjects == set(members)

        # Forgetting one of them drops the state; reloading finds them all
        # again, from the events and snapshots.
        await engine.forget("m05")
        assert actor.subjects == ()
        await engine.send(Join(club_id="c", member="m00"))
        assert actor.subjects == set(members)

    # A fresh load (from the snapshots sealed under every subject's key).
    async with open_engine(path, club_app) as engine:
        await engine.send(Join(club_id="c", member="m01"))
        assert live(engine, "Club-c").subjects == set(members)
    async with open_engine(path, club_app) as engine:
        await engine.send(Meet(club_id="c", members=("m01",)))
        actor = live(engine, "Club-c")
        assert actor.subjects == set(members)
        assert actor.version == 3 + 17 + 40 + 3  # every event was replayed or snapshotted
