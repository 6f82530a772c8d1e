"""The TCP line protocol's wire format: pure functions, no sockets.

One JSON object per line in each direction (see docs/design.md, "TCP line
protocol"). The server decodes a line with :class:`RequestDecoder` and answers
with lines made by :class:`ReplyEncoder`; the client encodes the request
structs below and turns error replies back into exceptions with
:func:`error_from_reply`.

Requests are a tagged union on ``op``:

- ``command``: ``type`` (a command tag), ``data``, optional ``command_id``,
  ``expected_version``, ``correlation_id`` and ``causation_id`` (kept in the
  events' metadata) → the Ack ``{"stream", "version", "position"}``;
- ``query``: ``type`` (a query tag), ``data``, optional ``after`` and
  ``timeout`` (seconds, default 5) → the query's result as JSON;
- ``read``: ``stream``, ``from`` (a version, default 0), ``limit`` (1..10,000,
  default 1,000) → ``{"events": [...], "next": <last version returned>}``;
- ``subscribe``: ``from`` (a position, default 0) → one
  ``{"id": ..., "event": {...}}`` line per event with a greater position,
  catch-up then live, until the subscription ends with an error line (too
  slow, ``unsubscribe``d, or the server stopping);
- ``unsubscribe``: ``subscription`` (the id of a subscribe request on the same
  connection) → ``{"unsubscribed": true|false}``; an addition to docs/design.md's
  list so one subscription can end without closing the connection;
- ``join``, ``ack``, ``nack``, ``leave``: membership of a consumer group
  (see docs/design.md, "Consumer groups"); ``replay`` and ``skip``: a
  group's parked events;
- ``status`` → the engine's status; ``ping`` → ``"pong"``;
- ``auth``: ``token`` → ``true`` (needed first when the server has a token);
- ``delete_stream``: ``stream``, ``hard`` (default false) → the deletion
  record ``{"stream", "version", "hard", "removed", "deleted_at"}``; a
  ``read`` of a deleted stream answers ``"deleted": true`` as well. A hard
  delete needs a server started with ``--allow-hard-delete`` (else
  ``unauthorized``); commands to a deleted stream fail with ``rejected``;
- ``apply_retention`` → ``{"streams", "truncated", "removed", "by_category"}``.
  Both need the full-access token.

Unknown fields are refused (a misspelled ``expected_version`` must not be
ignored silently). Which error code a failure gets:

- ``bad_request``: the line is not JSON (or not UTF-8, or nested too deeply),
  not an object, has no ``op`` or an unknown one, or one of the request's own
  fields (``id``, ``from``, ``limit``, ``after`` ...) has the wrong type or
  range; the message names the field (``... - at `$.from```);
- ``invalid``: ``data`` does not match the message type's schema (the message
  names the field: ``Expected `str`, got `int` - at `$.data.user_id```), or
  the engine refused an argument with ``ValueError`` (e.g. an empty id);
- ``unknown_type``, ``rejected``, ``conflict``, ``not_found``, ``overloaded``,
  ``timeout``, ``unauthorized``, ``too_large``: as the names say;
- ``unavailable``: this node cannot serve it now, e.g. the server is
  stopping (:class:`EngineClosed`): nothing ran, retry later or elsewhere;
- ``internal``: anything else, including a projection's failure,
  :class:`InternalError` and :class:`StorageError` (the server's side failed,
  not the request).

The codes come from the one error table, :mod:`motet.storage.errors`: each
exception class carries its code (see :func:`code_for`), and a client raises
the embedded API's class for each code (see :data:`ERROR_CODES`).

Events (``read``'s ``events``, ``subscribe``'s lines) carry ``metadata``:
``command_id``, ``correlation_id`` and ``causation_id``, each left out when
it is null.

Every reply carries the request's ``id`` when it could be read (any JSON
scalar), else ``null``. Error objects may carry details besides ``code`` and
``message``: ``stream``, ``expected`` and ``actual`` for ``conflict``, and
``position`` (the last event delivered) when a subscription ends.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Final, get_args

import msgspec

from motet.storage.errors import (
    CODES,
    BadRequest,
    Conflict,
    ErrorCode,
    InvalidMessage,
    MotetError,
    RemoteError,
    RequestTooLarge,
    Unauthorized,
    UnknownMessageType,
    code_for,
    error_for_code,
)

if TYPE_CHECKING:
    from motet.storage.records import Ack, RecordedEvent, StreamDeletion
    from motet.storage.retention import RetentionResult

    from ..app import App

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_PREFETCH",
    "DEFAULT_QUERY_TIMEOUT",
    "DEFAULT_READ_LIMIT",
    "ERROR_CODES",
    "MAX_QUERY_TIMEOUT",
    "MAX_READ_LIMIT",
    "AckBody",
    "AckOp",
    "ApplyRetentionOp",
    "AuthOp",
    "BadRequest",
    "CommandOp",
    "DeleteStreamOp",
    "DeletionBody",
    "ErrorBody",
    "ErrorCode",
    "ForgetOp",
    "InvalidMessage",
    "JoinBody",
    "JoinOp",
    "LeaveOp",
    "NackOp",
    "PingOp",
    "QueryOp",
    "ReadBody",
    "ReadOp",
    "RemoteError",
    "ReplayOp",
    "Reply",
    "ReplyEncoder",
    "Request",
    "RequestDecoder",
    "RequestId",
    "RequestTooLarge",
    "RetentionBody",
    "SkipOp",
    "StatusOp",
    "SubscribeOp",
    "Unauthorized",
    "UnsubscribeOp",
    "WireEvent",
    "WireMetadata",
    "code_for",
    "error_from_reply",
]

DEFAULT_PORT: Final = 7707
"""The port ``motet serve`` listens on, and the clients connect to, by default."""

RequestId = str | int | float | bool | None
"""A request's ``id``: any JSON scalar, echoed in every reply to it."""

