"""The ``motet`` command line: its parser and its entry point, :func:`main`.

``motet serve`` runs the TCP server (docs/design.md, "CLI"); ``motet client`` talks
to it (interactive, one-shot from arguments, or line by line from standard
input); ``motet status`` prints a server's status; ``motet inspect`` reads a
data directory offline; ``motet verify`` checks one, ``motet backup`` and
``restore`` copy one, ``motet export`` and ``import`` move a log as NDJSON;
``motet demo`` runs a short scripted session of the example app through the
embedded API.

Each command lives in a module of its own and is imported only when it runs,
so ``--help``, ``--version`` and usage errors import nothing of the engine. A user
mistake is one line on stderr and a non-zero exit status, never a traceback:
2 for usage errors, 1 for everything else (see :mod:`.errors`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .apps import DEFAULT_APP
from .errors import USAGE, Exit

__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_HOST",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_PORT",
    "main",
    "version",
]

DEFAULT_DATA = "./motet-data"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7707
DEFAULT_METRICS_PORT = 9707

_BENCHMARKS = (
    "the benchmarks run from a source checkout: 'python -m benchmarks.seed_workload' "
    "(or 'make bench'); see benchmarks/README.md"
)

# Commands this program once had, and where to go instead.
_MOVED = {"bench": _BENCHMARKS}


def version() -> str:
    """The installed distribution's version, or a sentence saying it is unknown."""
    import importlib.metadata

    try:
        return importlib.metadata.version("motet")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown: the motet package is not installed; try 'pip install -e .')"


