"""The one error table: every error class's wire code, metrics outcome and HTTP
status, the lookups that read it, and the client raising the embedded API's
classes for each code over a real server."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import motet.storage.errors as errors_module
from motet.actors.projection import ProjectionFailed
from motet.engine import (
    Aggregate,
    App,
    BadRequest,
    CommandRejected,
    Conflict,
    ConnectionLost,
    Engine,
    EngineClosed,
    InternalError,
    InvalidMessage,
    MotetError,
    NotFound,
    Overloaded,
    QueryTimeout,
    RemoteError,
    RequestTooLarge,
    StorageError,
    StorageFull,
    Unauthorized,
    Unavailable,
    UnknownMessageType,
    open_client,
    open_engine,
    open_server,
)
from motet.engine.example import CreateUser, GetUserById
from motet.engine.example import app as example_app
from motet.engine.metrics import OUTCOMES as METRICS_OUTCOMES
from motet.engine.metrics import outcome_of as metrics_outcome_of
from motet.engine.net import protocol
from motet.engine.net.client import Client
from motet.storage.errors import (
    CODES,
    OUTCOMES,
    CodecError,
    CommandIdReused,
    ExportFileError,
    InvalidKey,
    MisplacedRecord,
    NotOwner,
    StandbyUnavailable,
    StoreFormatError,
    StoreNotEmpty,
    StreamDeleted,
    code_for,
    error_for_code,
    http_status_of,
    outcome_of,
)

# The table as docs/design.md and the HTTP API describe it: class → (code, outcome, status).
TABLE: dict[type[BaseException], tuple[str, str, int]] = {
    BadRequest: ("bad_request", "invalid", 400),
    RequestTooLarge: ("too_large", "invalid", 413),
    UnknownMessageType: ("unknown_type", "invalid", 404),
    InvalidMessage: ("invalid", "invalid", 400),
    InvalidKey: ("invalid", "invalid", 400),
    CommandIdReused: ("invalid", "invalid", 400),
    MisplacedRecord: ("invalid", "invalid", 400),
    ExportFileError: ("invalid", "invalid", 400),
    CommandRejected: ("rejected", "rejected", 422),
    StreamDeleted: ("rejected", "rejected", 410),
    Conflict: ("conflict", "conflict", 409),
    NotFound: ("not_found", "error", 404),
    Overloaded: ("overloaded", "overloaded", 429),
    QueryTimeout: ("timeout", "error", 504),
    Unauthorized: ("unauthorized", "error", 401),
    Unavailable: ("unavailable", "unavailable", 503),
    EngineClosed: ("unavailable", "unavailable", 503),
    ConnectionLost: ("unavailable", "unavailable", 503),
    InternalError: ("internal", "error", 500),
    ProjectionFailed: ("internal", "error", 500),
    StorageError: ("internal", "error", 500),
    StorageFull: ("unavailable", "unavailable", 503),
    StandbyUnavailable: ("unavailable", "unavailable", 503),
    NotOwner: ("unavailable", "unavailable", 503),
    StoreFormatError: ("internal", "error", 500),
    StoreNotEmpty: ("internal", "error", 500),
    CodecError: ("internal", "error", 500),
    RemoteError: ("internal", "error", 500),
    MotetError: ("internal", "error", 500),
}


def instance(cls: type[BaseException]) -> BaseException:
    if cls is CommandIdReused:
        return CommandIdReused("c-1", "User-u1", "CreateUser", "a PlaceOrder command")
    if cls is Conflict:
        return Conflict("User-u1", 3, 4)
    if cls is RemoteError:
        return RemoteError("teapot", "short and stout")
    if cls is MisplacedRecord:
        return MisplacedRecord("the record at position 3 does not fit", 3)
    if cls is StreamDeleted:
        return StreamDeleted("User-u1")
    return cls("a message")


@pytest.mark.parametrize("cls", list(TABLE), ids=lambda cls: cls.__name__)
def test_each_error_class_has_one_row(cls: type[BaseException]) -> None:
    code, outcome, status = TABLE[cls]
    error = instance(cls)
    assert (code_for(error), outcome_of(error), http_status_of(error)) == (code, outcome, status)
    assert protocol.code_for(error) == code
    assert metrics_outcome_of(error) == outcome
    assert isinstance(error, MotetError)


def test_every_error_class_motet_raises_is_in_the_table() -> None:
    defined = {
        cls
        for _name, cls in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(cls, BaseException)
    }
    assert defined <= set(TABLE)


def test_errors_that_are_not_motets() -> None:
    class Bug(Exception):
        pass

    assert (code_for(Bug()), outcome_of(Bug()), http_status_of(Bug())) == ("internal", "error", 500)
    assert (code_for(ValueError("x")), outcome_of(ValueError("x"))) == ("invalid", "invalid")
    assert http_status_of(ValueError("x")) == 400
    try:
        msgspec.json.decode(b'{"a": 1}', type=dict[str, str])
    except msgspec.ValidationError as exc:
        validation: BaseException = exc
    assert (code_for(validation), outcome_of(validation)) == ("invalid", "invalid")
    assert outcome_of(None) == "ok"


def test_codes_and_outcomes_are_the_documented_ones() -> None:
    assert CODES == (
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
    )
    assert METRICS_OUTCOMES == OUTCOMES
    assert set(OUTCOMES) == {
        "ok",
        "rejected",
        "conflict",
        "overloaded",
        "invalid",
        "unavailable",
        "error",
    }
    assert {row[1] for row in TABLE.values()} <= set(OUTCOMES)


@pytest.mark.parametrize("code", CODES)
def test_each_code_has_one_class_whose_row_it_is(code: str) -> None:
    cls = error_for_code(code)
    assert cls is not None and cls.code == code
    assert protocol.ERROR_CODES[code] is cls
    assert type(protocol.error_from_reply(protocol.ErrorBody(code=code, message="m"))) is cls
    assert error_for_code("teapot") is None


def test_the_wire_and_the_engine_share_the_classes() -> None:
    import motet.actors.errors as actor_errors

    assert protocol.BadRequest is BadRequest
    assert protocol.InvalidMessage is InvalidMessage
    assert actor_errors.EngineClosed is EngineClosed
    assert actor_errors.Unavailable is Unavailable
    assert issubclass(EngineClosed, Unavailable)


# --- The client raises what the embedded API raises ----------------------------------


class Probe(msgspec.Struct, frozen=True, kw_only=True, tag="Probe"):
    probe_id: str
    bug: bool = False


class Probed(msgspec.Struct, frozen=True, kw_only=True, tag="Probed"):
    probe_id: str


def decide_probe(state: None, command: Probe) -> list[Probed]:
    if command.bug:
        raise ZeroDivisionError("a bug in decide")
    return [Probed(probe_id=command.probe_id)]


probe_app = App(
    aggregates=(
        *example_app.aggregates,
        Aggregate(
            name="Probe",
            state_type=type(None),
            initial=None,
            decide=decide_probe,
            evolve=lambda state, event: state,
            commands={Probe: "probe_id"},
            events=(Probed,),
        ),
    ),
    projections=example_app.projections,
    queries=example_app.queries,
    upcasters=example_app.upcasters,
)


class Unregistered(msgspec.Struct, frozen=True, kw_only=True, tag="Unregistered"):
    user_id: str


def create(user_id: str) -> CreateUser:
    return CreateUser(user_id=user_id, name="N", email=f"{user_id}@example.org", password="pw")


Call = Callable[[Any], Awaitable[Any]]

# code → one call that provokes it, made the same way on an Engine and a Client.
PROVOKE: dict[str, Call] = {
    "rejected": lambda api: api.send(create("taken")),
    "conflict": lambda api: api.send(create("c1"), expected_version=5),
    "not_found": lambda api: api.ask(GetUserById(user_id="ghost")),
    "timeout": lambda api: api.ask(GetUserById(user_id="taken"), after=10**6, timeout=0.05),
    "unknown_type": lambda api: api.send(Unregistered(user_id="u")),
    "invalid": lambda api: api.send(create("")),
    "internal": lambda api: api.send(Probe(probe_id="p", bug=True)),
}


async def raised(call: Awaitable[Any]) -> BaseException:
    try:
        with trio.fail_after(5):
            await call
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


@pytest.mark.parametrize("code", list(PROVOKE))
async def test_the_client_raises_the_embedded_class_for_each_code(
    tmp_path: Path, code: str
) -> None:
    async with open_engine(tmp_path / "db", probe_app) as engine:
        await engine.send(create("taken"))
        async with (
            open_server(engine, port=0) as server,
            open_client("127.0.0.1", server.port) as client,
        ):
            embedded = await raised(PROVOKE[code](engine))
            remote = await raised(PROVOKE[code](client))
    assert code_for(embedded) == code == code_for(remote)
    expected = error_for_code(code)
    assert expected is not None and isinstance(remote, expected)
    if isinstance(embedded, MotetError):
        assert type(remote) is type(embedded)
    else:  # a ValueError for a bad argument: the client's is also a ValueError
        assert isinstance(embedded, ValueError) and isinstance(remote, ValueError)
    if code == "unknown_type":  # the server also lists the types it knows
        assert "'Unregistered'" in str(remote) and "Unregistered" in str(embedded)
    else:
        assert str(remote) == str(embedded)


async def test_a_closing_engine_is_unavailable_embedded_and_remote(tmp_path: Path) -> None:
    async with (
        open_engine(tmp_path / "db", probe_app) as engine,
        open_server(engine, port=0) as server,
        open_client("127.0.0.1", server.port) as client,
    ):
        engine._closing = True  # what open_engine's exit does first
        try:
            embedded = await raised(engine.send(create("u1")))
            remote = await raised(client.send(create("u1")))
        finally:
            engine._closing = False
    assert isinstance(embedded, EngineClosed)
    assert type(remote) is Unavailable and str(embedded) == str(remote)
    assert code_for(embedded) == code_for(remote) == "unavailable"


async def test_the_client_raises_the_wire_errors(engine: Engine) -> None:
    async with (
        open_server(engine, port=0, token="secret", max_line=200) as server,
        open_client("127.0.0.1", server.port) as client,
    ):
        with pytest.raises(Unauthorized, match="authenticate first"):
            await client.ping()
        await client.authenticate("secret")
        with pytest.raises(BadRequest, match=r"Expected `int` >= 0 - at `\$.from`"):
            await client.read_stream("User-u1", from_version=-1, limit=1)
        with pytest.raises(RequestTooLarge, match="longer than 200 bytes"):
            await client.send(create("u" * 300))
        assert isinstance(client, Client) and client.closed
