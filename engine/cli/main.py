"""The ``motet`` command line.

``motet serve`` runs the TCP server (DESIGN.md, "CLI"); ``motet client`` talks
to it (interactive, one-shot from arguments, or line by line from standard
input); ``motet status`` prints a server's status; ``motet inspect`` reads a
data directory offline; ``motet demo`` runs a short scripted session of the
example app through the embedded API; ``motet bench`` runs the headline
benchmark from a source checkout.

The engine is imported only when a command runs, so ``--help`` and usage
errors stay fast. A user mistake is one line on stderr and a non-zero exit
code, never a traceback: 2 for usage errors, 1 for everything else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from . import verify as verify_cli

if TYPE_CHECKING:
    import ssl

    from ..app import App
    from ..net.client import BlockingClient
    from ..core import EngineStatus

__all__ = ["main"]

DEFAULT_DATA = "./motet-data"
DEFAULT_APP = "motet.engine.example:app"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7707
DEFAULT_METRICS_PORT = 9707
HISTORY_FILE = "~/.motet_history"
SERVER_GC_THRESHOLDS = (50_000, 20, 100)
"""Garbage-collector generation thresholds ``motet serve`` sets (see ``gc.set_threshold``)."""


class _Exit(Exception):
    """Raised instead of ``SystemExit`` so :func:`main` can return the code."""

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.message = message


def _fail(message: str, status: int = 1) -> NoReturn:
    raise _Exit(status, f"motet: error: {message}\n")


class _Parser(argparse.ArgumentParser):
    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _Exit(status, message)

    def error(self, message: str) -> NoReturn:
        # One line, without argparse's usage dump.
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port must be a number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port must be between 0 and 65535, got {port}")
    return port


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


def _token_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--token", help="shared secret for authentication (default: $MOTET_TOKEN if set)"
    )
    group.add_argument("--token-file", metavar="FILE", help="read the token from FILE")


def _build_parser() -> tuple[_Parser, list[str]]:
    """The parser and the names of its commands."""
    parser = _Parser(
        prog="motet",
        description="Motet: an embedded event-sourcing engine for trio.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
        "--durability",
        choices=("sync", "none"),
        default="sync",
        help="sync: fsync before every Ack (default); none: no fsync",
    )
    _token_options(serve)
    serve.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    serve.add_argument("--max-connections", type=int, default=1000, help="(default: %(default)s)")
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="(default: %(default)s)",
    )

    client = commands.add_parser(
        "client",
        help="send requests to a server: interactive, from arguments or from stdin",
        description="Without REQUEST arguments and with a terminal: an interactive prompt "
        "with history. With arguments: each one is a request. Otherwise: one request per "
        "line of standard input, one JSON reply line each. A request is a JSON object or "
        "a short form: 'CreateUser user_id=u1 name=Ann email=ann@example.org "
        "password=pw', 'GetUserById user_id=u1 @after=42', 'read User-u1', "
        "'subscribe 0', 'status', 'ping'.",
    )
    _connection_options(client)
    client.add_argument("requests", nargs="*", metavar="REQUEST", help="requests to send")
    client.add_argument(
        "--json", action="store_true", help="print replies as JSON lines (default for stdin)"
    )

    status = commands.add_parser("status", help="print a running server's status")
    _connection_options(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")

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

    verify_cli.add_parser(commands, DEFAULT_DATA)

    commands.add_parser(
        "bench",
        help="run the headline benchmark (source checkout only; see benchmarks/)",
        add_help=False,
    )
    return parser, sorted(commands.choices)


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
        sys.stderr.write(
            f"motet: unknown command {command!r} (choose from: {', '.join(known)}); "
            "see 'motet --help'\n"
        )
        return 2
    try:
        if command == "bench":
            return _bench(args_list[args_list.index("bench") + 1 :])
        args = parser.parse_args(args_list)
        handler = {
            "serve": _serve,
            "client": _client,
            "status": _status,
            "inspect": _inspect,
            "demo": _demo,
            "verify": verify_cli.run,
        }[args.command]
        return handler(args)
    except _Exit as exit_:
        if exit_.message:
            sys.stderr.write(exit_.message)
        return exit_.status
    except KeyboardInterrupt:
        return 130


# --- shared helpers ---------------------------------------------------------------


def _load_app(spec: str) -> App:
    from ..app import App

    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        _fail(f"--app must look like MODULE:ATTR, got {spec!r}", 2)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _fail(f"cannot import module {module_name!r} for --app: {exc}", 2)
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        _fail(f"{spec} is not a motet App (found {type(app).__name__})", 2)
    return app


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            _fail(f"cannot read --token-file: {exc}", 2)
        if not token:
            _fail(f"--token-file {args.token_file} is empty", 2)
        return token
    given: str | None = args.token or os.environ.get("MOTET_TOKEN") or None
    if given is not None and not given.strip():
        _fail("the token is empty", 2)
    return given


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls:
        if args.cafile:
            _fail("--cafile needs --tls", 2)
        return None
    import ssl

    try:
        return ssl.create_default_context(cafile=args.cafile)
    except (OSError, ssl.SSLError) as exc:
        _fail(f"cannot load --cafile: {exc}", 2)


def _connect(args: argparse.Namespace) -> tuple[BlockingClient, EngineStatus]:
    """Connect and fetch the server's status (which also proves the token)."""
    from motet.storage.errors import MotetError

    from ..net.client import ConnectionLost, connect
    from ..net.protocol import Unauthorized

    def no_answer(exc: MotetError) -> NoReturn:
        # e.g. refused as overloaded, or closed by a TLS server that got plain text
        hint = " (does it serve TLS? then add --tls)" if isinstance(exc, ConnectionLost) else ""
        _fail(f"{args.host}:{args.port} did not answer: {exc}{'' if args.tls else hint}")

    token = _token(args)
    try:
        client = connect(args.host, args.port, token=token, ssl_context=_client_tls(args))
    except Unauthorized as exc:
        _fail(f"the server refused the token: {exc}")
    except MotetError as exc:
        no_answer(exc)
    except OSError as exc:
        _fail(
            f"cannot connect to {args.host}:{args.port}: {exc.strerror or exc} "
            "(is 'motet serve' running there?)"
        )
    try:
        return client, client.status()
    except Unauthorized:
        client.close()
        if token is None:
            _fail("the server needs a token: give --token or --token-file, or set MOTET_TOKEN")
        _fail("the server refused the token")
    except MotetError as exc:
        client.close()
        no_answer(exc)
    except BaseException:
        client.close()
        raise


