"""The commands that talk to a running server: ``motet client``, ``motet status``
and ``motet forget``.

Both connect with the blocking client and fetch the server's status first,
which proves the token and tells the short form which names are commands and
queries and, from the message schemas, how to read each field's value. The
interactive client reconnects when the server goes away (e.g. restarts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from .credentials import client_ssl_context, read_token
from .errors import fail

if TYPE_CHECKING:
    from motet.engine import BlockingClient, EngineStatus

    from .shell import Vocabulary

__all__ = ["RECONNECT_DELAYS", "client", "forget", "format_status", "status"]

RECONNECT_DELAYS = (0.25, 1.0, 2.0)
"""Seconds the interactive client waits before each attempt to reconnect
after the connection was lost; then it gives up until the next request."""


class _NoServer(Exception):
    """The server could not be reached or refused us; the message says why."""


def client(args: argparse.Namespace) -> int:
    """Run ``motet client``: an interactive prompt on a terminal without
    REQUEST arguments, else every argument or every line of stdin as one
    request. Returns 1 when any request failed, else 0."""
    from .shell import ShellError, interactive, parse_line

    connection: BlockingClient | None
    connection, server = _connect(args)
    vocabulary = _vocabulary(server)
    try:
        if not args.requests and sys.stdin.isatty():
            session = _Session(args, connection, vocabulary)
            example = next(iter(sorted(vocabulary.queries or ())), "ping")
            greeting = (
                f"connected to {args.host}:{args.port}. Type a request (e.g. '{example} ...'), "
                "'help', 'help TYPE', Tab to complete, or Ctrl-D to quit."
            )
            try:
                return interactive(session.send, vocabulary, greeting=greeting)
            finally:
                connection = session.connection
        as_json = args.json or not args.requests
        lines = args.requests or sys.stdin
        where = "argument" if args.requests else "line"
        failures = 0
        for number, line in enumerate(lines, 1):
            try:
                request = parse_line(
                    line, vocabulary.commands, vocabulary.queries, vocabulary.messages
                )
            except ShellError as exc:
                sys.stderr.write(f"motet: error: {where} {number}: {exc}\n")
                if as_json:
                    # A script reading one reply per request gets one for this line too.
                    print(json.dumps(_refused(number, str(exc))), flush=True)
                failures += 1
                continue
            if request is None:
                continue
            # Lets a script tell which of its lines a reply answers.
            request.setdefault("id", number)
            failures += not _send_one(connection, request, args, as_json)
        return 1 if failures else 0
    finally:
        if connection is not None:
            connection.close()


def _refused(request_id: int, message: str) -> dict[str, Any]:
    """The reply line for a request that could not be understood: the one the
    server sends for a line it cannot parse (docs/design.md, code ``bad_request``)."""
    return {"id": request_id, "ok": False, "error": {"code": "bad_request", "message": message}}


def status(args: argparse.Namespace) -> int:
    """Run ``motet status``: print the server's status as a table or as JSON."""
    import msgspec

    connection, server = _connect(args)
    connection.close()
    if args.json:
        print(json.dumps(msgspec.to_builtins(server), indent=2, sort_keys=True))
        return 0
    print(format_status(server))
    return 0


def forget(args: argparse.Namespace) -> int:
    """Run ``motet forget SUBJECT``: erase the subject's personal data on the
    server; say what happened (exit 0), or why not in one line (exit 1)."""
    import msgspec

    from motet.engine import MotetError

    connection, _ = _connect(args)
    try:
        try:
            result = connection.forget(args.subject)
        except MotetError as exc:
            fail(f"cannot forget subject {args.subject!r}: {exc}")
    finally:
        connection.close()
    if args.json:
        print(json.dumps(msgspec.to_builtins(result), sort_keys=True))
        return 0
    if result.already_forgotten:
        done = "was already forgotten (nothing left to erase)"
    elif result.key_deleted:
        done = "is forgotten: its key is deleted"
    else:
        done = "is forgotten (no encrypted personal data of it was stored)"
    print(f"subject {result.subject!r} {done}; {result.stream} at position {result.position:,}")
    return 0


