"""Motet's actor runtime on trio: aggregate actors with bounded mailboxes, the
registry that supervises and passivates them, and the group-commit writer.

The names below are imported when first used (PEP 562), so importing
``motet.actors.errors`` does not start up the whole runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aggregate import AggregateActor
    from .definition import Aggregate
    from .errors import (
        CommandRejected,
        EngineClosed,
        InternalError,
        NotFound,
        Overloaded,
        QueryTimeout,
        Unavailable,
        UnknownMessageType,
    )
    from .process_manager import (
        ProcessManager,
        ProcessManagerActor,
        ProcessManagerStatus,
        Reaction,
        Rejection,
        Timer,
    )
    from .projection import Projection, ProjectionActor, ProjectionFailed, ProjectionStatus, Query
    from .read_model import Order, Table
    from .registry import Registry, RegistryStatistics
    from .request import CommandRequest
    from .writer import GroupCommitWriter, WriterStatistics

# Each public name and the module that defines it.
_MODULES: dict[str, str] = {
    "AggregateActor": "aggregate",
    "Aggregate": "definition",
    **dict.fromkeys(
        [
            "CommandRejected",
            "EngineClosed",
            "InternalError",
            "NotFound",
            "Overloaded",
            "QueryTimeout",
            "Unavailable",
            "UnknownMessageType",
        ],
        "errors",
    ),
    **dict.fromkeys(
        ["Projection", "ProjectionActor", "ProjectionFailed", "ProjectionStatus", "Query"],
        "projection",
    ),
    **dict.fromkeys(
        [
            "ProcessManager",
            "ProcessManagerActor",
            "ProcessManagerStatus",
            "Reaction",
            "Rejection",
            "Timer",
        ],
        "process_manager",
    ),
    **dict.fromkeys(["Order", "Table"], "read_model"),
    **dict.fromkeys(["Registry", "RegistryStatistics"], "registry"),
    "CommandRequest": "request",
    **dict.fromkeys(["GroupCommitWriter", "WriterStatistics"], "writer"),
}

__all__ = [
    "Aggregate",
    "AggregateActor",
    "CommandRejected",
    "CommandRequest",
    "EngineClosed",
    "GroupCommitWriter",
    "InternalError",
    "NotFound",
    "Order",
    "Overloaded",
    "ProcessManager",
    "ProcessManagerActor",
    "ProcessManagerStatus",
    "Projection",
    "ProjectionActor",
    "ProjectionFailed",
    "ProjectionStatus",
    "Query",
    "QueryTimeout",
    "Reaction",
    "Registry",
    "RegistryStatistics",
    "Rejection",
    "Table",
    "Timer",
    "Unavailable",
    "UnknownMessageType",
    "WriterStatistics",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