class _Parser(argparse.ArgumentParser):
    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise Exit(status, message)

    def error(self, message: str) -> NoReturn:
        # One line, without argparse's usage dump.
        self.exit(USAGE, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


class _VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        print(f"motet {version()}", flush=True)
        parser.exit()


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port must be a number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port must be between 0 and 65535, got {port}")
    return port


def _count(text: str) -> int:
    """A whole number >= 1 (``--max-actors``, ``--max-connections``...)."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {count}")
    return count


def _seconds(text: str) -> float:
    """A finite number of seconds > 0 (``--passivate-after``)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return seconds


_BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _bytes(text: str) -> int:
    """A number of bytes >= 1, plain or with a binary suffix: ``65536``,
    ``64K``, ``4M``, ``1G`` (``KiB``, ``MiB``, ``GiB`` too)."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in ("K", "M", "G") else ""
    digits = number[: len(number) - len(unit)].strip()
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(
            f"must be a number of bytes such as 65536, 64K or 4M, got {text!r}"
        )
    size = int(digits) * _BYTE_UNITS[unit]
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 byte, got {text!r}")
    return size


_VISIBLE = (
    "; a value given here is visible to every local user in /proc/PID/cmdline (ps): "
    "prefer {file} or ${variable}"
)


def _token_options(parser: argparse.ArgumentParser, *, serving: bool = False) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--token",
        help=(
            "the full-access token: every request needs it (or the client token)"
            if serving
            else "the token to authenticate with, full-access or client"
        )
        + " (default: $MOTET_TOKEN if set)"
        + _VISIBLE.format(file="--token-file", variable="MOTET_TOKEN"),
    )
    group.add_argument("--token-file", metavar="FILE", help="read the token from FILE")
    if not serving:
        return
    client = parser.add_mutually_exclusive_group()
    client.add_argument(
        "--client-token",
        help="a second token that may only send commands, queries, status and ping, "
        "not read streams, subscribe or control projections (default: $MOTET_CLIENT_TOKEN "
        "if set)" + _VISIBLE.format(file="--client-token-file", variable="MOTET_CLIENT_TOKEN"),
    )
    client.add_argument(
        "--client-token-file", metavar="FILE", help="read the client token from FILE"
    )
    metrics = parser.add_mutually_exclusive_group()
    metrics.add_argument(
        "--metrics-token",
        help="a token that may only read /metrics (give it to Prometheus); with it or "
        "--token, /metrics needs 'Authorization: Bearer' with the full-access or the "
        "metrics token (default: $MOTET_METRICS_TOKEN if set)"
        + _VISIBLE.format(file="--metrics-token-file", variable="MOTET_METRICS_TOKEN"),
    )
    metrics.add_argument(
        "--metrics-token-file", metavar="FILE", help="read the metrics token from FILE"
    )


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="server address (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="server port (default: %(default)s)"
    )
    _token_options(parser)
    parser.add_argument(
        "--tls", action="store_true", help="speak TLS (the server runs with --tls-cert)"
    )
    parser.add_argument(
        "--cafile", metavar="FILE", help="CA certificate to trust for --tls (default: the system's)"
    )


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the TCP server (newline-delimited JSON) with an app",
        description="Serve an app over the TCP line protocol, with Prometheus metrics. "
        "SIGTERM or SIGINT stops accepting, finishes requests in flight, saves read models "
        "and closes the store, then exits 0.",
    )
    serve.add_argument(
        "--data", default=DEFAULT_DATA, help="store directory (default: %(default)s)"
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        help="the store instead of --data: a postgresql:// URL (needs motet[postgres]), "
        "'memory:' or a directory",
    )
    serve.add_argument(
        "--app", default=DEFAULT_APP, help="the App to serve, as MODULE:ATTR (default: %(default)s)"
    )
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default: %(default)s; another address needs --token, "
        "and TLS when the network is not trusted)",
    )
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help="(default: %(default)s)")
    serve.add_argument(
        "--metrics-port",
        type=_port,
        default=DEFAULT_METRICS_PORT,
        help="port of the Prometheus /metrics endpoint (default: %(default)s)",
    )
    serve.add_argument(
        "--metrics-host",
        default=DEFAULT_HOST,
        help="address of the metrics endpoint (default: %(default)s)",
    )
    serve.add_argument("--no-metrics", action="store_true", help="serve no /metrics endpoint")
    serve.add_argument(
        "--http-port",
        type=_port,
        default=None,
        help="also serve the HTTP/JSON API and the admin page on this port, on --host, "
        "with the same token and TLS (default: off)",
    )
    serve.add_argument(
        "--role",
        choices=("writer", "reader"),
        default="writer",
        help="writer: take commands and append (default; one per LMDB store, any number "
        "of --node-id nodes on PostgreSQL); reader: follow the log another process writes "
        "(--data opened read-only beside its writer, or --store postgresql://...) and serve "
        "queries, reads, subscriptions and status (commands answer 'unavailable')",
    )
    serve.add_argument(
        "--durability",
        choices=("sync", "none"),
        default="sync",
        help="sync: fsync before every Ack (default); none: no fsync",
    )
    serve.add_argument(
        "--node-id",
        metavar="ID",
        help="run as node ID of a cluster sharing a --store postgresql://... URL: a writer "
        "owns the aggregates of the partitions it holds leases on and forwards other "
        "commands to their owners; ids must be unique among the store's nodes",
    )
    serve.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="the address other nodes forward commands to (default: --host:--port, with "
        "this host's name for a wildcard --host)",
    )
    serve.add_argument(
        "--lease-ttl",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="a node's partitions go to the others this long after its last renewal "
        "(renewed every 0.3 x this; default: %(default)s)",
    )
    serve.add_argument(
        "--commit-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="PostgreSQL: how long a commit may wait for a synchronous standby before its "
        "commands are refused as unavailable (default 10)",
    )
    serve.add_argument(
        "--partitions",
        type=_count,
        default=None,
        metavar="N",
        help="partitions of a new PostgreSQL store (fixed at creation; default 64)",
    )
    _token_options(serve, serving=True)
    serve.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    serve.add_argument(
        "--peer-cafile",
        metavar="FILE",
        help="with --node-id and --tls-cert: the CA certificate that signed the other nodes' "
        "certificates, trusted when forwarding commands to them (default: the system's CAs)",
    )
    _limit_options(serve)
    serve.add_argument(
        "--max-actors",
        type=_count,
        default=100_000,
        metavar="N",
        help="live aggregate actors at most; idle ones beyond stop first (default: %(default)s)",
    )
    serve.add_argument(
        "--passivate-after",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="stop an aggregate actor idle this long (default: %(default)s)",
    )
    serve.add_argument(
        "--allow-hard-delete",
        action="store_true",
        help="let clients with the full-access token remove a stream's events "
        "(delete_stream with hard); without it only tombstones can be written",
    )
    serve.add_argument(
        "--retention-every",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="apply the app's retention this often, in the writer's thread (default: only "
        "on 'motet retention')",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="(default: %(default)s)",
    )


def _limit_options(serve: argparse.ArgumentParser) -> None:
    """The line protocol server's connection limits (``serve_engine``'s
    options of the same names) and the metrics port's connection cap."""
    limits = serve.add_argument_group(
        "connection limits", "how much and how long clients can make the servers hold"
    )
    limits.add_argument(
        "--max-connections",
        type=_count,
        default=1000,
        metavar="N",
        help="connections at once, on the line protocol and on --http-port; a new one "
        "beyond gets 'overloaded' and is closed (default: %(default)s)",
    )
    limits.add_argument(
        "--max-unauthenticated",
        type=_count,
        default=100,
        metavar="N",
        help="connections still in their TLS handshake or before auth; a new one beyond "
        "closes the oldest (default: %(default)s, at most --max-connections)",
    )
    limits.add_argument(
        "--auth-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="a connection must finish its TLS handshake and auth within it (default: %(default)s)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="close a connection with nothing in flight for this long (default: %(default)s)",
    )
    limits.add_argument(
        "--max-partial-bytes",
        type=_bytes,
        default=64 << 20,
        metavar="BYTES",
        help="unfinished request lines of all connections together; the connection that "
        "goes over gets 'too_large' and is closed (default: 64M)",
    )
    limits.add_argument(
        "--max-pending-output",
        type=_bytes,
        default=4 << 20,
        metavar="BYTES",
        help="unsent reply bytes per connection: its requests wait and a live "
        "subscription is cut off (default: 4M)",
    )
    limits.add_argument(
        "--max-total-output",
        type=_bytes,
        default=256 << 20,
        metavar="BYTES",
        help="unsent reply bytes of all connections together (default: 256M)",
    )
    limits.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, how long requests in flight get to finish; queries "
        "still waiting then get 'unavailable' (default: %(default)s)",
    )
    limits.add_argument(
        "--metrics-max-connections",
        type=_count,
        default=16,
        metavar="N",
        help="connections the metrics port serves at once; beyond, 429 (default: %(default)s)",
    )


