"""Every error Motet raises on purpose, and the one table that reports them.

Every error derives from :class:`MotetError`, so an application can catch
Motet's failures without catching its own bugs. Each class carries its row of
the error table as class attributes: the line protocol's ``code``, the
``outcome`` label of ``motet_commands_total`` and the HTTP ``http_status``.
A subclass inherits its base's row unless it gives its own, so the lookups
below walk the class's MRO (e.g. a projection's failure, derived from
:class:`MotetError`, is ``internal``).

The classes live here, in the lowest layer, because every layer raises or
reports them: the stores, the actor runtime, the engine, the server and the
clients (which must not import the runtime). This module imports nothing of
Motet and nothing but the standard library.
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal, get_args

__all__ = [
    "CODES",
    "OUTCOMES",
    "BadRequest",
    "CodecError",
    "CommandIdReused",
    "CommandRejected",
    "Conflict",
    "ConnectionLost",
    "EngineClosed",
    "ErrorCode",
    "ExportFileError",
    "InternalError",
    "InvalidKey",
    "InvalidMessage",
    "MisplacedRecord",
    "MotetError",
    "NotFound",
    "NotOwner",
    "Outcome",
    "Overloaded",
    "QueryTimeout",
    "RemoteError",
    "RequestTooLarge",
    "StandbyUnavailable",
    "StorageError",
    "StorageFull",
    "StoreFormatError",
    "StoreNotEmpty",
    "StreamDeleted",
    "Unauthorized",
    "Unavailable",
    "UnknownMessageType",
    "code_for",
    "error_for_code",
    "http_status_of",
    "outcome_of",
]

ErrorCode = Literal[
    "bad_request",
    "too_large",
    "unknown_type",
    "invalid",
    "rejected",
    "conflict",
    "not_found",
    "overloaded",
    "timeout",
    "unauthorized",
    "unavailable",
    "internal",
]
"""The line protocol's error codes (docs/design.md); no others are sent."""

CODES: Final[tuple[ErrorCode, ...]] = get_args(ErrorCode)
"""Every error code, in docs/design.md's order."""

Outcome = Literal["ok", "rejected", "conflict", "overloaded", "invalid", "unavailable", "error"]
"""A value of the ``outcome`` label of ``motet_commands_total``."""

OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
"""Every value of the ``outcome`` label of ``motet_commands_total``."""


# --- The root and its row -----------------------------------------------------


class MotetError(Exception):
    """Root of every error Motet raises on purpose.

    Its row (``internal``, outcome ``error``, HTTP 500) is the one of every
    subclass that gives none: a failure on Motet's side, not the caller's.
    """

    code: ClassVar[ErrorCode] = "internal"
    """The line protocol's error code for this error."""
    outcome: ClassVar[Outcome] = "error"
    """The ``outcome`` label a command failing with this error is counted under."""
    http_status: ClassVar[int] = 500
    """The HTTP status the HTTP API answers this error with."""


# --- The storage layer's own errors ---------------------------------------------


class StorageError(MotetError):
    """The store could not do what was asked: the disk, the files or the
    environment are at fault, not the caller's data (e.g. the disk is full)."""


class StoreFormatError(StorageError):
    """The directory given is not a Motet store this version can open: it is a
    file, holds something else, or was written by an unknown format version.
    The operator's fault: point Motet at the right directory."""


class StoreNotEmpty(StoreFormatError):
    """An import or a restore was pointed at a store or directory that already
    holds data; they only fill an empty one, so nothing is mixed or
    overwritten. The operator's fault: give a new or empty target."""


class ExportFileError(MotetError, ValueError):
    """A file given to ``motet import`` is not a sound Motet export: a line
    that is not JSON or not an event, positions with a gap or out of order,
    an event type the app does not know, a checksum that does not match.
    The file's fault (edited, truncated, from another app); the message
    names the line (``invalid``). ``line`` is its number (1-based), 0 for the
    file as a whole."""

    code = "invalid"
    outcome = "invalid"
    http_status = 400

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line

    def __reduce__(self) -> tuple[type[ExportFileError], tuple[str, int]]:
        return (type(self), (str(self), self.line))


class CodecError(MotetError):
    """Bytes could not be turned back into a registered message type: an
    unknown type tag, a version newer than the code, or corrupt data.
    ``position`` is the log position of the record, when it is one."""

    position: int | None = None


