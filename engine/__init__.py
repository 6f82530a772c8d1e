"""Motet's public API: open an engine, send commands, read streams, subscribe.

Example::

    from motet.engine import open_engine
    from motet.engine.example import app, CreateUser

    async with open_engine("./motet-data", app) as engine:
        ack = await engine.send(CreateUser(user_id="u1", name="Ann",
                                           email="ann@example.org", password="pw"))

Each name below is imported when first used (PEP 562, as msgspec defers
PyYAML), so ``import motet.engine.net.client`` loads neither the runtime, the
stores nor Prometheus' client, and ``from motet.engine import Client`` loads
only the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from motet.actors.definition import Aggregate
    from motet.actors.process_manager import ProcessManager, Reaction, Rejection, Timer
    from motet.actors.projection import Projection, ProjectionFailed, Query
    from motet.actors.read_model import Order, Table
    from motet.storage.codec import Upcaster
    from motet.storage.errors import (
        BadRequest,
        CodecError,
        CommandIdReused,
        CommandRejected,
        Conflict,
        ConnectionLost,
        EngineClosed,
        InternalError,
        InvalidKey,
        InvalidMessage,
        MotetError,
        NotFound,
        Overloaded,
        QueryTimeout,
        RemoteError,
        RequestTooLarge,
        StorageError,
        StorageFull,
        StoreFormatError,
        StreamDeleted,
        Unauthorized,
        Unavailable,
        UnknownMessageType,
    )
    from motet.storage.personal import Forgotten, Personal, SubjectForgotten
    from motet.storage.records import Ack, Metadata, RecordedEvent, StreamDeletion
    from motet.storage.retention import Retention, RetentionResult
    from motet.storage.status import ProcessManagerStatus, ProjectionStatus

    from .app import App
    from .core import Engine, open_engine
    from .mediator import Mediator
    from .net.blocking import BlockingClient, connect
    from .net.client import Client, open_client
    from .net.server import Server, ServerStatistics, open_server, serve_engine
    from .status import EngineStatistics, EngineStatus

# Each public name and the module that defines it.
_MODULES: dict[str, str] = {
    "Aggregate": "motet.actors.definition",
    **dict.fromkeys(["Projection", "ProjectionFailed", "Query"], "motet.actors.projection"),
    **dict.fromkeys(["ProcessManagerStatus", "ProjectionStatus"], "motet.storage.status"),
    **dict.fromkeys(
        ["ProcessManager", "Reaction", "Rejection", "Timer"], "motet.actors.process_manager"
    ),
    **dict.fromkeys(["Order", "Table"], "motet.actors.read_model"),
    "Upcaster": "motet.storage.codec",
    **dict.fromkeys(
        [
            "BadRequest",
            "CodecError",
            "CommandIdReused",
            "CommandRejected",
            "Conflict",
            "ConnectionLost",
            "EngineClosed",
            "InternalError",
            "InvalidKey",
            "InvalidMessage",
            "MotetError",
            "NotFound",
            "Overloaded",
            "QueryTimeout",
            "RemoteError",
            "RequestTooLarge",
            "StorageError",
            "StorageFull",
            "StoreFormatError",
            "StreamDeleted",
            "Unauthorized",
            "Unavailable",
            "UnknownMessageType",
        ],
        "motet.storage.errors",
    ),
    **dict.fromkeys(
        ["Ack", "Metadata", "RecordedEvent", "StreamDeletion"], "motet.storage.records"
    ),
    **dict.fromkeys(["Retention", "RetentionResult"], "motet.storage.retention"),
    **dict.fromkeys(["Forgotten", "Personal", "SubjectForgotten"], "motet.storage.personal"),
    "App": "motet.engine.app",
    **dict.fromkeys(["Engine", "open_engine"], "motet.engine.core"),
    "Mediator": "motet.engine.mediator",
    **dict.fromkeys(["BlockingClient", "connect"], "motet.engine.net.blocking"),
    **dict.fromkeys(["Client", "open_client"], "motet.engine.net.client"),
    **dict.fromkeys(
        ["Server", "ServerStatistics", "open_server", "serve_engine"], "motet.engine.net.server"
    ),
    **dict.fromkeys(["EngineStatistics", "EngineStatus"], "motet.engine.status"),
}

__all__ = [
    "Ack",
    "Aggregate",
    "App",
    "BadRequest",
    "BlockingClient",
    "Client",
    "CodecError",
    "CommandIdReused",
    "CommandRejected",
    "Conflict",
    "ConnectionLost",
    "Engine",
    "EngineClosed",
    "EngineStatistics",
    "EngineStatus",
    "Forgotten",
    "InternalError",
    "InvalidKey",
    "InvalidMessage",
    "Mediator",
    "Metadata",
    "MotetError",
    "NotFound",
    "Order",
    "Overloaded",
    "Personal",
    "ProcessManager",
    "ProcessManagerStatus",
    "Projection",
    "ProjectionFailed",
    "ProjectionStatus",
    "Query",
    "QueryTimeout",
    "Reaction",
    "RecordedEvent",
    "Rejection",
    "RemoteError",
    "RequestTooLarge",
    "Retention",
    "RetentionResult",
    "Server",
    "ServerStatistics",
    "StorageError",
    "StorageFull",
    "StoreFormatError",
    "StreamDeleted",
    "StreamDeletion",
    "SubjectForgotten",
    "Table",
    "Timer",
    "Unauthorized",
    "Unavailable",
    "UnknownMessageType",
    "Upcaster",
    "connect",
    "open_client",
    "open_engine",
    "open_server",
    "serve_engine",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
