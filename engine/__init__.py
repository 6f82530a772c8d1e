"""Motet's public API: open an engine, send commands, read streams, subscribe.

Example::

    from engine import open_engine
    from engine.example import app, CreateUser

    async with open_engine("./motet-data", app) as engine:
        ack = await engine.send(CreateUser(user_id="u1", name="Ann",
                                           email="ann@example.org", password="pw"))
"""

from actors.definition import Aggregate
from actors.errors import (
    CommandRejected,
    EngineClosed,
    InternalError,
    NotFound,
    Overloaded,
    QueryTimeout,
    UnknownMessageType,
)
from actors.projection import Projection, ProjectionFailed, ProjectionStatus, Query
from actors.read_model import Order, Table
from storage.codec import Upcaster
from storage.errors import CodecError, Conflict, MotetError, StorageError, StoreFormatError
from storage.records import Metadata, RecordedEvent

from .app import App
from .client import BlockingClient, Client, ConnectionLost, connect, open_client
from .core import Ack, Engine, EngineStatistics, EngineStatus, open_engine
from .mediator import Mediator
from .protocol import BadRequest, InvalidMessage, RemoteError, RequestTooLarge, Unauthorized
from .server import Server, ServerStatistics, open_server, serve_engine

__all__ = [
    "Ack",
    "Aggregate",
    "App",
    "BadRequest",
    "BlockingClient",
    "Client",
    "CodecError",
    "CommandRejected",
    "Conflict",
    "ConnectionLost",
    "Engine",
    "EngineClosed",
    "EngineStatistics",
    "EngineStatus",
    "InternalError",
    "InvalidMessage",
    "Mediator",
    "Metadata",
    "MotetError",
    "NotFound",
    "Order",
    "Overloaded",
    "Projection",
    "ProjectionFailed",
    "ProjectionStatus",
    "Query",
    "QueryTimeout",
    "RecordedEvent",
    "RemoteError",
    "RequestTooLarge",
    "Server",
    "ServerStatistics",
    "StorageError",
    "StoreFormatError",
    "Table",
    "Unauthorized",
    "UnknownMessageType",
    "Upcaster",
    "connect",
    "open_client",
    "open_engine",
    "open_server",
    "serve_engine",
]