# --- serve ---------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import trio

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = _load_app(args.app)
    token = _token(args)
    ssl_context = None
    if bool(args.tls_cert) != bool(args.tls_key):
        _fail("--tls-cert and --tls-key go together", 2)
    if args.tls_cert:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            _fail(f"cannot load the TLS certificate or key: {exc}", 2)
    if args.max_connections < 1:
        _fail(f"--max-connections must be >= 1, got {args.max_connections}", 2)
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        logging.getLogger("motet.cli").warning(
            "listening on %s without --token: anyone who can reach the port can send commands",
            args.host,
        )
    try:
        trio.run(_run_server, args, app, token, ssl_context)
    except* OSError as group:
        # A port that cannot be bound fails inside the engine's and the server's
        # nurseries, so its OSError arrives wrapped in exception groups.
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        _fail(f"cannot serve: {error}")
    return 0


async def _run_server(
    args: argparse.Namespace, app: App, token: str | None, ssl_context: ssl.SSLContext | None
) -> None:
    import gc
    import signal

    import trio

    from motet.storage.errors import StorageError

    from ..core import open_engine
    from ..net.server import serve_engine

    log = logging.getLogger("motet.cli")
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            engine_cm = open_engine(
                args.data,
                app,
                durability=args.durability,
                metrics_port=None if args.no_metrics else args.metrics_port,
                metrics_host=args.metrics_host,
            )
            async with engine_cm as engine, trio.open_nursery() as nursery:
                server = await nursery.start(
                    lambda task_status: serve_engine(
                        engine,
                        args.host,
                        args.port,
                        token=token,
                        ssl_context=ssl_context,
                        max_connections=args.max_connections,
                        task_status=task_status,
                    )
                )
                # What exists now (modules, the app, the loaded read models) lives
                # as long as the process: keep it out of every garbage collection.
                # Every command allocates a few short-lived containers, so the
                # default young-generation threshold (700) collects thousands of
                # times a second; this process owns its collector and can afford
                # larger generations (+10-15 % commands/s on the seed workload).
                gc.freeze()
                gc.set_threshold(*SERVER_GC_THRESHOLDS)
                metrics = (
                    f"http://{args.metrics_host}:{engine.metrics_port}/metrics"
                    if engine.metrics_port is not None
                    else "off"
                )
                log.info(
                    "serving %s from %s on %s:%d%s (metrics: %s, durability: %s)",
                    args.app,
                    args.data,
                    args.host,
                    server.port,
                    " with TLS" if ssl_context else "",
                    metrics,
                    args.durability,
                )
                async for signum in signals:
                    log.info("%s received: draining and closing", signal.Signals(signum).name)
                    server.stop()
                    break
        except StorageError as exc:
            _fail(str(exc))
    log.info("stopped cleanly")


