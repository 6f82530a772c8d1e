"""The request language of ``motet client`` (engine/cli/shell.py): pure functions,
no server. A line is a JSON request passed through, or a short form turned
into one; every mistake is a :class:`ShellError` that says what is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from motet.engine.cli.shell import ShellError, format_reply, parse_line
from motet.storage.errors import MotetError

COMMANDS = frozenset({"CreateUser", "UpdateUser", "DeleteUser", "PlaceOrder"})


def parse(line: str) -> dict[str, Any] | None:
    return parse_line(line, COMMANDS)


# --- nothing to send ---------------------------------------------------------------


@pytest.mark.parametrize("line", ["", "   ", "\n", "\t \n", "# a comment", "   #indented", "#"])
def test_blank_lines_and_comments_are_none(line: str) -> None:
    assert parse(line) is None


# --- JSON lines -----------------------------------------------------------------------


def test_a_json_object_is_passed_through_as_it_is() -> None:
    request = {
        "id": "mine",
        "op": "command",
        "type": "CreateUser",
        "data": {"user_id": "u1", "name": "Ann Lee", "tags": [1, 2], "city": None},
        "expected_version": 0,
        "unknown_field": True,  # the server, not the shell, judges requests
    }
    assert parse("  " + json.dumps(request) + "  \n") == request
    assert parse('{"op": "frobnicate"}') == {"op": "frobnicate"}
    assert parse("{}") == {}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"op": "ping"', r"^not valid JSON: "),
        ("{op: ping}", r"^not valid JSON: "),
        ('{"op": "ping"} trailing', r"^not valid JSON: "),
    ],
)
def test_a_broken_json_line_is_refused(line: str, message: str) -> None:
    with pytest.raises(ShellError, match=message):
        parse(line)


def test_shell_errors_are_motet_errors_and_value_errors() -> None:
    # Callers catching Motet's errors, or ValueError for bad input, also catch these.
    with pytest.raises(MotetError, match=r"^expected key=value, got 'user_id'$"):
        parse("CreateUser user_id")
    with pytest.raises(ValueError, match=r"^expected key=value, got 'user_id'$"):
        parse("CreateUser user_id")


# --- short forms of every op ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("status", {"op": "status"}),
        ("  ping  ", {"op": "ping"}),
        ("read User-u1", {"op": "read", "stream": "User-u1"}),
        ("read User-u1 3", {"op": "read", "stream": "User-u1", "from": 3}),
        ("read User-u1 3 10", {"op": "read", "stream": "User-u1", "from": 3, "limit": 10}),
        ("read 'Odd stream'", {"op": "read", "stream": "Odd stream"}),
        ("subscribe", {"op": "subscribe", "from": 0}),
        ("subscribe 42", {"op": "subscribe", "from": 42}),
        (
            "CreateUser user_id=u1 name=Ann email=ann@example.org password=pw",
            {
                "op": "command",
                "type": "CreateUser",
                "data": {
                    "user_id": "u1",
                    "name": "Ann",
                    "email": "ann@example.org",
                    "password": "pw",
                },
            },
        ),
        (
            "DeleteUser user_id=u1 @command_id=del-1 @expected_version=3",
            {
                "op": "command",
                "type": "DeleteUser",
                "data": {"user_id": "u1"},
                "command_id": "del-1",
                "expected_version": 3,
            },
        ),
        (
            "GetUserById user_id=u1 @after=42 @timeout=0.5",
            {
                "op": "query",
                "type": "GetUserById",
                "data": {"user_id": "u1"},
                "after": 42,
                "timeout": 0.5,
            },
        ),
        ("TopSpenders", {"op": "query", "type": "TopSpenders", "data": {}}),
        ("TopSpenders limit=5", {"op": "query", "type": "TopSpenders", "data": {"limit": 5}}),
    ],
)
def test_short_forms(line: str, expected: dict[str, Any]) -> None:
    assert parse(line) == expected


def test_whether_a_type_is_a_command_depends_on_the_servers_commands() -> None:
    data = {"user_id": "u1"}
    assert parse_line("DeleteUser user_id=u1", set()) == {
        "op": "query",
        "type": "DeleteUser",
        "data": data,
    }
    assert parse_line("GetUserById user_id=u1", ["GetUserById"]) == {
        "op": "command",
        "type": "GetUserById",
        "data": data,
    }


# --- values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("x=42", 42),
        ("x=-7", -7),
        ("x=4.5", 4.5),
        ("x=1e3", 1000.0),
        ("x=true", True),
        ("x=false", False),
        ("x=null", None),
        ("x='\"quoted\"'", "quoted"),
        ("x='\"42\"'", "42"),  # JSON quotes keep a number-like value a string
        ('x="Ann Lee"', "Ann Lee"),  # shell quotes hold spaces
        ("'x=Ann Lee'", "Ann Lee"),
        ("x='[1, 2, \"three\"]'", [1, 2, "three"]),
        ("x='{\"a\": 1}'", {"a": 1}),
        ("x=ann@example.org", "ann@example.org"),
        ("x=007", "007"),  # not JSON: taken as a string
        ("x=True", "True"),
        ("x=", ""),
        ("x=a=b", "a=b"),
        ("x=é-ü", "é-ü"),
    ],
)
def test_values_are_json_when_they_parse_else_strings(word: str, value: Any) -> None:
    request = parse(f"GetSomething {word}")
    assert request == {"op": "query", "type": "GetSomething", "data": {"x": value}}
    assert type(request["data"]["x"]) is type(value)


# --- @options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "GetUserById user_id=u1 @command_id=c1",
            r"^@command_id is not an option of a query; use @after, @timeout$",
        ),
        (
            "GetUserById user_id=u1 @expected_version=1",
            r"^@expected_version is not an option of a query; use @after, @timeout$",
        ),
        (
            "CreateUser user_id=u1 @after=3",
            r"^@after is not an option of a command; use @command_id, @expected_version$",
        ),
        (
            "PlaceOrder user_id=u1 @timeout=1",
            r"^@timeout is not an option of a command; use @command_id, @expected_version$",
        ),
        (
            "PlaceOrder user_id=u1 @frobnicate=1",
            r"^@frobnicate is not an option of a command; ",
        ),
    ],
)
def test_options_of_the_other_kind_are_refused_by_name(line: str, message: str) -> None:
    with pytest.raises(ShellError, match=message):
        parse(line)


def test_an_option_and_a_field_may_share_a_name() -> None:
    assert parse("GetAfter after=1 @after=2") == {
        "op": "query",
        "type": "GetAfter",
        "data": {"after": 1},
        "after": 2,
    }


# --- mistakes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("CreateUser user_id", r"^expected key=value, got 'user_id'$"),
        ("CreateUser user_id=u1 name", r"^expected key=value, got 'name'$"),
        ("CreateUser =u1", r"^expected key=value, got '=u1'$"),
        ("GetUserById user_id=u1 @=3", r"^expected key=value, got '@=3'$"),
        ("CreateUser user_id=u1 user_id=u2", r"^user_id is given twice$"),
        ("GetUserById user_id=u1 @after=1 @after=2", r"^@after is given twice$"),
        ('CreateUser name="Ann', r"^cannot split the line: No closing quotation$"),
        ("read", r"^usage: read STREAM \[FROM_VERSION\] \[LIMIT\]$"),
        ("read a 1 2 3", r"^usage: read STREAM \[FROM_VERSION\] \[LIMIT\]$"),
        ("read User-u1 x", r"^FROM_VERSION must be a whole number, got 'x'$"),
        ("read User-u1 1.5", r"^FROM_VERSION must be a whole number, got '1.5'$"),
        ("read User-u1 0 ten", r"^LIMIT must be a whole number, got 'ten'$"),
        ("read User-u1 '' 5", r"^FROM_VERSION must be a whole number, got ''$"),
        ("subscribe start", r"^FROM_POSITION must be a whole number, got 'start'$"),
        ("subscribe 1e3", r"^FROM_POSITION must be a whole number, got '1e3'$"),
        ("subscribe 1 2", r"^usage: subscribe \[FROM_POSITION\]$"),
        ("status now", r"^status takes no arguments$"),
        ("ping 1", r"^ping takes no arguments$"),
    ],
)
def test_mistakes_are_shell_errors_naming_the_problem(line: str, message: str) -> None:
    with pytest.raises(ShellError, match=message):
        parse(line)


# --- format_reply -------------------------------------------------------------------------------


def test_format_a_result_as_sorted_indented_json() -> None:
    reply = {"id": 1, "ok": True, "result": {"stream": "User-u1", "version": 1, "position": 7}}
    assert format_reply(reply) == '{\n  "position": 7,\n  "stream": "User-u1",\n  "version": 1\n}'
    assert format_reply({"id": None, "ok": True, "result": "pong"}) == '"pong"'
    assert format_reply({"id": None, "ok": True, "result": [1, 2]}) == "[\n  1,\n  2\n]"
    assert format_reply({"id": None, "ok": True, "result": None}) == "null"


def test_format_an_error_as_its_code_and_message() -> None:
    reply = {"id": 3, "ok": False, "error": {"code": "not_found", "message": "no user 'u9'"}}
    assert format_reply(reply) == "error [not_found]: no user 'u9'"
    conflict = {
        "id": 4,
        "ok": False,
        "error": {
            "code": "conflict",
            "message": "expected version 7 of User-u1, found 1",
            "stream": "User-u1",
            "expected": 7,
            "actual": 1,
        },
    }
    assert format_reply(conflict) == "error [conflict]: expected version 7 of User-u1, found 1"
    assert format_reply({"id": 5, "ok": False, "error": {}}).startswith("error [?]: ")


def test_format_an_event_on_one_line() -> None:
    reply = {
        "id": 9,
        "event": {
            "position": 43,
            "stream": "User-u1",
            "version": 2,
            "type": "OrderPlaced",
            "time": "2024-01-01T00:00:00Z",
            "data": {"order_id": "o1", "amount": 12.5},
        },
    }
    assert format_reply(reply) == (
        'event 43  User-u1 v2  OrderPlaced  {"amount": 12.5, "order_id": "o1"}'
    )


def test_a_parsed_request_round_trips_through_json() -> None:
    # What the client sends is the parsed dict, encoded as JSON.
    line = 'UpdateUser user_id=u1 city="New York" @expected_version=2 @command_id=up-1'
    request = parse(line)
    assert json.loads(json.dumps(request)) == request
    assert parse(json.dumps(request)) == request


def test_an_unknown_type_is_refused_locally_when_the_queries_are_known() -> None:
    with pytest.raises(
        ShellError, match=r"unknown request 'Bogus'; commands: PlaceOrder; queries: GetUserById"
    ):
        parse_line("Bogus x=1", {"PlaceOrder"}, {"GetUserById"})
    assert parse_line("GetUserById user_id=u1", {"PlaceOrder"}, {"GetUserById"}) == {
        "op": "query",
        "type": "GetUserById",
        "data": {"user_id": "u1"},
    }
