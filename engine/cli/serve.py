"""``motet serve``: run an app behind the TCP line protocol until SIGTERM or SIGINT.

The process owns its garbage collector, so once the server is up it is tuned
for a long-lived server (see :func:`tune_gc`).
"""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import socket
from functools import partial
from typing import TYPE_CHECKING, Any

from .apps import load_app
from .credentials import read_client_token, read_metrics_token, read_token, server_ssl_context
from .errors import USAGE, fail

if TYPE_CHECKING:
    import ssl

    from ..app import App

__all__ = ["LOCAL_HOSTS", "SERVER_GC_THRESHOLDS", "serve", "tune_gc"]

SERVER_GC_THRESHOLDS = (50_000, 20, 100)
"""Garbage-collector generation thresholds ``motet serve`` sets (see ``gc.set_threshold``)."""

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Addresses only this machine reaches: serving elsewhere without a token is warned about."""

_log = logging.getLogger("motet.cli")


def _redacted(url: str) -> str:
    """``url`` without the password it may carry, for the log."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.partition(':')[0]}:***@{location}"


def _port_in_use(args: argparse.Namespace) -> str:
    """Which of the ports ``motet serve`` binds is taken, for "address
    already in use" (the OS's message names neither the port nor the flag).

    The server's own sockets are closed by now, so binding each port again
    finds the one another socket holds (or two flags that ask for one port).
    """
    ports = [("--port", args.host, args.port)]
    if not args.no_metrics:
        ports.append(("--metrics-port", args.metrics_host, args.metrics_port))
    if args.http_port is not None:
        ports.append(("--http-port", args.host, args.http_port))
    seen: dict[int, str] = {}
    for flag, _host, port in ports:
        if port and port in seen:
            return f"{seen[port]} and {flag} both ask for port {port}: give them different ports"
        seen[port] = flag
    for flag, host, port in ports:
        if port and not _can_bind(host, port):
            return (
                f"{flag} {port}: {host}:{port} is already in use (another program, or "
                f"another motet serve, listens there); stop it or choose another {flag}"
            )
    names = ", ".join(f"{flag} {port}" for flag, _host, port in ports)
    return f"a port is already in use ({names}); choose other ports"


