"""Errors of the actor runtime, as the embedded API raises them.

All derive from :class:`motet.storage.errors.MotetError`; ``engine`` re-exports them.
"""

from __future__ import annotations

from motet.storage.errors import MotetError

__all__ = [
    "CommandRejected",
    "EngineClosed",
    "InternalError",
    "NotFound",
    "Overloaded",
    "QueryTimeout",
    "UnknownMessageType",
]


class CommandRejected(MotetError):
    """The domain refused the command (raised by ``decide``). The caller's
    fault: ``str(error)`` is the domain's message, e.g. ``email is required``."""


class Overloaded(MotetError):
    """The aggregate's mailbox is full, so the command was not accepted (it did
    not run and nothing was written). Back off and retry."""


class NotFound(MotetError):
    """The entity asked for does not exist."""


class InternalError(MotetError):
    """A handler or the engine failed unexpectedly: a bug, not the caller's
    fault. The command did not take effect; the aggregate was restarted from
    storage and later commands work."""


class UnknownMessageType(MotetError):
    """No aggregate or query handler is registered for this message type."""


class EngineClosed(MotetError):
    """The engine is shutting down or closed and takes no more requests."""


class QueryTimeout(MotetError):
    """A query's ``after=`` position was not reached by its projection within
    the timeout (the projection lags, or the position was never written)."""
