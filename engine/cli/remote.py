"""The commands that talk to a running server: ``motet client`` and ``motet status``.

Both connect with the blocking client and fetch the server's status first,
which proves the token and tells the short form which names are commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from .credentials import client_ssl_context, read_token
from .errors import fail

if TYPE_CHECKING:
    from motet.engine import BlockingClient, EngineStatus

__all__ = ["client", "status"]


def client(args: argparse.Namespace) -> int:
    """Run ``motet client``: an interactive prompt on a terminal without
    REQUEST arguments, else every argument or every line of stdin as one
    request. Returns 1 when any request failed, else 0."""
    from .shell import ShellError, interactive, parse_line

    connection, server = _connect(args)
    try:
        commands = set(server.commands)
        queries = set(server.queries)
        if not args.requests and sys.stdin.isatty():
            greeting = (
                f"connected to {args.host}:{args.port}. Type a request (JSON or e.g. "
                "'GetUserById user_id=u1'), 'help', or Ctrl-D to quit."
            )
            return interactive(
                lambda request: _send_one(connection, request, args, as_json=False),
                commands,
                queries,
                greeting=greeting,
            )
        as_json = args.json or not args.requests
        lines = args.requests or sys.stdin
        where = "argument" if args.requests else "line"
        failures = 0
        for number, line in enumerate(lines, 1):
            try:
                request = parse_line(line, commands, queries)
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
    print(f"head position  {server.head_position:,}")
    print(f"durability     {server.durability}")
    actors = ", ".join(f"{name} {count:,}" for name, count in server.actors_by_aggregate.items())
    print(f"live actors    {server.actors:,}" + (f" ({actors})" if actors else ""))
    print(f"\n{'projection':<20}{'state':<12}{'position':>12}{'lag events':>12}{'lag s':>9}")
    for projection in server.projections:
        print(
            f"{projection.name:<20}{projection.state:<12}{projection.position:>12,}"
            f"{projection.lag_events:>12,}{projection.lag_seconds:>9.3f}"
        )
        if projection.error:
            print(f"  stopped at position {projection.failed_position}: {projection.error}")
    return 0


def _connect(args: argparse.Namespace) -> tuple[BlockingClient, EngineStatus]:
    """Connect and fetch the server's status (which also proves the token)."""
    from motet.engine import ConnectionLost, MotetError, Unauthorized, connect

    def no_answer(exc: MotetError) -> NoReturn:
        # e.g. refused as overloaded, or closed by a TLS server that got plain text
        hint = " (does it serve TLS? then add --tls)" if isinstance(exc, ConnectionLost) else ""
        fail(f"{args.host}:{args.port} did not answer: {exc}{'' if args.tls else hint}")

    token = read_token(args)
    try:
        connection = connect(
            args.host, args.port, token=token, ssl_context=client_ssl_context(args)
        )
    except Unauthorized as exc:
        fail(f"the server refused the token: {exc}")
    except MotetError as exc:
        no_answer(exc)
    except OSError as exc:
        fail(_connect_failure(args, exc))
    try:
        return connection, connection.status()
    except Unauthorized:
        connection.close()
        if token is None:
            fail("the server needs a token: give --token or --token-file, or set MOTET_TOKEN")
        fail("the server refused the token")
    except MotetError as exc:
        connection.close()
        no_answer(exc)
    except BaseException:
        connection.close()
        raise


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
