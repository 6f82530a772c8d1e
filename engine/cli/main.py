"""The ``motet`` command line: its parser and its entry point, :func:`main`.

``motet serve`` runs the TCP server (docs/design.md, "CLI"); ``motet client`` talks
to it (interactive, one-shot from arguments, or line by line from standard
input); ``motet status`` prints a server's status; ``motet inspect`` reads a
data directory offline; ``motet demo`` runs a short scripted session of the
example app through the embedded API.

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
    """A whole number >= 1 (``--max-actors``)."""
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
        help="writer: take commands and append (one per store, default); reader: open "
        "--data read-only beside a running writer, follow its log and serve queries, "
        "reads, subscriptions and status (commands answer 'unavailable')",
    )
    serve.add_argument(
        "--durability",
        choices=("sync", "none"),
        default="sync",
        help="sync: fsync before every Ack (default); none: no fsync",
    )
    _token_options(serve, serving=True)
    serve.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    serve.add_argument("--max-connections", type=int, default=1000, help="(default: %(default)s)")
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
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="(default: %(default)s)",
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


def _add_groups(commands: Any) -> None:
    from .groups import add_parser

    add_parser(commands, _connection_options)


def _add_verify(commands: Any) -> None:
    from .verify import add_parser

    add_parser(commands, DEFAULT_DATA)


_COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_serve,
    _add_client,
    _add_status,
    _add_inspect,
    _add_verify,
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
        case "inspect":
            from .inspect import inspect as run
        case "verify":
            from .verify import run
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
