"""Reading short-form values by the field's JSON Schema (engine/cli/messages.py
through parse_line), describing types and completing names: pure functions
over the schemas a real engine builds for its status reply."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec
import pytest

from motet.engine.cli.messages import Messages, plain_text
from motet.engine.cli.shell import ShellError, Vocabulary, complete, describe, parse_line
from motet.engine.status import message_schemas


class Note(msgspec.Struct, frozen=True):
    text: str


class Record(msgspec.Struct, frozen=True, kw_only=True, tag="Record"):
    """Record one ``thing``; see :class:`~motet.engine.App`."""

    key: str
    number: int
    ratio: float
    flag: bool
    maybe: int | None = None
    either: int | str = 0
    tags: list[str] = []
    note: Note | None = None
    when: datetime | None = None
    size: Literal["s", "m"] = "s"


class Lookup(msgspec.Struct, frozen=True, kw_only=True, tag="Lookup"):
    key: str


SCHEMAS = message_schemas({"Record": Record}, {"Lookup": Lookup})
COMMANDS = {"Record"}
MESSAGES = Messages(SCHEMAS, COMMANDS)
VOCABULARY = Vocabulary(COMMANDS, {"Lookup"}, MESSAGES)
BASE = {"key": "k", "number": "1", "ratio": "1", "flag": "false"}


def data(words: str) -> dict[str, Any]:
    """The data of ``Record WORDS``, with the required fields WORDS leaves out."""
    given = {word.partition("=")[0] for word in words.split()}
    rest = " ".join(f"{name}={text}" for name, text in BASE.items() if name not in given)
    request = parse_line(f"Record {rest} {words}", COMMANDS, {"Lookup"}, MESSAGES)
    assert request is not None
    return request["data"]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("key=1", {"key": "1"}),
        ("key=true", {"key": "true"}),
        ("key=null", {"key": "null"}),
        ("key='\"x\"'", {"key": '"x"'}),  # a text field takes the text as it is
        ("number=-7 ratio=2.5 flag=true", {"number": -7, "ratio": 2.5, "flag": True}),
        ("maybe=null", {"maybe": None}),
        ("maybe=3", {"maybe": 3}),
        ("either=3", {"either": "3"}),  # text wins when the field also takes text
        ("either=abc", {"either": "abc"}),
        ('tags=\'["a", "b"]\'', {"tags": ["a", "b"]}),
        ('note=\'{"text": "hi"}\'', {"note": {"text": "hi"}}),  # a struct: JSON look
        ("note=null", {"note": None}),
        ("when=2024-01-01T00:00:00Z", {"when": "2024-01-01T00:00:00Z"}),
        ("size=m", {"size": "m"}),
    ],
)
def test_values_are_read_by_the_fields_type(words: str, expected: dict[str, Any]) -> None:
    got = data(words)
    for name, value in expected.items():
        assert got[name] == value
        assert type(got[name]) is type(value)
    msgspec.convert({"type": "Record", **got}, Record)  # and the server takes them


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("number=1.5", "number must be a whole number, got '1.5'"),
        ("number=007", "number must be a whole number, got '007'"),
        ("number=null", "number must be a whole number, got 'null'"),
        ("ratio=abc", "ratio must be a number, got 'abc'"),
        ("flag=yes", "flag must be true or false, got 'yes'"),
        ("maybe=x", "maybe must be a whole number or null, got 'x'"),
        ("tags=a", "tags must be a JSON array such as [1, 2], got 'a'"),
        ("size=xl", "size must be one of 'm', 's', got 'xl'"),
        ("@expected_version=last", "@expected_version must be a whole number, got 'last'"),
        ("nmber=1", "Record has no field 'nmber' (did you mean 'number'?); fields: key, "),
    ],
)
def test_a_value_that_does_not_fit_says_what_to_write(words: str, message: str) -> None:
    with pytest.raises(ShellError) as caught:
        data(words)
    assert str(caught.value).startswith(message)


def test_options_have_their_own_types() -> None:
    request = parse_line("Record key=k @command_id=1001 @expected_version=2", COMMANDS)
    assert request is not None
    assert (request["command_id"], request["expected_version"]) == ("1001", 2)
    request = parse_line("Lookup key=k @after=3 @timeout=1", COMMANDS, None, MESSAGES)
    assert request is not None and (request["after"], request["timeout"]) == (3, 1)


def test_without_schemas_values_are_read_by_their_look() -> None:
    assert parse_line("Other x=1 y=abc", set(), None, Messages({})) == {
        "op": "query",
        "type": "Other",
        "data": {"x": 1, "y": "abc"},
    }


def test_describe_and_complete() -> None:
    text = describe(VOCABULARY, "record")
    assert text.startswith("Record (command)\n  Record one thing; see App.\n")
    assert "Usage: Record key=STR number=INT ratio=FLOAT flag=BOOL [maybe=INT]" in text
    assert "[size=m|s]" in text
    with pytest.raises(ShellError, match=r"^no request type 'Lokup' \(did you mean 'Lookup'\?\)"):
        describe(VOCABULARY, "Lokup")
    assert complete(VOCABULARY, "Lo", "Lo") == ["Lookup "]
    assert sorted(complete(VOCABULARY, "s", "s")) == ["status ", "subscribe "]
    assert complete(VOCABULARY, "Record key=1 n", "n") == ["number=", "note="]
    assert complete(VOCABULARY, "Lookup key=1 ", "") == ["@after=", "@timeout="]
    assert complete(VOCABULARY, "help R", "R") == ["Record "]
    assert complete(VOCABULARY, "Nope ", "") == []


def test_plain_text() -> None:
    assert plain_text("``a`` and :func:`decide` and :class:`~x.y.Z`") == "a and decide and Z"
