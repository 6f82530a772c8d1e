"""The request language of ``motet client`` (raw JSON lines or a short form)
and its interactive prompt.

A line is either a JSON request object, sent as it is (an ``id`` is added
when missing), or a short form::

    CreateUser user_id=u1 name="Ann Lee" email=ann@example.org password=pw
    GetUserById user_id=u1 @after=42
    TopSpenders limit=5
    read User-u1 [from] [limit]
    subscribe [from]
    status
    ping

``TYPE key=value ...`` is a command when the server lists ``TYPE`` among its
commands, else a query. A value is read by the field's type in the message
schemas the server sends with its status (:mod:`motet.engine.cli.messages`):
a text field takes the text as it is (``item_id=1`` is ``"1"``), a number,
bool or optional field parses (``42``, ``4.5``, ``true``, ``null``), and a
value that cannot be one says what to write. A field whose type is not known
is read as JSON when it parses, else as text. Keys starting with ``@`` are
options of the request rather than fields of the message: ``@command_id``,
``@expected_version`` for commands, ``@after`` and ``@timeout`` for queries.

At the prompt, ``help`` (or ``?``) lists this server's commands and queries
and the short form, ``help TYPE`` a type's fields; Tab completes request and
field names; ``quit``, ``exit`` or Ctrl-D leaves; the history is kept in
``~/.motet_history``, without the lines that give a password or a token.
"""

from __future__ import annotations

import difflib
import json
import shlex
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motet.storage.errors import MotetError

from .messages import Field, Messages, json_look

__all__ = [
    "HISTORY_FILE",
    "HISTORY_LENGTH",
    "ShellError",
    "Vocabulary",
    "complete",
    "describe",
    "format_reply",
    "help_text",
    "interactive",
    "parse_line",
    "suggest",
]

HISTORY_FILE = "~/.motet_history"
"""Where the interactive prompt keeps the lines typed, across sessions."""

HISTORY_LENGTH = 1_000
"""How many lines of history the prompt keeps."""

_COMMAND_OPTIONS = {"command_id", "expected_version"}
_QUERY_OPTIONS = {"after", "timeout"}
# The options' types, so that ``@command_id=1001`` is the text "1001".
_OPTION_FIELDS = {
    name: Field(f"@{name}", {"type": kind}, False, {})
    for name, kind in (
        ("command_id", "string"),
        ("expected_version", "integer"),
        ("after", "integer"),
        ("timeout", "number"),
    )
}
_BUILTINS = ("read", "subscribe", "status", "ping", "help", "quit", "exit")


class ShellError(MotetError, ValueError):
    """A line of the request language could not be understood: the user's
    fault; the message says what is wrong."""


@dataclass
class Vocabulary:
    """What one server understands: its command and query tags and their
    schemas. The interactive client renews it after a reconnect."""

    commands: set[str] = field(default_factory=set)
    queries: set[str] | None = None
    messages: Messages = field(default_factory=lambda: Messages({}))

    def names(self) -> list[str]:
        """Every request type, sorted."""
        return sorted(self.commands | (self.queries or set()))


def suggest(word: str, names: Iterable[str]) -> str | None:
    """The name ``word`` was probably meant to be (the same but for case, or
    a close spelling), or ``None``."""
    names = list(names)
    for name in names:
        if name.lower() == word.lower():
            return name
    close = difflib.get_close_matches(word.lower(), [name.lower() for name in names], n=1)
    if close:
        return next(name for name in names if name.lower() == close[0])
    return None


def _did_you_mean(word: str, names: Iterable[str]) -> str:
    guess = suggest(word, names)
    return f" (did you mean {guess!r}?)" if guess else ""


def _read(field_: Field | None, text: str) -> Any:
    if field_ is None:
        return json_look(text)
    try:
        return field_.read(text)
    except ValueError as exc:
        raise ShellError(str(exc)) from None


