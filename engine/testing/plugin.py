"""The pytest plugin (entry point ``pytest11``: ``motet``): fixtures for
testing an application's domain.

- ``clock``: a :class:`~.clock.Clock` that :func:`~.clock.now` answers for
  the test's duration; set or advance it from the test.
- ``motet_app``: the :class:`~motet.engine.App` under test. Override it in
  your ``conftest.py`` (or parametrize it) to return yours.
- ``motet_engine``: an engine running ``motet_app`` on an LMDB store in a
  temporary directory, opened after ``clock`` is installed and closed after
  the test. It is an async fixture: the test needs pytest-trio (``trio_mode =
  true``, or ``@pytest.mark.trio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .clock import Clock, use_clock

if TYPE_CHECKING:
    from motet.engine import App, Engine

__all__ = ["clock", "motet_app", "motet_engine"]


@pytest.fixture
def clock() -> Iterator[Clock]:
    """A clock standing at ``DEFAULT_START`` that ``now()`` answers until the
    test ends."""
    with use_clock(Clock()) as installed:
        yield installed


@pytest.fixture
def motet_app() -> App:
    """The application ``motet_engine`` runs: override this fixture."""
    raise pytest.UsageError(
        "the motet_engine fixture runs the App returned by the motet_app fixture: "
        "define `@pytest.fixture def motet_app(): return your_app` in your conftest.py"
    )


@pytest.fixture
async def motet_engine(motet_app: App, clock: Clock, tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine running ``motet_app`` on a fresh LMDB store under ``tmp_path``."""
    from motet.engine import open_engine

    async with open_engine(tmp_path / "motet-data", motet_app, metrics=False) as engine:
        yield engine