DEFAULT_READ_LIMIT: Final = 1_000
"""Events a ``read`` returns when it gives no ``limit``."""

MAX_READ_LIMIT: Final = 10_000
"""The largest ``limit`` a ``read`` may ask for (page with ``next`` for more)."""

DEFAULT_PREFETCH: Final = 100
"""Deliveries a consumer-group member holds unacked when its ``join`` gives
no ``prefetch``."""

DEFAULT_QUERY_TIMEOUT: Final = 5.0
"""Seconds a ``query`` with ``after`` waits for its projection, by default."""

MAX_QUERY_TIMEOUT: Final = 3_600.0
"""The longest ``timeout`` a query may ask for."""

# Positions and versions are stored as unsigned 64-bit keys.
_NonNegative = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_QUERY_TIMEOUT)]
_Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_READ_LIMIT)]
_Position = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
_Prefetch = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
_RetryAfter = Annotated[float, msgspec.Meta(ge=0, le=3_600)]


# --- Errors -------------------------------------------------------------------


ERROR_CODES: Final[Mapping[str, type[MotetError]]] = {
    code: cls for code in CODES if (cls := error_for_code(code)) is not None
}
"""Each error code and the exception class the client raises for it (read
from the error table; kept for its users)."""


# --- Requests -----------------------------------------------------------------


class _Op(
    msgspec.Struct,
    kw_only=True,
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="op",
):
    id: RequestId = None


class CommandOp(_Op, frozen=True, tag="command"):
    """``{"op": "command", "type": tag, "data": {...}}``: run a command.

    ``data`` stays raw JSON until :meth:`RequestDecoder.decode_command` turns
    it into the registered command type.
    """

    type: str
    data: msgspec.Raw = msgspec.Raw(b"{}")
    command_id: str | None = None
    expected_version: _NonNegative | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


class QueryOp(_Op, frozen=True, tag="query"):
    """``{"op": "query", "type": tag, "data": {...}}``: ask a query, after an
    optional position, waiting at most ``timeout`` seconds for it."""

    type: str
    data: msgspec.Raw = msgspec.Raw(b"{}")
    after: _NonNegative | None = None
    timeout: _Seconds | None = None