def _can_bind(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (as the servers bind: SO_REUSEADDR)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return True
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
    return True


def _check_node_options(args: argparse.Namespace) -> None:
    """Refuse node flags that cannot work, naming the flag."""
    postgres = isinstance(args.store, str) and args.store.startswith(
        ("postgresql://", "postgres://")
    )
    if args.node_id is not None and not postgres:
        fail("--node-id needs --store postgresql://...: only PostgreSQL is shared by nodes", USAGE)
    if args.node_id is not None and not (0 < len(args.node_id) <= 200):
        fail(f"--node-id must be 1 to 200 characters, got {args.node_id!r}", USAGE)
    if args.advertise is not None:
        if args.node_id is None:
            fail("--advertise needs --node-id", USAGE)
        host, sep, port = args.advertise.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            fail(f"--advertise must be HOST:PORT, got {args.advertise!r}", USAGE)
    if args.peer_cafile is not None and (args.node_id is None or args.tls_cert is None):
        fail("--peer-cafile goes with --node-id and --tls-cert", USAGE)
    if args.partitions is not None and not postgres:
        fail("--partitions applies to a new --store postgresql://... store only", USAGE)
    if args.commit_timeout is not None and not postgres:
        fail("--commit-timeout applies to --store postgresql://... only", USAGE)


def _store_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The PostgreSQL store's options given on the command line, if any."""
    options: dict[str, Any] = {}
    if args.partitions is not None:
        options["partitions"] = args.partitions
    if args.commit_timeout is not None:
        options["commit_timeout"] = args.commit_timeout
    return options or None


def _peer_ssl_context(
    args: argparse.Namespace, server_context: ssl.SSLContext | None
) -> ssl.SSLContext | None:
    """Nodes serving TLS forward over TLS, trusting ``--peer-cafile`` (or the
    system's CAs); the others forward in the clear."""
    if server_context is None or args.node_id is None:
        return None
    import ssl

    try:
        return ssl.create_default_context(cafile=args.peer_cafile)
    except (OSError, ssl.SSLError) as exc:
        fail(f"cannot load --peer-cafile: {exc}", USAGE)


def _advertised(host: str, port: int) -> str:
    """The address other nodes reach this one at: the listening address,
    or this host's name when listening on every address."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tune_gc() -> None:
    """Tune the garbage collector for a server process that is up and running.

    What exists now (modules, the app, the loaded read models) lives as long as
    the process, so it is kept out of every collection (``gc.freeze``). Every
    command allocates a few short-lived containers, so the default
    young-generation threshold (700) collects thousands of times a second; a
    process that owns its collector can afford larger generations
    (:data:`SERVER_GC_THRESHOLDS`: +10-15 % commands/s on the seed workload).
    """
    gc.freeze()
    gc.set_threshold(*SERVER_GC_THRESHOLDS)


def serve(args: argparse.Namespace) -> int:
    """Run ``motet serve`` with the parsed ``args``; return the exit status."""
    import trio

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = load_app(args.app)
    token = read_token(args)
    client_token = read_client_token(args)
    metrics_token = read_metrics_token(args)
    if client_token is not None and client_token == token:
        fail("the client token must differ from the full-access token", USAGE)
    if metrics_token is not None and metrics_token in (token, client_token):
        fail("the metrics token must differ from the full-access and the client token", USAGE)
    for option in ("token", "client_token", "metrics_token"):
        if getattr(args, option):
            _log.warning(
                "--%s is visible to every local user in /proc/%d/cmdline: "
                "prefer --%s-file or $MOTET_%s",
                option.replace("_", "-"),
                os.getpid(),
                option.replace("_", "-"),
                option.upper(),
            )
    _check_node_options(args)
    ssl_context = server_ssl_context(args)
    if args.role == "reader" and (args.retention_every is not None or args.allow_hard_delete):
        fail(
            "--retention-every and --allow-hard-delete need --role writer: "
            "only the writer changes the log",
            USAGE,
        )
    if args.host not in LOCAL_HOSTS and token is None and client_token is None:
        _log.warning(
            "listening on %s without --token: anyone who can reach the port can send commands",
            args.host,
        )
    if (
        not args.no_metrics
        and args.metrics_host not in LOCAL_HOSTS
        and token is None
        and metrics_token is None
    ):
        _log.warning(
            "serving metrics on %s without --token or --metrics-token: anyone who can reach "
            "the port can read them",
            args.metrics_host,
        )
    try:
        trio.run(_run_server, args, app, (token, client_token, metrics_token), ssl_context)
    except* OSError as group:
        # A port that cannot be bound fails inside the engine's and the server's
        # nurseries, so its OSError arrives wrapped in exception groups.
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
            fail(f"cannot serve: {_port_in_use(args)}")
        fail(f"cannot serve: {error}")
    return 0


async def _run_server(
    args: argparse.Namespace,
    app: App,
    tokens: tuple[str | None, str | None, str | None],
    ssl_context: ssl.SSLContext | None,
) -> None:
    import signal

    import trio

    from motet.engine import StorageError, open_engine, serve_engine

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            engine_cm = open_engine(
                args.store or args.data,
                app,
                durability=None if args.role == "reader" else args.durability,
                store_options=_store_options(args),
                max_actors=args.max_actors,
                passivate_after=args.passivate_after,
                metrics_port=None if args.no_metrics else args.metrics_port,
                metrics_host=args.metrics_host,
                metrics_max_connections=args.metrics_max_connections,
                # The engine's own HTTP server is the metrics port alone here:
                # it takes the full-access token or the metrics token.
                http_token=tokens[0],
                metrics_token=tokens[2],
                role=args.role,
                retention_every=args.retention_every,
                node_id=args.node_id,
                advertise=args.advertise or "",
                lease_ttl=args.lease_ttl,
                peer_token=tokens[0],
                peer_ssl_context=_peer_ssl_context(args, ssl_context),
            )
            async with engine_cm as engine, trio.open_nursery() as nursery:
                server = await nursery.start(
                    lambda task_status: serve_engine(
                        engine,
                        args.host,
                        args.port,
                        token=tokens[0],
                        client_token=tokens[1],
                        ssl_context=ssl_context,
                        max_connections=args.max_connections,
                        max_unauthenticated=args.max_unauthenticated,
                        auth_timeout=args.auth_timeout,
                        idle_timeout=args.idle_timeout,
                        max_partial_bytes=args.max_partial_bytes,
                        max_pending_output=args.max_pending_output,
                        max_total_output=args.max_total_output,
                        allow_hard_delete=args.allow_hard_delete,
                        task_status=task_status,
                    )
                )
                http = None
                if args.http_port is not None:
                    from motet.engine.net.http import serve_http

                    http = await nursery.start(
                        partial(
                            serve_http,
                            engine,
                            host=args.host,
                            port=args.http_port,
                            token=tokens[0],
                            client_token=tokens[1],
                            metrics_token=tokens[2],
                            ssl_context=ssl_context,
                            max_connections=args.max_connections,
                            allow_hard_delete=args.allow_hard_delete,
                        )
                    )
                if engine.node is not None and not engine.node.advertise:
                    engine.node.advertise = _advertised(args.host, server.port)
                tune_gc()
                metrics = (
                    f"http://{args.metrics_host}:{engine.metrics_port}/metrics"
                    if engine.metrics_port is not None
                    else "off"
                )
                scheme = "https" if ssl_context else "http"
                _log.info(
                    "serving %s from %s on %s:%d%s (metrics: %s, http: %s, durability: %s, "
                    "role: %s%s)",
                    args.app,
                    _redacted(args.store) if args.store else args.data,
                    args.host,
                    server.port,
                    " with TLS" if ssl_context else "",
                    metrics,
                    f"{scheme}://{args.host}:{http.port}/" if http is not None else "off",
                    args.durability,
                    args.role,
                    "" if engine.node is None else f", node: {engine.node!r}",
                )
                async for signum in signals:
                    _log.info("%s received: draining and closing", signal.Signals(signum).name)
                    server.stop(args.drain_timeout)
                    if http is not None:
                        http.stop(args.drain_timeout)
                    break
        except StorageError as exc:
            fail(str(exc))
    _log.info("stopped cleanly")
