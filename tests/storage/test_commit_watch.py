"""CommitWatch: a watched call still running past the timeout is cancelled
once; one that returned in time never is."""

from __future__ import annotations

import threading
import time

import pytest

from motet.storage.commit_watch import CommitWatch


def test_a_call_past_its_deadline_is_cancelled_once() -> None:
    watch = CommitWatch(0.05)
    cancelled = threading.Event()
    calls: list[float] = []

    def cancel() -> None:
        calls.append(time.monotonic())
        cancelled.set()

    started = time.monotonic()
    with watch.watching(cancel):
        # The body stands for a COMMIT that only a cancel ends.
        assert cancelled.wait(10)
    watch.close()

    assert len(calls) == 1 and calls[0] - started >= 0.05
    assert watch.cancelled == 1
    assert "cancelled=1" in repr(watch) and "closed" in repr(watch)


def test_a_call_that_returns_in_time_is_never_cancelled() -> None:
    watch = CommitWatch(0.2)
    calls: list[str] = []
    for n in range(20):
        with watch.watching(lambda n=n: calls.append(f"call {n}")):  # type: ignore[misc]
            pass
    # Another call, past the deadlines of the first ones, is cancelled alone.
    done = threading.Event()
    with watch.watching(lambda: (calls.append("slow"), done.set())):
        assert done.wait(10)
    watch.close()

    assert calls == ["slow"]


def test_calls_watched_at_once_each_have_their_deadline() -> None:
    watch = CommitWatch(0.05)
    ended = [threading.Event(), threading.Event()]
    with watch.watching(ended[0].set), watch.watching(ended[1].set):
        assert ended[0].wait(10) and ended[1].wait(10)
    watch.close()
    assert watch.cancelled == 2


def test_the_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"commit_timeout must be > 0 seconds, got -1"):
        CommitWatch(-1)
