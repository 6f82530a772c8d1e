"""Motet's actor runtime on trio: aggregate actors with bounded mailboxes, the
registry that supervises and passivates them, and the group-commit writer."""

from .aggregate import AggregateActor
from .definition import Aggregate
from .errors import (
    CommandRejected,
    EngineClosed,
    InternalError,
    NotFound,
    Overloaded,
    QueryTimeout,
    UnknownMessageType,
)
from .projection import Projection, ProjectionActor, ProjectionFailed, ProjectionStatus, Query
from .read_model import Order, Table
from .registry import Registry, RegistryStatistics
from .request import CommandRequest
from .writer import GroupCommitWriter, WriterStatistics

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
    "Projection",
    "ProjectionActor",
    "ProjectionFailed",
    "ProjectionStatus",
    "Query",
    "QueryTimeout",
    "Registry",
    "RegistryStatistics",
    "Table",
    "UnknownMessageType",
    "WriterStatistics",
]