class MisplacedRecord(MotetError, ValueError):
    """An already-positioned record (an import, a copy of another log) does
    not fit where it would go: not at the log's next position, not at its
    stream's next version, or carrying a command id already acknowledged
    elsewhere. The caller's fault (the records given, e.g. an edited export
    file; ``invalid``); nothing of the batch is written. ``position`` is the
    record's."""

    code = "invalid"
    outcome = "invalid"
    http_status = 400

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position

    def __reduce__(self) -> tuple[type[MisplacedRecord], tuple[str, int]]:
        return (type(self), (str(self), self.position))


class Conflict(MotetError):
    """An append's expected stream version did not match the stream's actual
    version. The caller's fault (a stale read or a concurrent writer): reload
    the stream and decide again."""

    code = "conflict"
    outcome = "conflict"
    http_status = 409

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream!r} is at version {actual}, expected version {expected}")
        self.stream = stream
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[type[Conflict], tuple[str, int, int]]:
        return (type(self), (self.stream, self.expected, self.actual))


# --- The engine's errors, as the embedded API raises them -------------------------


class CommandRejected(MotetError):
    """The domain refused the command (raised by ``decide``). The caller's
    fault: ``str(error)`` is the domain's message, e.g. ``email is required``."""

    code = "rejected"
    outcome = "rejected"
    http_status = 422


class StreamDeleted(CommandRejected):
    """The command's stream was deleted: it takes no more events, whatever
    the command. The caller's fault (``rejected``; HTTP 410 Gone): retrying
    cannot help. ``stream`` names it."""

    http_status = 410

    def __init__(self, stream: str) -> None:
        super().__init__(f"stream {stream!r} was deleted and takes no more events")
        self.stream = stream

    def __reduce__(self) -> tuple[type[StreamDeleted], tuple[str]]:
        return (type(self), (self.stream,))


class Overloaded(MotetError):
    """The aggregate's mailbox is full, so the command was not accepted (it did
    not run and nothing was written), or a subscriber did not keep up. Back
    off and retry."""

    code = "overloaded"
    outcome = "overloaded"
    http_status = 429


class Unavailable(MotetError):
    """This node cannot serve the request right now (e.g. the partition has
    no live owner, or the store is down); nothing ran. Retry later, possibly
    on another node."""

    code = "unavailable"
    outcome = "unavailable"
    http_status = 503


class EngineClosed(Unavailable):
    """The engine is shutting down or closed and takes no more requests;
    nothing ran. Retry later or on another node."""


class NotOwner(Unavailable):
    """The append was refused because this node no longer holds the lease of
    the aggregate's partition (another node took it over, or it was handed
    over): nothing of it was written. Retry, on any node: it is forwarded to
    the partition's owner."""


class StorageFull(StorageError, Unavailable):
    """The disk is full: nothing of the failed commit was written and what
    was committed before is intact. A :class:`StorageError` for the embedded
    API, reported as ``unavailable`` (the client raises :class:`Unavailable`):
    the request was fine, retry it later, once space is freed."""

    code = "unavailable"
    outcome = "unavailable"
    http_status = 503


class StandbyUnavailable(StorageError, Unavailable):
    """PostgreSQL's synchronous standby did not confirm a commit in time
    (it is down, unreachable or too slow), or the wait for it was
    cancelled: the commit is durable on the primary only and is not
    acknowledged. Its outcome is unknown to the caller, as after a lost
    connection: a retry with the same command id answers it once the
    standby is back. The operator's matter (the replication setup), reported
    as ``unavailable``: retry later."""

    code = "unavailable"
    outcome = "unavailable"
    http_status = 503


class NotFound(MotetError):
    """The entity asked for does not exist."""

    code = "not_found"
    http_status = 404


class InternalError(MotetError):
    """A handler or the engine failed unexpectedly: a bug, not the caller's
    fault. The command did not take effect; the aggregate was restarted from
    storage and later commands work."""


class UnknownMessageType(MotetError):
    """No aggregate or query handler is registered for this message type.
    The caller's fault: the message lists the known types."""

    code = "unknown_type"
    outcome = "invalid"
    http_status = 404


class QueryTimeout(MotetError):
    """A query's ``after=`` position was not reached by its projection within
    the timeout (the projection lags, or the position was never written)."""

    code = "timeout"
    http_status = 504


# --- The wire's errors ------------------------------------------------------------


