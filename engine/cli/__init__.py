"""The ``motet`` command line: serve, client, status, inspect, demo.

The console script is ``motet = "motet.engine.cli:main"``. Each command is a
module of this package (:mod:`.serve`, :mod:`.remote`, :mod:`.inspect`, the
request language and prompt in :mod:`.shell`), imported only when it runs.
"""

from typing import Any

from .main import main

__all__ = ["SERVER_GC_THRESHOLDS", "main"]


def __getattr__(name: str) -> Any:
    # The serving side is not needed to parse a command line.
    if name == "SERVER_GC_THRESHOLDS":
        from .serve import SERVER_GC_THRESHOLDS

        return SERVER_GC_THRESHOLDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
