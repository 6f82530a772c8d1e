"""A sender parked in its CommandRequest (``park`` then ``await
request.parked()``) wakes when the request is answered, raises Cancelled
when cancelled first, and passes on whatever is thrown into it."""

from __future__ import annotations

import warnings

import pytest
import trio
import trio.testing

from motet.actors.request import CommandRequest
from motet.storage.records import Ack


async def park_sender(nursery: trio.Nursery, request: CommandRequest) -> list[str]:
    """Start a sender parked in ``request``; the list gets "woke" when it wakes."""
    woke: list[str] = []

    async def sender() -> None:
        assert request.park(trio.lowlevel.current_task())
        await request.parked()
        woke.append("woke")

    nursery.start_soon(sender)
    await trio.testing.wait_all_tasks_blocked()
    assert woke == []
    return woke


async def test_the_answer_wakes_the_parked_sender() -> None:
    request = CommandRequest("command")
    async with trio.open_nursery() as nursery:
        woke = await park_sender(nursery, request)
        request.succeed(Ack("A-1", 1, 1))
    assert woke == ["woke"]
    assert request.done and request.ack == Ack("A-1", 1, 1)


async def test_a_cancelled_sender_stops_waiting_and_the_answer_leaves_it_alone() -> None:
    request = CommandRequest("command")
    async with trio.open_nursery() as nursery:
        woke = await park_sender(nursery, request)
        nursery.cancel_scope.cancel()
    assert woke == []
    # The command goes on: answering it later reschedules nobody.
    request.succeed(Ack("A-1", 1, 1))
    assert request.done
    # And the request can be waited on again.
    await request.wait_done()


def test_what_is_thrown_into_the_parked_sender_comes_out_as_it_is() -> None:
    request = CommandRequest("command")

    async def parked() -> None:
        await request.parked()

    for throw in (
        lambda coro, error: coro.throw(error),
        lambda coro, error: coro.throw(type(error), error, None),
    ):
        coro = parked()
        coro.send(None)  # suspended on trio's wait message
        error = KeyError("thrown")
        # The (type, value, traceback) form is deprecated from Python 3.12 on.
        with warnings.catch_warnings(), pytest.raises(KeyError) as raised:
            warnings.simplefilter("ignore", DeprecationWarning)
            throw(coro, error)
        assert raised.value is error