def _add_client(commands: Any) -> None:
    client = commands.add_parser(
        "client",
        help="send requests to a server: interactive, from arguments or from stdin",
        description="Without REQUEST arguments and with a terminal: an interactive prompt "
        "with history. With arguments: each one is a request. Otherwise: one request per "
        "line of standard input, one JSON reply line each (also for a line that cannot "
        "be understood), whose id is the line's (or argument's) number unless the request "
        "gives one. A request is a JSON object or a short form: 'CreateUser user_id=u1 "
        "name=Ann email=ann@example.org password=pw', 'GetUserById user_id=u1 @after=42', "
        "'read User-u1', 'subscribe 0', 'status', 'ping'.",
    )
    _connection_options(client)
    client.add_argument("requests", nargs="*", metavar="REQUEST", help="requests to send")
    client.add_argument(
        "--json", action="store_true", help="print replies as JSON lines (default for stdin)"
    )


def _add_status(commands: Any) -> None:
    status = commands.add_parser("status", help="print a running server's status")
    _connection_options(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")


def _add_forget(commands: Any) -> None:
    forget = commands.add_parser(
        "forget",
        help="erase a data subject's personal data on a running server (crypto-shredding)",
        description="Delete the subject's key, so its personal fields read as their "
        "redacted value ('' for text) everywhere from now on; the log keeps every event "
        "and every other field. Needs the full-access token. Forgetting a subject again "
        "is harmless.",
    )
    _connection_options(forget)
    forget.add_argument("subject", metavar="SUBJECT", help="the data subject (e.g. a user id)")
    forget.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_inspect(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="read a data directory offline: head, streams, a stream's events",
        description="Open a store read-only (safe beside a running server) and print its "
        "head position, streams and checkpoints, or the events of one stream.",
    )
    inspect.add_argument(
        "--data", default=DEFAULT_DATA, help="store directory (default: %(default)s)"
    )
    inspect.add_argument("--stream", help="print the events of this stream")
    inspect.add_argument(
        "--from", dest="from_version", type=int, default=0, help="events after this version"
    )
    inspect.add_argument(
        "--limit", type=int, default=50, help="at most this many rows (default: 50)"
    )
    inspect.add_argument(
        "--app", default=DEFAULT_APP, help="app whose types decode the events (MODULE:ATTR)"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON")


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run a short session of the example app (users and orders)",
        description="Send a few commands to the example app through the embedded API "
        "and print the resulting events.",
    )
    demo.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="store events in this directory (default: in memory, discarded on exit)",
    )


