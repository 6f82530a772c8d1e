"""No command leaves anything behind: requests answered, rejected, retried
by command id, handed over with submit, or whose sender was cancelled while
it waited for the commit are all freed (nothing accumulates round after
round), and the engine keeps only the last commit's requests."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import trio
import trio.testing

from motet.actors.request import CommandRequest
from motet.engine import CommandRejected, open_engine
from motet.engine.example import app
from tests.support.commands import create_user, place_order

USERS = 20
PER_ROUND = 100


def live_requests() -> int:
    gc.collect()
    return sum(type(o) is CommandRequest for o in gc.get_objects())


async def test_no_request_outlives_its_command_whatever_became_of_it(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "store", app) as engine:
        for n in range(USERS):
            await engine.send(create_user(f"u{n}"))
        outcomes: dict[str, int] = {}

        def count(outcome: str) -> None:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        async def send(n: int, round_: int, scope: trio.CancelScope) -> None:
            user = f"u{n % USERS}"
            with scope:
                try:
                    if n % 5 == 0:
                        await engine.send(create_user(user))  # exists: rejected
                    elif n % 5 == 1:
                        # Sent twice: the second waits for, or finds, the first.
                        command_id = f"r{round_}-{n}"
                        first = await engine.send(
                            place_order(user, command_id), command_id=command_id
                        )
                        again = await engine.send(
                            place_order(user, command_id), command_id=command_id
                        )
                        assert again == first
                    else:
                        await engine.send(place_order(user, f"r{round_}-{n}"))
                except CommandRejected:
                    count("rejected")
                    return
            count("cancelled" if scope.cancelled_caught else "ok")

        def on_done(ack: Any, error: BaseException | None) -> None:
            count("submitted" if error is None else "submit failed")

        counts = []
        for round_ in range(8):
            scopes = [trio.CancelScope() for _ in range(PER_ROUND)]
            async with trio.open_nursery() as nursery:
                for n in range(PER_ROUND):
                    nursery.start_soon(send, n, round_, scopes[n])
                for n in range(10):
                    engine.submit(place_order(f"u{n}", f"s{round_}-{n}"), on_done)
                await trio.testing.wait_all_tasks_blocked()
                # Every fourth sender gives up while its command waits.
                for scope in scopes[3::4]:
                    scope.cancel()
            await engine.writer.wait_idle()
            # A lone command last: its commit is the one the engine keeps.
            await engine.send(place_order("u1", f"lone{round_}"))
            counts.append(live_requests())

        assert outcomes["rejected"] == 8 * (PER_ROUND // 5)  # refused at once, never cancelled
        assert outcomes["cancelled"] > 0 and outcomes["ok"] > 0
        assert outcomes["submitted"] == 8 * 10
        # The engine keeps the last commit's requests only (here the lone
        # command's): nothing is left of the rounds' 880 commands.
        assert counts == [1] * 8


async def test_a_waiting_command_holds_no_trap_objects_of_its_own(tmp_path: Path) -> None:
    # Every object the garbage collector tracks for a command in flight is
    # walked, and promoted, by the young collections during its commit: a
    # waiting sender holds its send() coroutine and its request, not also a
    # wait_task_rescheduled coroutine, its generator and trio's message.
    from trio._core._traps import WaitTaskRescheduled

    async with open_engine(tmp_path / "store", app) as engine:
        await engine.send(create_user("u0"))
        # The limiter held: no commit can start.
        async with trio.open_nursery() as nursery, engine.writer.limiter:
            for n in range(200):
                nursery.start_soon(engine.send, place_order("u0", f"o{n}"))
            await trio.testing.wait_all_tasks_blocked()
            waiting = [o for o in gc.get_objects() if type(o) is CommandRequest]
            assert len(waiting) >= 200
            coroutines = [
                o.cr_code.co_name for o in gc.get_objects() if type(o).__name__ == "coroutine"
            ]
            assert coroutines.count("send") >= 200
            # The engine's own tasks (writer, projections...) sleep too.
            assert coroutines.count("wait_task_rescheduled") < 50
            traps = [o for o in gc.get_objects() if type(o) is WaitTaskRescheduled]
            assert len(traps) < 50
        assert (await engine.read_stream("User-u0"))[-1].version == 201
