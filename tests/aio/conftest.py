"""Fixtures of the asyncio tests: running a coroutine on each event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run_on_loop(request: pytest.FixtureRequest) -> Runner:
    """``run_on_loop(main)`` runs ``main()`` to completion on a fresh event
    loop: asyncio's own, then uvloop's (skipped where uvloop is missing)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")

        def run(main: Callable[[], Awaitable[Any]]) -> Any:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main())

        return run
    return lambda main: asyncio.run(main())
