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
commands, else a query. A value is read as JSON when it parses (``42``,
``4.5``, ``true``, ``null``, ``"quoted"``, ``[1, 2]``), else taken as a
string. Keys starting with ``@`` are options of the request rather than
fields of the message: ``@command_id``, ``@expected_version`` for commands,
``@after`` and ``@timeout`` for queries.

At the prompt, ``help`` (or ``?``) shows this text, ``quit``, ``exit`` or
Ctrl-D leaves; the history is kept in ``~/.motet_history``, without the lines
that give a password or a token.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from motet.storage.errors import MotetError

__all__ = [
    "HISTORY_FILE",
    "HISTORY_LENGTH",
    "ShellError",
    "format_reply",
    "interactive",
    "parse_line",
]

HISTORY_FILE = "~/.motet_history"
"""Where the interactive prompt keeps the lines typed, across sessions."""

HISTORY_LENGTH = 1_000
"""How many lines of history the prompt keeps."""

_COMMAND_OPTIONS = {"command_id", "expected_version"}
_QUERY_OPTIONS = {"after", "timeout"}


class ShellError(MotetError, ValueError):
    """A line of the request language could not be understood: the user's
    fault; the message says what is wrong."""


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(words: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
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
        target[name] = _value(text)
    return data, options


def _number(word: str, what: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise ShellError(f"{what} must be a whole number, got {word!r}") from None


def parse_line(
    line: str, commands: Collection[str], queries: Collection[str] | None = None
) -> dict[str, Any] | None:
    """Turn one line into a request object (without ``id``); ``None`` for a
    blank line or a comment. ``commands`` (and, when known, ``queries``) are
    the server's message tags. Raises :class:`ShellError` naming the problem."""
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
            f"unknown request {head!r}; commands: {', '.join(sorted(commands)) or 'none'}; "
            f"queries: {', '.join(sorted(queries)) or 'none'}; "
            "or read, subscribe, status, ping, JSON"
        )
    data, options = _pairs(rest)
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


def interactive(
    send: Callable[[dict[str, Any]], object],
    commands: Collection[str],
    queries: Collection[str] | None = None,
    *,
    greeting: str,
) -> int:
    """Read requests at a ``motet>`` prompt with line editing and history, and
    hand each one to ``send`` (which prints the reply) until Ctrl-D, ``quit``
    or ``exit``; return the exit status, 0. A line that cannot be understood
    prints ``error: ...`` and the prompt goes on; Ctrl-C abandons the line."""
    try:
        import readline
    except ImportError:  # not on every platform; the prompt works without history
        readline = None  # type: ignore[assignment]
    from .history import forget_if_secret, load_history, save_history

    history = Path(HISTORY_FILE).expanduser()
    if readline is not None:
        load_history(readline, history)
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
            if line.strip() in ("help", "?"):
                print(__doc__)
                print("Commands of this server:", ", ".join(sorted(commands)) or "none")
                continue
            if line.strip() in ("quit", "exit"):
                return 0
            try:
                request = parse_line(line, commands, queries)
            except ShellError as exc:
                print(f"error: {exc}", flush=True)
                continue
            if request is not None:
                send(request)
    finally:
        if readline is not None:
            save_history(readline, history, HISTORY_LENGTH)