class ReadOp(_Op, frozen=True, tag="read"):
    """``{"op": "read", "stream": s, "from": version, "limit": n}``: read up to
    ``limit`` events of a stream with versions above ``from``. Without
    ``stream``, ``category`` and/or ``types`` read the log: the matching
    events with positions above ``from``, and ``next`` is the last position
    looked at. ``types`` also filters a stream's events."""

    stream: str | None = None
    from_: _NonNegative = msgspec.field(default=0, name="from")
    limit: _Limit | None = None
    category: str | None = None
    types: list[str] | None = None


class SubscribeOp(_Op, frozen=True, tag="subscribe"):
    """``{"op": "subscribe", "from": position}``: stream every event after the
    position (only those of ``category`` and ``types`` when given), catch-up
    then live, until unsubscribed or disconnected."""

    from_: _NonNegative = msgspec.field(default=0, name="from")
    category: str | None = None
    types: list[str] | None = None


class JoinOp(_Op, frozen=True, tag="join"):
    """``{"op": "join", "group": g, "category": c, "types": [...],
    "prefetch": n}``: become a member of consumer group ``g``; answered with
    ``{"member": id}``, then one event line per delivery (with this request's
    id) until ``leave`` or the connection closes."""

    group: str
    category: str | None = None
    types: list[str] | None = None
    prefetch: _Prefetch | None = None


class AckOp(_Op, frozen=True, tag="ack"):
    """``{"op": "ack", "group": g, "position": p}``: the delivery at ``p`` is
    handled; answered once that is durable."""

    group: str
    position: _Position


class NackOp(_Op, frozen=True, tag="nack"):
    """``{"op": "nack", "group": g, "position": p, "retry_after": s,
    "error": text}``: handling failed; deliver it again after ``s`` seconds
    (or park it after the group's limit of failures)."""

    group: str
    position: _Position
    retry_after: _RetryAfter = 0.0
    error: str | None = None


class LeaveOp(_Op, frozen=True, tag="leave"):
    """``{"op": "leave", "group": g}``: leave the group; unacked deliveries go
    to the other members."""

    group: str


class ReplayOp(_Op, frozen=True, tag="replay"):
    """``{"op": "replay", "group": g, "position": p}``: deliver a parked event again."""

    group: str
    position: _Position


class SkipOp(_Op, frozen=True, tag="skip"):
    """``{"op": "skip", "group": g, "position": p}``: forget a parked event."""

    group: str
    position: _Position


class UnsubscribeOp(_Op, frozen=True, tag="unsubscribe"):
    """``{"op": "unsubscribe", "subscription": id}``: end the subscription
    whose subscribe request had that id."""

    subscription: RequestId


class DeleteStreamOp(_Op, frozen=True, tag="delete_stream"):
    """``{"op": "delete_stream", "stream": s, "hard": false}``: delete a
    stream (a tombstone; with ``hard``, its events too, where the server
    allows it). Needs the full-access token."""

    stream: str
    hard: bool = False


class ApplyRetentionOp(_Op, frozen=True, tag="apply_retention"):
    """``{"op": "apply_retention"}``: apply the aggregates' retention now.
    Needs the full-access token."""


class StatusOp(_Op, frozen=True, tag="status"):
    """``{"op": "status"}``: the engine's status."""


class PingOp(_Op, frozen=True, tag="ping"):
    """``{"op": "ping"}``: answered with ``"pong"``."""


class ForgetOp(_Op, frozen=True, tag="forget"):
    """``{"op": "forget", "subject": s}``: erase the personal data of a data
    subject (crypto-shredding; needs the full-access token). Answers what
    :meth:`Engine.forget <motet.engine.core.Engine.forget>` returns."""

    subject: str


class AuthOp(_Op, frozen=True, tag="auth"):
    """``{"op": "auth", "token": t}``: authenticate the connection."""

    token: str


