"""Motet's public API: open an engine, send commands, read streams, subscribe.

Example::

    from motet.engine import open_engine
    from motet.engine.example import app, CreateUser

    async with open_engine("./motet-data", app) as engine:
        ack = await engine.send(CreateUser(user_id="u1", name="Ann",
                                           email="ann@example.org", password="pw"))
"""

from motet.actors.definition import Aggregate
from motet.actors.errors import (
    CommandRejected,
    EngineClosed,
    InternalError,
    NotFound,
    Overloaded,
    QueryTimeout,
    UnknownMessageType,
)
from motet.actors.projection import Projection, ProjectionFailed, ProjectionStatus, Query
from motet.actors.read_model import Order, Table
from motet.storage.codec import Upcaster
from motet.storage.errors import CodecError, Conflict, MotetError, StorageError, StoreFormatError
from motet.storage.records import Metadata, RecordedEvent

from .app import App
from .net.client import BlockingClient, Client, ConnectionLost, connect, open_client
from .core import Ack, Engine, EngineStatistics, EngineStatus, open_engine
from .mediator import Mediator
from .net.protocol import BadRequest, InvalidMessage, RemoteError, RequestTooLarge, Unauthorized
from .net.server import Server, ServerStatistics, open_server, serve_engine

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
