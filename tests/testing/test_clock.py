"""The test clock and now()."""

from __future__ import annotations

import time

import pytest

from motet.engine.testing import DEFAULT_START, Clock, now, use_clock


def test_now_is_the_system_time_without_a_clock() -> None:
    before = time.time()
    assert before <= now() <= time.time()


def test_use_clock_installs_a_clock_until_the_block_ends() -> None:
    clock = Clock(100.0)
    with use_clock(clock):
        assert now() == 100.0
        assert clock.advance(2.5) == 102.5
        assert now() == clock() == clock.now() == 102.5
        clock.set(50)
        assert now() == 50.0
    assert abs(now() - time.time()) < 60
    assert repr(clock) == "<Clock at 50.0>"


def test_the_clock_fixture_starts_at_the_default_start(clock: Clock) -> None:
    assert now() == DEFAULT_START


@pytest.mark.parametrize("step", [-1.0, float("nan")])
def test_the_clock_only_advances(step: float) -> None:
    with pytest.raises(ValueError, match=r"seconds must be >= 0, got"):
        Clock().advance(step)