Request = (
    CommandOp
    | QueryOp
    | ReadOp
    | SubscribeOp
    | UnsubscribeOp
    | StatusOp
    | PingOp
    | AuthOp
    | DeleteStreamOp
    | ApplyRetentionOp
    | ForgetOp
    | JoinOp
    | AckOp
    | NackOp
    | LeaveOp
    | ReplayOp
    | SkipOp
)
"""Any request line, as decoded by :meth:`RequestDecoder.decode_request`."""

_OPS: Final = (
    "command",
    "query",
    "read",
    "subscribe",
    "unsubscribe",
    "status",
    "ping",
    "auth",
    "delete_stream",
    "apply_retention",
    "forget",
    "join",
    "ack",
    "nack",
    "leave",
    "replay",
    "skip",
)
_JSON_TYPES: Final = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
_SCALARS: Final = (str, int, float, bool, type(None))


def _describe(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _under_data(message: str) -> str:
    """Re-root a msgspec error message at ``$.data``: the message was decoded
    on its own, so its paths start at ``$``."""
    if " - at `$" in message:
        return message.replace(" - at `$", " - at `$.data", 1)
    return f"{message} - at `$.data`"


def _utf8_error(line: bytes) -> str | None:
    """Why ``line`` is not UTF-8 (e.g. ``not UTF-8 (invalid start byte at
    byte 0)``), or ``None`` when it is."""
    try:
        line.decode()
    except UnicodeDecodeError as exc:
        return f"not UTF-8 ({exc.reason} at byte {exc.start})"
    return None


# The exact check for duplicate keys (below) parses with the standard
# library's scanner, which can resume at an offset; msgspec cannot, and
# silently keeps the last of two equal keys.
_JSON = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _key_patterns(op: type[_Op]) -> tuple[bytes, ...]:
    """How each top-level key of an ``op`` request appears in a line without
    escapes: ``"name"``, for every field and the tag field ``op``."""
    names = [field.encode_name for field in msgspec.structs.fields(op)]
    return tuple(json.dumps(name).encode() for name in ("op", *names))


def _top_level_duplicate(line: bytes) -> str | None:
    """The first key that appears twice in the top-level object of ``line``
    (a line msgspec accepted), or ``None``. Nested objects are the data's own."""
    try:
        text = line.decode()
        index = _SPACE.match(text).end()  # type: ignore[union-attr]
        if text[index : index + 1] != "{":
            return None
        index = _SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
        if text[index : index + 1] == "}":
            return None
        seen: set[str] = set()
        while True:
            key, index = _JSON.raw_decode(text, index)
            if key in seen:
                return str(key)
            seen.add(key)
            index = _SPACE.match(text, index).end() + 1  # type: ignore[union-attr]  # the ':'
            index = _SPACE.match(text, index).end()  # type: ignore[union-attr]
            _, index = _JSON.raw_decode(text, index)
            index = _SPACE.match(text, index).end()  # type: ignore[union-attr]
            if text[index] != ",":
                return None
            index = _SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
    except (ValueError, IndexError, RecursionError):
        # Where the two parsers disagree on a line, msgspec's answer stands.
        return None


def _duplicate_key_error(key: str, request_id: RequestId) -> BadRequest:
    # A duplicated id names no request: echo none.
    return BadRequest(
        f"duplicate key {key!r} in the request: each field may appear once",
        None if key == "id" else request_id,
    )


def _known(names: Mapping[str, type]) -> str:
    listed = sorted(names)
    if not listed:
        return "none"
    more = f" and {len(listed) - 20} more" if len(listed) > 20 else ""
    return ", ".join(listed[:20]) + more


class RequestDecoder:
    """Decodes request lines, and the ``data`` of commands and queries into
    the app's registered types. Decoders are built once, here."""

    def __init__(self, app: App) -> None:
        self._request: msgspec.json.Decoder[Request] = msgspec.json.Decoder(Request)
        self._untyped = msgspec.json.Decoder()
        self._commands: dict[str, msgspec.json.Decoder[Any]] = {
            tag: msgspec.json.Decoder(cls) for tag, cls in app.command_types().items()
        }
        self._queries: dict[str, msgspec.json.Decoder[Any]] = {
            tag: msgspec.json.Decoder(cls) for tag, cls in app.query_types().items()
        }
        self._command_types = app.command_types()
        self._query_types = app.query_types()
        self._key_patterns: dict[type, tuple[bytes, ...]] = {
            op: _key_patterns(op) for op in get_args(Request)
        }

    def __repr__(self) -> str:
        return f"<RequestDecoder commands={len(self._commands)} queries={len(self._queries)}>"

    def decode_request(self, line: bytes) -> Request:
        """Decode one request line (without its newline).

        Raises :class:`BadRequest` saying what is wrong (a key given twice
        included: JSON leaves it undefined which one counts); its
        ``request_id`` is the line's ``id`` when that could be read.
        """
        try:
            request = self._request.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
            raise self._explain(line, exc) from None
        # A key given twice must be one of the op's fields (others are refused
        # as unknown), and appears twice in the bytes unless it is escaped
        # (``\u``): counting them is cheap, the exact parse runs only then.
        if b"\\u" in line or any(
            line.count(pattern) > 1 for pattern in self._key_patterns[type(request)]
        ):
            duplicate = _top_level_duplicate(line)
            if duplicate is not None:
                raise _duplicate_key_error(duplicate, request.id)
        return request

    def _explain(self, line: bytes, error: Exception) -> BadRequest:
        """Why ``line`` is not a request: decoded again without a schema, only
        on this failure path, to tell the cases apart and find the ``id``."""
        # UTF-8 is checked here rather than read from the decoder's exception:
        # msgspec has changed which exception (and text) a bad byte raises.
        invalid = _utf8_error(line)
        if invalid is not None:
            return BadRequest(f"invalid JSON: {invalid}")
        try:
            value = self._untyped.decode(line)
        except RecursionError:
            return BadRequest("the JSON is nested too deeply")
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            text = str(exc)
            if not line.strip():
                text = "the line is empty"
            elif "out of range" in text:
                text = "a number is out of range"
            return BadRequest(f"invalid JSON: {text}")
        if not isinstance(value, dict):
            return BadRequest(f"a request must be a JSON object, got {_describe(value)}")
        raw_id = value.get("id")
        request_id: RequestId = raw_id if isinstance(raw_id, _SCALARS) else None
        duplicate = _top_level_duplicate(line)
        if duplicate is not None:
            return _duplicate_key_error(duplicate, request_id)
        if "op" not in value:
            return BadRequest(
                f"the request has no op; expected one of: {', '.join(_OPS)}", request_id
            )
        op = value["op"]
        if op not in _OPS:
            return BadRequest(f"unknown op {op!r}; expected one of: {', '.join(_OPS)}", request_id)
        return BadRequest(f"invalid {op} request: {error}", request_id)

    def decode_command(self, op: CommandOp) -> Any:
        """The command ``op`` carries, as its registered type.

        Raises :class:`UnknownMessageType` for an unregistered tag and
        :class:`InvalidMessage` naming the field when ``data`` does not fit.
        """
        decoder = self._commands.get(op.type)
        if decoder is None:
            raise UnknownMessageType(
                f"unknown command type {op.type!r}; known: {_known(self._command_types)}"
            )
        return self._decode_data(decoder, op.data)

    def decode_query(self, op: QueryOp) -> Any:
        """The query ``op`` carries, as its registered type (raises as
        :meth:`decode_command` does)."""
        decoder = self._queries.get(op.type)
        if decoder is None:
            raise UnknownMessageType(
                f"unknown query type {op.type!r}; known: {_known(self._query_types)}"
            )
        return self._decode_data(decoder, op.data)

    @staticmethod
    def _decode_data(decoder: msgspec.json.Decoder[Any], data: msgspec.Raw) -> Any:
        try:
            return decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise InvalidMessage(_under_data(str(exc))) from None
        except (msgspec.DecodeError, ValueError) as exc:
            if _utf8_error(bytes(data)) is not None:
                raise InvalidMessage(_under_data("a string is not valid UTF-8")) from None
            raise InvalidMessage(_under_data(f"invalid JSON: {exc}")) from None
        except RecursionError:
            raise InvalidMessage(_under_data("nested too deeply")) from None


# --- Replies ------------------------------------------------------------------


class ErrorBody(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The ``error`` of a failed reply: its code, a sentence, and details."""

    code: str
    message: str
    stream: str | None = None
    expected: int | None = None
    actual: int | None = None
    position: int | None = None


class WireMetadata(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Where an event came from, as the protocol sends it: the command's id
    and its causal chain; null ones are left out."""

    command_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


class WireEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One event as the protocol sends it (a subscription's ``event``, an
    entry of a read's ``events``); ``time`` is the commit time, ISO 8601 UTC."""

    position: int
    stream: str
    version: int
    type: str
    time: datetime.datetime
    data: Any
    metadata: WireMetadata = WireMetadata()


class Reply(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Any reply line, as the client decodes it: ``ok`` with ``result`` or
    ``error``, or a subscription's ``event``. ``result`` stays raw JSON so the
    caller can decode it into a type of its choosing."""

    id: Any = None
    ok: bool | None = None
    result: msgspec.Raw = msgspec.Raw(b"null")
    error: ErrorBody | None = None
    event: WireEvent | None = None


class _Ok(msgspec.Struct):
    id: RequestId
    ok: bool
    result: Any


class _Failed(msgspec.Struct):
    id: RequestId
    ok: bool
    error: ErrorBody


class _Event(msgspec.Struct):
    id: RequestId
    event: WireEvent


class AckBody(msgspec.Struct):
    """The ``result`` of a command reply: the Ack as JSON."""

    stream: str
    version: int
    position: int


class JoinBody(msgspec.Struct):
    """The ``result`` of a ``join`` reply: the new member's id."""

    member: str


class ReadBody(msgspec.Struct, omit_defaults=True):
    """The ``result`` of a ``read`` reply: a page of events and the last
    version (or, for a read of the log, position) in it; ``deleted: true``
    (present only then) when the stream was deleted (its events are still
    there after a soft delete, gone after a hard one)."""

    events: list[WireEvent]
    next: int
    deleted: bool = False


class DeletionBody(msgspec.Struct, kw_only=True):
    """The ``result`` of a ``delete_stream`` reply: the stream's deletion record."""

    stream: str
    version: int
    """The stream's version when it was deleted."""
    hard: bool
    """Whether its events were removed."""
    removed: int
    """How many of its events were removed, in all."""
    deleted_at: datetime.datetime | None


class RetentionBody(msgspec.Struct, kw_only=True):
    """The ``result`` of an ``apply_retention`` reply."""

    streams: int
    truncated: int
    removed: int
    by_category: dict[str, int]


def _event_body(record: RecordedEvent) -> WireEvent:
    return WireEvent(
        position=record.position,
        stream=record.stream,
        version=record.version,
        type=record.type,
        time=datetime.datetime.fromtimestamp(record.timestamp, datetime.UTC),
        data=record.data,
        metadata=WireMetadata(
            command_id=record.metadata.command_id,
            correlation_id=record.metadata.correlation_id,
            causation_id=record.metadata.causation_id,
        ),
    )


class ReplyEncoder:
    """Encodes reply lines (each ends with a newline). Results and event
    payloads are encoded as msgspec encodes them: a Struct becomes an object
    (with its tag field if it has a tag), a datetime an RFC 3339 string."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()

    def __repr__(self) -> str:
        return "<ReplyEncoder>"

    def ok(self, request_id: RequestId, result: Any) -> bytes:
        """A success reply. Raises ``TypeError``/``msgspec.EncodeError`` when
        ``result`` is not JSON-encodable (the caller reports ``internal``)."""
        return self._encoder.encode(_Ok(request_id, True, result)) + b"\n"

    def ack(self, request_id: RequestId, ack: Ack) -> bytes:
        """A command's success reply: ``{"stream", "version", "position"}``."""
        return self.ok(request_id, AckBody(ack.stream, ack.version, ack.position))

    def read(
        self,
        request_id: RequestId,
        events: list[RecordedEvent],
        after: int,
        deletion: StreamDeletion | None = None,
        next_position: int | None = None,
    ) -> bytes:
        """A read's reply: the events and ``next``, to pass as the next
        ``from``: the last version returned (``after`` when there are none),
        or for a read of the log ``next_position``, the last position looked
        at; and ``deleted`` when the stream was."""
        if next_position is not None:
            next_from = next_position
        else:
            next_from = events[-1].version if events else after
        deleted = deletion is not None and deletion.deleted
        return self.ok(request_id, ReadBody([_event_body(e) for e in events], next_from, deleted))

    def deletion(self, request_id: RequestId, stream: str, record: StreamDeletion) -> bytes:
        """A ``delete_stream`` reply: the deletion record (times in RFC 3339)."""
        at = record.deleted_at
        return self.ok(
            request_id,
            DeletionBody(
                stream=stream,
                version=record.version,
                hard=record.hard,
                removed=record.removed,
                deleted_at=None
                if at is None
                else datetime.datetime.fromtimestamp(at, datetime.UTC),
            ),
        )

    def retention(self, request_id: RequestId, result: RetentionResult) -> bytes:
        """An ``apply_retention`` reply."""
        return self.ok(
            request_id,
            RetentionBody(
                streams=result.streams,
                truncated=result.truncated,
                removed=result.removed,
                by_category=result.by_category,
            ),
        )

    def event(self, request_id: RequestId, record: RecordedEvent) -> bytes:
        """A subscription's event line."""
        return self._encoder.encode(_Event(request_id, _event_body(record))) + b"\n"

    def error(
        self,
        request_id: RequestId,
        code: ErrorCode,
        message: str,
        *,
        position: int | None = None,
    ) -> bytes:
        """A failure reply with ``code`` and ``message``."""
        body = ErrorBody(code=code, message=message, position=position)
        return self._encoder.encode(_Failed(request_id, False, body)) + b"\n"

    def exception(
        self, request_id: RequestId, error: BaseException, *, position: int | None = None
    ) -> bytes:
        """The failure reply for ``error`` (its code from :func:`code_for`);
        ``position``: the last event a subscription delivered.

        Unexpected errors (code ``internal`` without being one of Motet's own
        errors) say only their class, not their text, which may hold data."""
        code = code_for(error)
        if isinstance(error, Conflict):
            body = ErrorBody(
                code=code,
                message=str(error),
                stream=error.stream,
                expected=error.expected,
                actual=error.actual,
            )
            return self._encoder.encode(_Failed(request_id, False, body)) + b"\n"
        if code == "internal" and not isinstance(error, MotetError):
            message = f"internal error ({type(error).__name__}); see the server's log"
        else:
            message = str(error) or type(error).__name__
        return self.error(request_id, code, message, position=position)


def error_from_reply(error: ErrorBody) -> MotetError:
    """The exception a client raises for an error reply: the embedded API's
    class for its code (see :func:`error_for_code`), :class:`RemoteError` for
    an unknown code."""
    if error.code == "conflict":
        if error.stream is not None and error.expected is not None and error.actual is not None:
            return Conflict(error.stream, error.expected, error.actual)
        conflict = Conflict.__new__(Conflict)
        Exception.__init__(conflict, error.message)
        conflict.stream, conflict.expected, conflict.actual = error.stream or "", -1, -1
        return conflict
    cls = error_for_code(error.code)
    if cls is None:
        return RemoteError(error.code, error.message)
    return cls(error.message)