# --- client and status ----------------------------------------------------------


def _client(args: argparse.Namespace) -> int:
    from .shell import ShellError, parse_line

    client, status = _connect(args)
    try:
        commands = set(status.commands)
        queries = set(status.queries)
        interactive = not args.requests and sys.stdin.isatty()
        as_json = args.json or (not args.requests and not interactive)
        if interactive:
            return _interactive(client, commands, queries, args)
        lines = args.requests or sys.stdin
        failures = 0
        for number, line in enumerate(lines, 1):
            try:
                request = parse_line(line, commands, queries)
            except ShellError as exc:
                where = "argument" if args.requests else "line"
                sys.stderr.write(f"motet: error: {where} {number}: {exc}\n")
                failures += 1
                continue
            if request is None:
                continue
            failures += not _send_one(client, request, args, as_json)
        return 1 if failures else 0
    finally:
        client.close()


def _send_one(
    client: BlockingClient, request: dict[str, Any], args: argparse.Namespace, as_json: bool
) -> bool:
    """Send one request and print its reply (or events); return whether it succeeded."""
    from motet.storage.errors import MotetError

    from .shell import format_reply

    if request.get("op") == "subscribe":
        return _subscribe(request, args, as_json)
    try:
        reply = client.request(request)
    except (MotetError, OSError) as exc:
        _fail(f"the connection failed: {exc}")
    print(json.dumps(reply) if as_json else format_reply(reply), flush=True)
    return bool(reply.get("ok"))


def _subscribe(request: dict[str, Any], args: argparse.Namespace, as_json: bool) -> bool:
    """Print events until interrupted (Ctrl-C) or the server ends the subscription."""
    import trio

    from motet.storage.errors import MotetError

    from ..net.client import open_client
    from .shell import format_reply

    start = request.get("from", 0)
    if not isinstance(start, int) or start < 0:
        sys.stderr.write(f"motet: error: subscribe needs a position >= 0, got {start!r}\n")
        return False

    async def follow() -> None:
        async with open_client(
            args.host, args.port, token=_token(args), ssl_context=_client_tls(args)
        ) as client:
            async for event in client.subscribe(start):
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


def _interactive(
    client: BlockingClient, commands: set[str], queries: set[str], args: argparse.Namespace
) -> int:
    from .shell import ShellError, parse_line

    try:
        import readline
    except ImportError:  # not on every platform; the prompt works without history
        readline = None  # type: ignore[assignment]
    history = Path(HISTORY_FILE).expanduser()
    if readline is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(history)
    print(
        f"connected to {args.host}:{args.port}. Type a request (JSON or e.g. "
        "'GetUserById user_id=u1'), 'help', or Ctrl-D to quit.",
        flush=True,
    )
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
            if line.strip() in ("help", "?"):
                _print_help(commands)
                continue
            if line.strip() in ("quit", "exit"):
                return 0
            try:
                request = parse_line(line, commands, queries)
            except ShellError as exc:
                print(f"error: {exc}", flush=True)
                continue
            if request is not None:
                _send_one(client, request, args, as_json=False)
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.set_history_length(1000)
                readline.write_history_file(history)


def _print_help(commands: set[str]) -> None:
    from . import shell

    print(shell.__doc__)
    print("Commands of this server:", ", ".join(sorted(commands)) or "none")


def _status(args: argparse.Namespace) -> int:
    client, status = _connect(args)
    client.close()
    if args.json:
        print(json.dumps(msgspec.to_builtins(status), indent=2, sort_keys=True))
        return 0
    print(f"head position  {status.head_position:,}")
    print(f"durability     {status.durability}")
    actors = ", ".join(f"{name} {count:,}" for name, count in status.actors_by_aggregate.items())
    print(f"live actors    {status.actors:,}" + (f" ({actors})" if actors else ""))
    print(f"\n{'projection':<20}{'state':<12}{'position':>12}{'lag events':>12}{'lag s':>9}")
    for projection in status.projections:
        print(
            f"{projection.name:<20}{projection.state:<12}{projection.position:>12,}"
            f"{projection.lag_events:>12,}{projection.lag_seconds:>9.3f}"
        )
        if projection.error:
            print(f"  stopped at position {projection.failed_position}: {projection.error}")
    return 0


