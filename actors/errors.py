"""Errors of the actor runtime, as the embedded API raises them.

They are defined with the error table in :mod:`motet.storage.errors` (the
clients need them without the runtime) and re-exported here for the runtime's
users; ``motet.engine`` re-exports them too.
"""

from __future__ import annotations

from motet.storage.errors import (
    CommandRejected,
    EngineClosed,
    InternalError,
    NotFound,
    Overloaded,
    QueryTimeout,
    Unavailable,
    UnknownMessageType,
)

__all__ = [
    "CommandRejected",
    "EngineClosed",
    "InternalError",
    "NotFound",
    "Overloaded",
    "QueryTimeout",
    "Unavailable",
    "UnknownMessageType",
]
