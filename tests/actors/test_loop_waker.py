"""LoopWaker: calls queued from other threads run on the event loop's thread."""

from __future__ import annotations

import threading

import trio

from motet.actors.loop_waker import LoopWaker


async def test_calls_from_a_worker_thread_run_in_order_on_the_loop_thread() -> None:
    waker = LoopWaker(trio.lowlevel.current_trio_token())
    ran: list[tuple[int, int]] = []
    done = trio.Event()

    def queue_calls() -> None:
        for n in range(100):
            waker.call_soon(lambda n=n: ran.append((n, threading.get_ident())))
        waker.call_soon(done.set)

    await trio.to_thread.run_sync(queue_calls)
    with trio.fail_after(10):
        await done.wait()
    assert [n for n, _ in ran] == list(range(100))
    assert {thread for _, thread in ran} == {threading.get_ident()}
    waker.close()
    assert await trio.to_thread.run_sync(waker.stopped.wait, 10)


def test_a_call_queued_after_the_run_ended_is_dropped_quietly() -> None:
    async def main() -> LoopWaker:
        return LoopWaker(trio.lowlevel.current_trio_token())

    waker = trio.run(main)
    waker.call_soon(lambda: None)  # the run is over: RunFinishedError, suppressed
    waker.close()
    assert waker.stopped.wait(10)