# --- inspect ---------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    from motet.storage.errors import MotetError
    from motet.storage.lmdb_store import LmdbStore

    if args.limit < 1:
        _fail(f"--limit must be >= 1, got {args.limit}", 2)
    if args.from_version < 0:
        _fail(f"--from must be >= 0, got {args.from_version}", 2)
    try:
        store = LmdbStore(args.data, readonly=True)
    except MotetError as exc:
        _fail(str(exc))
    try:
        if args.stream:
            return _inspect_stream(store, args)
        return _inspect_store(store, args)
    except MotetError as exc:
        _fail(str(exc))
    finally:
        store.close()


def _inspect_store(store: Any, args: argparse.Namespace) -> int:
    streams = store.streams()
    checkpoints = {}
    for name in store.checkpoint_names():
        checkpoint = store.get_checkpoint(name)
        if checkpoint is not None:
            checkpoints[name] = checkpoint.position
    if args.json:
        summary = {
            "head_position": store.head_position,
            "streams": len(streams),
            "first_streams": dict(streams[: args.limit]),
            "checkpoints": checkpoints,
        }
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    print(f"store          {args.data}")
    print(f"head position  {store.head_position:,}")
    print(f"streams        {len(streams):,}")
    for name, position in sorted(checkpoints.items()):
        print(f"checkpoint     {name} at position {position:,}")
    if streams:
        print(f"\n{'stream':<40}{'version':>10}")
        for stream, version in streams[: args.limit]:
            print(f"{stream:<40}{version:>10,}")
        if len(streams) > args.limit:
            print(f"... {len(streams) - args.limit:,} more (use --limit)")
    return 0


def _inspect_stream(store: Any, args: argparse.Namespace) -> int:
    import datetime

    from motet.storage.errors import CodecError

    codec = _load_app(args.app).codec()
    untyped = msgspec.msgpack.Decoder()
    events = store.read_stream(args.stream, args.from_version, args.limit)
    if not events and store.stream_version(args.stream) == 0:
        _fail(f"no stream {args.stream!r} in {args.data}")
    rows = []
    for stored in events:
        try:
            data = msgspec.to_builtins(codec.decode_event(stored))
        except CodecError:
            data = untyped.decode(stored.data)
        time = datetime.datetime.fromtimestamp(stored.timestamp, datetime.UTC)
        rows.append(
            {
                "version": stored.version,
                "position": stored.position,
                "type": stored.type,
                "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "data": data,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        print(f"v{row['version']:<6} @{row['position']:<10} {row['time']}  {row['type']}")
        print(f"         {json.dumps(row['data'], sort_keys=True, default=str)}")
    return 0


# --- demo and bench --------------------------------------------------------------


def _bench(argv: list[str]) -> int:
    try:
        from benchmarks import seed_workload
    except ImportError:
        _fail(
            "the benchmarks live in a source checkout: run 'python -m benchmarks.seed_workload' "
            "from its top directory (or 'make bench')"
        )
    try:
        seed_workload.main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    import trio

    trio.run(_run_demo, args.data)
    return 0


async def _run_demo(data: str | None) -> None:
    from motet.actors.errors import CommandRejected

    from ..core import open_engine
    from ..example import CreateUser, DeleteUser, PlaceOrder, UpdateUser, app

    commands = [
        CreateUser(user_id="ada", name="Ada", email="ada@example.org", password="s3cret"),
        UpdateUser(user_id="ada", city="London"),
        PlaceOrder(user_id="ada", order_id="o-1", amount=12.5),
        PlaceOrder(user_id="ada", order_id="o-2", amount=-5),
        CreateUser(user_id="bob", name="Bob", email="bob-at-example", password="pw"),
        PlaceOrder(user_id="ada", order_id="o-3", amount=30.0),
        DeleteUser(user_id="ada"),
        PlaceOrder(user_id="ada", order_id="o-4", amount=1.0),
    ]
    async with open_engine(data, app) as engine:
        for command in commands:
            name = type(command).__name__
            try:
                ack = await engine.send(command)
            except CommandRejected as exc:
                print(f"{name:<11} rejected: {exc}")
            else:
                print(f"{name:<11} ok: {ack.stream} version {ack.version} position {ack.position}")
        print("\nstream User-ada:")
        for event in await engine.read_stream("User-ada"):
            print(f"  {event.version:>2}  {event.type:<12} {_describe(event.data)}")


def _describe(data: msgspec.Struct) -> str:
    fields = msgspec.structs.asdict(data)
    if "password_hash" in fields:
        fields["password_hash"] = fields["password_hash"][:24] + "..."
    return ", ".join(f"{key}={value!r}" for key, value in fields.items() if value is not None)