def _pairs(
    words: list[str], fields: dict[str, Field] | None = None, tag: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    data: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for word in words:
        key, equals, text = word.partition("=")
        if not equals or not key or key == "@":
            raise ShellError(f"expected key=value, got {word!r}")
        target = options if key.startswith("@") else data
        name = key.removeprefix("@")
        if name in target:
            raise ShellError(f"{key} is given twice")
        if target is options:
            target[name] = _read(_OPTION_FIELDS.get(name), text)
        elif fields is None:
            target[name] = json_look(text)
        elif name not in fields:
            raise ShellError(
                f"{tag} has no field {name!r}{_did_you_mean(name, fields)}; "
                f"fields: {', '.join(fields) or 'none'}"
            )
        else:
            target[name] = _read(fields[name], text)
    return data, options


def _number(word: str, what: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise ShellError(f"{what} must be a whole number, got {word!r}") from None


def parse_line(
    line: str,
    commands: Collection[str],
    queries: Collection[str] | None = None,
    messages: Messages | None = None,
) -> dict[str, Any] | None:
    """Turn one line into a request object (without ``id``); ``None`` for a
    blank line or a comment. ``commands`` (and, when known, ``queries``) are
    the server's message tags; ``messages`` their schemas, which say how to
    read each value. Raises :class:`ShellError` naming the problem."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise ShellError(f"not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ShellError("a JSON request must be an object")
        return parsed
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ShellError(f"cannot split the line: {exc}") from None
    head, rest = words[0], words[1:]
    if head in ("status", "ping"):
        if rest:
            raise ShellError(f"{head} takes no arguments")
        return {"op": head}
    if head == "read":
        if not 1 <= len(rest) <= 3:
            raise ShellError("usage: read STREAM [FROM_VERSION] [LIMIT]")
        request: dict[str, Any] = {"op": "read", "stream": rest[0]}
        if len(rest) > 1:
            request["from"] = _number(rest[1], "FROM_VERSION")
        if len(rest) > 2:
            request["limit"] = _number(rest[2], "LIMIT")
        return request
    if head == "subscribe":
        if len(rest) > 1:
            raise ShellError("usage: subscribe [FROM_POSITION]")
        return {"op": "subscribe", "from": _number(rest[0], "FROM_POSITION") if rest else 0}
    if queries is not None and head not in commands and head not in queries:
        raise ShellError(
            f"unknown request {head!r}{_did_you_mean(head, [*commands, *queries])}; "
            f"commands: {', '.join(sorted(commands)) or 'none'}; "
            f"queries: {', '.join(sorted(queries)) or 'none'}; "
            "or read, subscribe, status, ping, JSON"
        )
    message = messages.get(head) if messages is not None else None
    data, options = _pairs(rest, message.fields if message else None, head)
    is_command = head in commands
    allowed = _COMMAND_OPTIONS if is_command else _QUERY_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        kind = "command" if is_command else "query"
        raise ShellError(
            f"@{unknown[0]} is not an option of a {kind}; use "
            + ", ".join(f"@{name}" for name in sorted(allowed))
        )
    return {"op": "command" if is_command else "query", "type": head, "data": data, **options}


def format_reply(reply: dict[str, Any]) -> str:
    """A reply for people: the result as indented JSON, or ``error [code]: message``."""
    if "event" in reply:
        event = reply["event"]
        return (
            f"event {event.get('position')}  {event.get('stream')} v{event.get('version')}  "
            f"{event.get('type')}  {json.dumps(event.get('data'), sort_keys=True)}"
        )
    if reply.get("ok"):
        return json.dumps(reply.get("result"), indent=2, sort_keys=True)
    error = reply.get("error") or {}
    return f"error [{error.get('code', '?')}]: {error.get('message', reply)}"


_SHORT_FORM = """\
Short form: TYPE field=value ... [@option=value ...]
  Each value is read by the field's type: a text field takes the text as it
  is (quote spaces: name="Ann Lee"), a number or true/false parses, null
  leaves an optional field empty. Where the server does not say a type, a
  value is JSON when it parses ([1, 2], 4.5), else text.
  Options: @command_id, @expected_version (commands); @after, @timeout (queries).
Other requests:
  read STREAM [FROM_VERSION] [LIMIT]   the events of one stream
  subscribe [FROM_POSITION]            follow the log until Ctrl-C
  status                               the server's status
  ping                                 is the server there?
  {"op": ...}                          a JSON request, sent as it is
At the prompt: help TYPE shows a type's fields, Tab completes names,
quit, exit or Ctrl-D leaves; the history is kept in ~/.motet_history."""


def help_text(vocabulary: Vocabulary) -> str:
    """What ``help`` prints: this server's commands and queries, and the
    short form, in plain text."""
    lines = []
    for kind, tags in (("Commands", vocabulary.commands), ("Queries", vocabulary.queries)):
        if tags is None:
            continue
        lines.append(f"{kind} of this server:")
        for tag in sorted(tags) or ["(none)"]:
            message = vocabulary.messages.get(tag)
            summary = message.description.split("\n", 1)[0] if message else ""
            lines.append(f"  {tag:<22}{summary}".rstrip())
    lines.append("Type 'help TYPE' for a type's fields.")
    return "\n".join([*lines, "", _SHORT_FORM])


def describe(vocabulary: Vocabulary, name: str) -> str:
    """What ``help TYPE`` prints: the type's description and its fields with
    their types and defaults. Raises :class:`ShellError` for an unknown name,
    with a guess of what was meant."""
    names = vocabulary.names()
    tag = name if name in names else None
    if tag is None:
        guess = suggest(name, names)
        if guess is not None and guess.lower() == name.lower():
            tag = guess
    if tag is None:
        raise ShellError(
            f"no request type {name!r}{_did_you_mean(name, names)}; "
            f"known: {', '.join(names) or 'none'}"
        )
    kind = "command" if tag in vocabulary.commands else "query"
    options = _COMMAND_OPTIONS if kind == "command" else _QUERY_OPTIONS
    message = vocabulary.messages.get(tag)
    if message is None:
        return f"{tag} ({kind}): the server does not describe its fields"
    lines = [f"{tag} ({kind})"]
    if message.description:
        lines.extend(f"  {line}" for line in message.description.splitlines())
    lines.append("Fields:" if message.fields else "Fields: none")
    for field_ in message.fields.values():
        default = field_.schema.get("default", ...)
        if field_.required:
            note = "required"
        elif default is ...:
            note = "optional"
        else:
            note = f"default {json.dumps(default)}"
        lines.append(f"  {field_.name:<20}{field_.type_name:<20}{note}")
    lines.append(f"Usage: {message.usage()}")
    lines.append("Options: " + ", ".join(f"@{option}" for option in sorted(options)))
    return "\n".join(lines)


def complete(vocabulary: Vocabulary, line: str, word: str) -> list[str]:
    """The completions of ``word``, the last (partial) word of ``line``: a
    request name first, then the request's field names (``name=``) and
    options (``@after=``), or a type name after ``help``."""
    before = line[: len(line) - len(word)].split()
    if not before:
        candidates = [*vocabulary.names(), *_BUILTINS]
        return [name + " " for name in candidates if name.startswith(word)]
    head = before[0]
    if head in ("help", "?") and len(before) == 1:
        return [name + " " for name in vocabulary.names() if name.startswith(word)]
    if head not in vocabulary.commands and head not in (vocabulary.queries or ()):
        return []
    given = {part.partition("=")[0] for part in before[1:]}
    message = vocabulary.messages.get(head)
    options = _COMMAND_OPTIONS if head in vocabulary.commands else _QUERY_OPTIONS
    keys = [*(message.fields if message else ()), *(f"@{option}" for option in sorted(options))]
    return [key + "=" for key in keys if key.startswith(word) and key not in given]


def _install_completion(readline: Any, vocabulary: Vocabulary) -> None:
    """Tab completes request and field names (readline, or libedit's emulation)."""
    matches: list[str] = []

    def completer(word: str, state: int) -> str | None:
        if state == 0:
            matches[:] = complete(
                vocabulary, readline.get_line_buffer()[: readline.get_endidx()], word
            )
        return matches[state] if state < len(matches) else None

    readline.set_completer(completer)
    readline.set_completer_delims(" \t\n")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")


def interactive(
    send: Callable[[dict[str, Any]], object],
    vocabulary: Vocabulary,
    *,
    greeting: str,
) -> int:
    """Read requests at a ``motet>`` prompt with line editing, completion and
    history, and hand each one to ``send`` (which prints the reply and may
    renew ``vocabulary`` after a reconnect) until Ctrl-D, ``quit`` or
    ``exit``; return the exit status, 0. A line that cannot be understood
    prints ``error: ...`` and the prompt goes on; Ctrl-C abandons the line."""
    try:
        import readline
    except ImportError:  # not on every platform; the prompt works without history
        readline = None  # type: ignore[assignment]
    from .history import forget_if_secret, load_history, save_history

    history = Path(HISTORY_FILE).expanduser()
    if readline is not None:
        load_history(readline, history)
        _install_completion(readline, vocabulary)
    print(greeting, flush=True)
    try:
        while True:
            try:
                line = input("motet> ")
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print()
                continue
            if readline is not None:
                forget_if_secret(readline, line)
            if line.strip() in ("quit", "exit"):
                return 0
            try:
                words = line.split()
                if words and words[0] in ("help", "?"):
                    if len(words) > 2:
                        raise ShellError("usage: help [TYPE]")
                    text = describe(vocabulary, words[1]) if len(words) == 2 else None
                    print(text or help_text(vocabulary), flush=True)
                    continue
                request = parse_line(
                    line, vocabulary.commands, vocabulary.queries, vocabulary.messages
                )
            except ShellError as exc:
                print(f"error: {exc}", flush=True)
                continue
            if request is not None:
                send(request)
    finally:
        if readline is not None:
            save_history(readline, history, HISTORY_LENGTH)