class BadRequest(MotetError):
    """A request is not a valid request (``bad_request``): not JSON, not an
    object, no or an unknown ``op``, or a request field of the wrong type.
    The client's fault; the message says what is wrong and where.
    ``request_id`` is the request's ``id`` when it could be read."""

    code: ClassVar[ErrorCode] = "bad_request"
    outcome = "invalid"
    http_status = 400

    def __init__(self, message: str, request_id: str | int | float | bool | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class RequestTooLarge(BadRequest):
    """A request is longer than the server's limit (``too_large``); the
    server closes that connection after saying so."""

    code = "too_large"
    http_status = 413


class InvalidMessage(MotetError, ValueError):
    """A message's ``data`` does not match its type's schema, or an argument
    is out of range (``invalid``). The client's fault; the message names the
    field. Also a ``ValueError``, as the embedded API raises for bad input."""

    code = "invalid"
    outcome = "invalid"
    http_status = 400


class InvalidKey(InvalidMessage):
    """A stream id, aggregate id or command id that cannot be a store key:
    empty, not text, holding NUL, or longer than its limit in UTF-8 bytes.
    The caller's fault (``invalid``; also a ``ValueError``)."""


class CommandIdReused(InvalidMessage):
    """A command id already taken by a different command. A retry must be the
    same command (same type, same stream, same data); anything else needs its
    own command id. The caller's fault (``invalid``: retrying cannot help, unlike
    a ``conflict``)."""

    def __init__(self, command_id: str, stream: str, command_type: str | None, got: str) -> None:
        first = f"a {command_type} command" if command_type else "a command"
        super().__init__(
            f"command_id {command_id!r} was already used by {first} on stream {stream!r}; "
            f"a retry must be the same command, got {got} (use a new command id for a new "
            "command)"
        )
        self.command_id = command_id
        self.stream = stream
        self.command_type = command_type
        self.got = got

    def __reduce__(self) -> tuple[type[CommandIdReused], tuple[str, str, str | None, str]]:
        return (type(self), (self.command_id, self.stream, self.command_type, self.got))


class Unauthorized(MotetError):
    """The server needs an ``auth`` request with the right token first
    (``unauthorized``). The client's fault."""

    code = "unauthorized"
    http_status = 401


class RemoteError(MotetError):
    """An error reply with a code this client does not know (a newer server);
    the instance's ``code`` holds it. Passed on, it is reported as
    ``internal``: the lookups read the class's row, not the instance."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code  # type: ignore[misc,assignment]


class ConnectionLost(MotetError):
    """The connection to the server is closed or broke, so the request got no
    answer. A command sent just before may still have committed: retry it
    with the same ``command_id`` to find out. Reported as ``unavailable``
    when a node passes it on."""

    code = "unavailable"
    outcome = "unavailable"
    http_status = 503


# --- The lookups -------------------------------------------------------------------

# The exception a client raises for each code: the embedded API's class.
_BY_CODE: Final[dict[str, type[MotetError]]] = {
    "bad_request": BadRequest,
    "too_large": RequestTooLarge,
    "unknown_type": UnknownMessageType,
    "invalid": InvalidMessage,
    "rejected": CommandRejected,
    "conflict": Conflict,
    "not_found": NotFound,
    "overloaded": Overloaded,
    "timeout": QueryTimeout,
    "unauthorized": Unauthorized,
    "unavailable": Unavailable,
    "internal": InternalError,
}


def _row_of(error: BaseException) -> type[MotetError]:
    """The class whose row reports ``error``: its own for Motet's errors,
    :class:`InvalidMessage`'s for a ``ValueError`` (msgspec's
    ``ValidationError`` included: bad input the engine refused), else
    :class:`InternalError`'s (a bug)."""
    if isinstance(error, MotetError):
        return type(error)
    if isinstance(error, ValueError):
        return InvalidMessage
    return InternalError


def code_for(error: BaseException) -> ErrorCode:
    """The line protocol's error code that reports ``error`` (``internal``
    for anything unexpected: a bug, which the server also logs)."""
    return _row_of(error).code


def outcome_of(error: BaseException | None) -> Outcome:
    """The ``outcome`` label for a command that raised ``error`` (``None``: ok)."""
    if error is None:
        return "ok"
    return _row_of(error).outcome


def http_status_of(error: BaseException) -> int:
    """The HTTP status that reports ``error`` (500 for anything unexpected)."""
    return _row_of(error).http_status


def error_for_code(code: str) -> type[MotetError] | None:
    """The exception class a client raises for an error reply with ``code``,
    or ``None`` for a code this version does not know (raise
    :class:`RemoteError` then)."""
    return _BY_CODE.get(code)