def format_status(server: EngineStatus) -> str:
    """The status as the table ``motet status`` prints."""
    actors = ", ".join(f"{name} {count:,}" for name, count in server.actors_by_aggregate.items())
    lines = [
        f"head position  {server.head_position:,}",
        f"durability     {server.durability}",
        f"live actors    {server.actors:,}" + (f" ({actors})" if actors else ""),
        f"\n{'projection':<20}{'state':<12}{'position':>12}{'lag events':>12}{'lag s':>9}",
    ]
    for projection in server.projections:
        lines.append(
            f"{projection.name:<20}{projection.state:<12}{projection.position:>12,}"
            f"{projection.lag_events:>12,}{projection.lag_seconds:>9.3f}"
        )
        if projection.error:
            lines.append(f"  stopped at position {projection.failed_position}: {projection.error}")
    if server.process_managers:
        lines.append(
            f"\n{'process manager':<20}{'state':<12}{'position':>12}{'lag events':>12}"
            f"{'lag s':>9}{'timers':>9}{'refused':>9}"
        )
    for manager in server.process_managers:
        lines.append(
            f"{manager.name:<20}{manager.state:<12}{manager.position:>12,}"
            f"{manager.lag_events:>12,}{manager.lag_seconds:>9.3f}{manager.pending_timers:>9,}"
            f"{manager.commands_rejected:>9,}"
        )
        if manager.error:
            lines.append(f"  stopped at position {manager.failed_position}: {manager.error}")
    if server.node is not None:
        lines.insert(3, f"node           {server.node.id} ({server.node.role})")
        lines.append(f"\n{'node':<20}{'role':<8}{'address':<24}partitions")
        for node in server.nodes:
            mark = " *" if node.id == server.node.id else ""
            lines.append(
                f"{node.id + mark:<20}{node.role:<8}{node.address or '-':<24}"
                f"{_ranges(node.partitions) or '-'}"
            )
    if server.groups:
        from .groups import format_groups

        lines.append("\n" + format_groups(server.groups))
    return "\n".join(lines)


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _vocabulary(server: EngineStatus) -> Vocabulary:
    from .messages import Messages
    from .shell import Vocabulary

    commands = set(server.commands)
    return Vocabulary(commands, set(server.queries), Messages(server.schemas, commands))


def _connect(args: argparse.Namespace) -> tuple[BlockingClient, EngineStatus]:
    """Connect and fetch the server's status (which also proves the token);
    end the command with one line saying why when that fails."""
    try:
        return _open(args)
    except _NoServer as exc:
        fail(str(exc))


def _open(args: argparse.Namespace) -> tuple[BlockingClient, EngineStatus]:
    """Connect and fetch the server's status; :class:`_NoServer` saying why not."""
    from motet.engine import ConnectionLost, MotetError, Unauthorized, connect

    def no_answer(exc: MotetError) -> _NoServer:
        # e.g. refused as overloaded, or closed by a TLS server that got plain text
        hint = " (does it serve TLS? then add --tls)" if isinstance(exc, ConnectionLost) else ""
        return _NoServer(f"{args.host}:{args.port} did not answer: {exc}{'' if args.tls else hint}")

    token = read_token(args)
    try:
        connection = connect(
            args.host, args.port, token=token, ssl_context=client_ssl_context(args)
        )
    except Unauthorized as exc:
        raise _NoServer(f"the server refused the token: {exc}") from None
    except MotetError as exc:
        raise no_answer(exc) from None
    except OSError as exc:
        raise _NoServer(_connect_failure(args, exc)) from None
    try:
        return connection, connection.status()
    except Unauthorized:
        connection.close()
        if token is None:
            raise _NoServer(
                "the server needs a token: give --token or --token-file, or set MOTET_TOKEN"
            ) from None
        raise _NoServer("the server refused the token") from None
    except MotetError as exc:
        connection.close()
        raise no_answer(exc) from None
    except BaseException:
        connection.close()
        raise