def _add_maintenance(commands: Any) -> None:
    delete = commands.add_parser(
        "delete-stream",
        help="delete a stream on a running server (needs the full-access token)",
        description="Delete STREAM on the server: a tombstone after which its commands are "
        "refused (code 'rejected') and reads say 'deleted'. With --hard its events, index "
        "rows and snapshot are removed too; every other event keeps its position. A hard "
        "delete needs a server started with --allow-hard-delete.",
    )
    delete.add_argument("stream", help="the stream id, e.g. User-u1")
    delete.add_argument(
        "--hard", action="store_true", help="remove the stream's events as well (for good)"
    )
    delete.add_argument("--json", action="store_true", help="print the reply's result as JSON")
    _connection_options(delete)
    retention = commands.add_parser(
        "retention",
        help="apply the app's retention on a running server now (needs the full-access token)",
        description="Remove the old events the retention of each aggregate (declared in the "
        "app) allows, on the server, now; 'motet serve --retention-every' does it "
        "periodically.",
    )
    retention.add_argument("--json", action="store_true", help="print the reply's result as JSON")
    _connection_options(retention)
    compact = commands.add_parser(
        "compact",
        help="give back the disk space of removed events (offline, LMDB)",
        description="Rewrite the LMDB store in --data into fresh pages and swap it in, so "
        "data.mdb shrinks after hard deletes and retention. Refused while a server or a "
        "reader has the store open: stop them first. A PostgreSQL store gives the space "
        "back with VACUUM.",
    )
    compact.add_argument(
        "--data", default=DEFAULT_DATA, help="store directory (default: %(default)s)"
    )
    compact.add_argument(
        "--lmdb-copy",
        action="store_true",
        help="use LMDB's own compacting copy (drops free pages only; faster, shrinks less)",
    )


def _add_groups(commands: Any) -> None:
    from .groups import add_parser

    add_parser(commands, _connection_options)


def _add_verify(commands: Any) -> None:
    from .verify import add_parser

    add_parser(commands, DEFAULT_DATA)


def _add_backup(commands: Any) -> None:
    from .backup import add_parsers

    add_parsers(commands, DEFAULT_DATA)


def _add_transfer(commands: Any) -> None:
    from .transfer import add_parsers

    add_parsers(commands, DEFAULT_DATA)


_COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_serve,
    _add_client,
    _add_status,
    _add_forget,
    _add_inspect,
    _add_verify,
    _add_backup,
    _add_transfer,
    _add_maintenance,
    _add_groups,
    _add_demo,
)


def _build_parser() -> tuple[_Parser, list[str]]:
    """The parser of the whole command line and the names of its commands."""
    parser = _Parser(
        prog="motet",
        description="Motet: an embedded event-sourcing engine for trio.",
        epilog=f"Benchmarks: {_BENCHMARKS}.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version of motet and exit"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(commands)
    return parser, sorted(commands.choices)


def _run(args: argparse.Namespace) -> int:
    """Import the module of ``args.command`` (only now: see the module's
    docstring) and run the command."""
    run: Callable[[argparse.Namespace], int]
    match args.command:
        case "serve":
            from .serve import serve as run
        case "client":
            from .remote import client as run
        case "status":
            from .remote import status as run
        case "forget":
            from .remote import forget as run
        case "inspect":
            from .inspect import inspect as run
        case "verify":
            from .verify import run
        case "backup":
            from .backup import backup as run
        case "restore":
            from .backup import restore as run
        case "export":
            from .transfer import export as run
        case "import":
            from .transfer import import_ as run
        case "delete-stream":
            from .maintenance import delete_stream as run
        case "retention":
            from .maintenance import retention as run
        case "compact":
            from .maintenance import compact as run
        case "groups":
            from .groups import run
        case "demo":
            from ..example.demo import demo

            demo(args.data)
            return 0
        case _:
            raise AssertionError(f"no runner for the command {args.command!r}")
    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``motet`` command line with ``argv`` (default: ``sys.argv[1:]``)
    and return the process exit status: 0 on success, 2 for a usage error,
    1 for any other failure."""
    parser, known = _build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The top level takes no option values, so its first bare word is the command;
    # checked here to answer a typo in one line rather than argparse's usage dump.
    command = next((arg for arg in args_list if not arg.startswith("-")), None)
    if command is not None and command not in known:
        moved = f"; {_MOVED[command]}" if command in _MOVED else "; see 'motet --help'"
        sys.stderr.write(
            f"motet: unknown command {command!r} (choose from: {', '.join(known)}){moved}\n"
        )
        return USAGE
    try:
        return _run(parser.parse_args(args_list))
    except Exit as exit_:
        if exit_.message:
            sys.stderr.write(exit_.message)
        return exit_.status
    except KeyboardInterrupt:
        return 130