class _Session:
    """The interactive client's connection: prints replies for people (the
    status as its table) and reconnects when the connection is lost."""

    def __init__(
        self, args: argparse.Namespace, connection: BlockingClient | None, vocabulary: Vocabulary
    ) -> None:
        self.args = args
        self.connection = connection
        self.vocabulary = vocabulary

    def send(self, request: dict[str, Any], *, again: bool = False) -> bool:
        """Send ``request`` and print its reply; return whether it succeeded.
        A request whose connection is lost is sent once more after a
        reconnect (``again``), unless it is a command without a command id."""
        from motet.engine import ConnectionLost

        if request.get("op") == "subscribe":
            return _subscribe(request, self.args, as_json=False)
        if self.connection is None and not self._reconnect("not connected"):
            return False
        assert self.connection is not None
        try:
            reply = self.connection.request(request)
        except (ConnectionLost, OSError) as exc:
            if again:
                print(f"error: the connection was lost again ({exc})", flush=True)
                self.connection.close()
                self.connection = None
                return False
            if not self._reconnect(f"the connection was lost ({exc})"):
                return False
            if request.get("op") == "command" and "command_id" not in request:
                print(
                    "the command was not sent again: it may have been applied before the "
                    "connection was lost (send it with @command_id=... to retry it safely)",
                    flush=True,
                )
                return False
            return self.send(request, again=True)
        self._print(request, reply)
        return bool(reply.get("ok"))

    def _print(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        import msgspec

        from motet.engine import EngineStatus

        from .shell import format_reply

        if request.get("op") == "status" and reply.get("ok"):
            with_schemas = msgspec.convert(reply.get("result"), EngineStatus)
            print(format_status(with_schemas), flush=True)
            return
        print(format_reply(reply), flush=True)

    def _reconnect(self, why: str) -> bool:
        """Try to connect again a few times, saying so; renew the vocabulary
        (the server may have restarted with another app)."""
        where = f"{self.args.host}:{self.args.port}"
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        problem = why
        for attempt, delay in enumerate(RECONNECT_DELAYS, 1):
            print(f"{problem}; reconnecting to {where} ({attempt} of {len(RECONNECT_DELAYS)})...")
            time.sleep(delay)
            try:
                self.connection, server = _open(self.args)
            except _NoServer as exc:
                problem = str(exc)
                continue
            renewed = _vocabulary(server)
            self.vocabulary.commands = renewed.commands
            self.vocabulary.queries = renewed.queries
            self.vocabulary.messages = renewed.messages
            print(f"reconnected to {where}", flush=True)
            return True
        print(f"error: {problem}; the next request tries again", flush=True)
        return False


def _connect_failure(args: argparse.Namespace, exc: OSError) -> str:
    """Why connecting failed: a certificate this side does not trust is a TLS
    set-up problem (the server is running), anything else a server not there."""
    import ssl

    where = f"{args.host}:{args.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = f"the CA file {args.cafile}" if args.cafile else "the system's CAs"
        return (
            f"the TLS certificate of {where} is not trusted: "
            f"{exc.verify_message or exc.reason or exc}; it was checked against {trusted} "
            "and the host name: give the CA that signed it (or, self-signed, the "
            "certificate itself) with --cafile FILE, and connect by a --host the "
            "certificate names"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"cannot connect to {where}: the TLS handshake failed: {exc.reason or exc} "
            "(does the server serve TLS? it needs --tls-cert and --tls-key)"
        )
    return f"cannot connect to {where}: {exc.strerror or exc} (is 'motet serve' running there?)"


def _send_one(
    connection: BlockingClient, request: dict[str, Any], args: argparse.Namespace, as_json: bool
) -> bool:
    """Send one request and print its reply (or events); return whether it succeeded."""
    from motet.engine import MotetError

    from .shell import format_reply

    if request.get("op") == "subscribe":
        return _subscribe(request, args, as_json)
    try:
        reply = connection.request(request)
    except (MotetError, OSError) as exc:
        fail(f"the connection failed: {exc}")
    print(json.dumps(reply) if as_json else format_reply(reply), flush=True)
    return bool(reply.get("ok"))


def _subscribe(request: dict[str, Any], args: argparse.Namespace, as_json: bool) -> bool:
    """Print events until interrupted (Ctrl-C) or the server ends the subscription."""
    import msgspec
    import trio

    from motet.engine import MotetError, open_client

    from .shell import format_reply

    start = request.get("from", 0)
    if not isinstance(start, int) or start < 0:
        sys.stderr.write(f"motet: error: subscribe needs a position >= 0, got {start!r}\n")
        return False

    async def follow() -> None:
        async with open_client(
            args.host, args.port, token=read_token(args), ssl_context=client_ssl_context(args)
        ) as subscriber:
            async for event in subscriber.subscribe(start):
                reply = {"id": request.get("id"), "event": msgspec.to_builtins(event)}
                print(json.dumps(reply) if as_json else format_reply(reply), flush=True)

    try:
        trio.run(follow)
    except KeyboardInterrupt:
        return True
    except (MotetError, OSError) as exc:
        sys.stderr.write(f"motet: error: the subscription ended: {exc}\n")
        return False
    return True
