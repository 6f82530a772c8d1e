"""The seed workload through the HTTP API, next to the same workload over the
line protocol.

Run from the repository root::

    python -m benchmarks.http_workload                       # 10,000 users, 100,000 commands
    python -m benchmarks.http_workload --commands 20000 --connections 50

Each run starts a fresh server in a child process (this module with
``--serve``: an engine on a fresh data directory, durability ``sync`` by
default, serving the line protocol and the HTTP API on free ports), then
drives the seed workload of ``benchmarks.seed_workload``:

- HTTP: ``--connections`` keep-alive connections, each sending one
  ``POST /commands/{Type}`` at a time and reading its answer (HTTP/1.1 has
  no pipelining to speak of), through a small h11 client;
- line protocol: the same number of connections through
  ``motet.engine.open_client``, each with ``--line-in-flight`` commands in
  flight (1 by default, the same concurrency as HTTP; the protocol's
  pipelining is measured by ``benchmarks.tcp_workload``).

It prints both rates and their ratio (HTTP / line protocol), as a table and
one JSON line. Latency is measured in the client, from writing a request to
reading its answer.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import h11
import msgspec
import trio

from motet.engine import open_client
from motet.engine.example import CreateUser, PlaceOrder, UpdateUser

from .seed_workload import QUANTILES, PlaceOrderSpec, Workload, make_workload, quantiles

__all__ = ["main", "run_http", "run_line"]

_START_TIMEOUT = 30.0


# --- the server (child process) -----------------------------------------------


async def _serve(data: Path, durability: str) -> None:
    from motet.engine import open_engine, serve_engine
    from motet.engine.cli.main import SERVER_GC_THRESHOLDS
    from motet.engine.example import app
    from motet.engine.net.http import serve_http

    gc.set_threshold(*SERVER_GC_THRESHOLDS)
    async with (
        open_engine(data, app, durability=durability) as engine,  # type: ignore[arg-type]
        trio.open_nursery() as nursery,
    ):
        line = await nursery.start(partial(serve_engine, engine, "127.0.0.1", 0))
        http = await nursery.start(partial(serve_http, engine, port=0, max_connections=100_000))
        print(f"ports {line.port} {http.port}", flush=True)
        # Serve until the parent closes our stdin.
        await trio.to_thread.run_sync(sys.stdin.read)
        line.stop()
        http.stop()


class _Server:
    """A server child process on a fresh data directory."""

    def __init__(self, durability: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="motet-http-bench-")
        command = [
            sys.executable,
            "-m",
            "benchmarks.http_workload",
            "--serve",
            str(Path(self._tmp.name) / "data"),
            "--durability",
            durability,
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the server exited with {self.process.wait()}")
            if line.startswith("ports "):
                _, line_port, http_port = line.split()
                self.line_port, self.http_port = int(line_port), int(http_port)
                return
        self.process.kill()
        raise RuntimeError("the server did not start in time")

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._tmp.cleanup()


# --- clients --------------------------------------------------------------------


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection (h11), one request at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def post(self, path: str, body: bytes) -> int:
        conn = self.conn
        if conn.our_state is h11.DONE:
            conn.start_next_cycle()
        headers = [
            ("host", "127.0.0.1"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ]
        data = conn.send(h11.Request(method="POST", target=path, headers=headers)) or b""
        data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await self.stream.receive_some(65_536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection")


def _requests(commands: Sequence[Any]) -> list[tuple[str, bytes]]:
    encode = msgspec.json.encode
    return [(f"/commands/{type(c).__name__}", encode(msgspec.structs.asdict(c))) for c in commands]


async def _drive_http(port: int, commands: Sequence[Any], connections: int) -> dict[str, Any]:
    requests = _requests(commands)
    latencies: list[float] = []
    errors = 0

    async def connection(share: Sequence[tuple[str, bytes]]) -> None:
        nonlocal errors
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = _HttpConnection(stream)
            for path, body in share:
                started = time.perf_counter()
                if await client.post(path, body) != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

    return await _timed(connection, requests, connections, latencies, lambda: errors)


async def _drive_line(
    port: int, commands: Sequence[Any], connections: int, in_flight: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0

    async def worker(client: Any, share: Sequence[Any]) -> None:
        nonlocal errors
        for command in share:
            started = time.perf_counter()
            try:
                await client.send(command)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    async def connection(share: Sequence[Any]) -> None:
        async with open_client("127.0.0.1", port) as client, trio.open_nursery() as nursery:
            for i in range(in_flight):
                nursery.start_soon(worker, client, share[i::in_flight])

    return await _timed(connection, commands, connections, latencies, lambda: errors)


async def _timed(
    connection: Any, items: Sequence[Any], connections: int, latencies: list[float], errors: Any
) -> dict[str, Any]:
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for c in range(connections):
            nursery.start_soon(connection, items[c::connections])
    seconds = time.perf_counter() - started
    ms = [latency * 1000.0 for latency in latencies]
    return {
        "commands": len(latencies),
        "seconds": seconds,
        "commands_per_s": len(latencies) / seconds,
        "errors": errors(),
        **quantiles(ms, QUANTILES),
    }


def _phases(workload: Workload) -> tuple[list[Any], list[Any]]:
    creates = [
        CreateUser(user_id=u.user_id, name=u.name, email=u.email, password=u.password, city=u.city)
        for u in workload.users
    ]
    mixed = [
        PlaceOrder(user_id=c.user_id, order_id=c.order_id, amount=c.amount)
        if isinstance(c, PlaceOrderSpec)
        else UpdateUser(user_id=c.user_id, city=c.city)
        for c in workload.commands
    ]
    return creates, mixed


def run_http(workload: Workload, *, connections: int, durability: str) -> dict[str, Any]:
    """The workload through a fresh server's HTTP API."""
    creates, mixed = _phases(workload)
    server = _Server(durability)
    try:

        async def run() -> dict[str, Any]:
            phase_a = await _drive_http(server.http_port, creates, connections)
            phase_b = await _drive_http(server.http_port, mixed, connections)
            return {"phase_a": phase_a, "phase_b": phase_b}

        return trio.run(run)
    finally:
        server.close()


def run_line(
    workload: Workload, *, connections: int, in_flight: int, durability: str
) -> dict[str, Any]:
    """The workload through a fresh server's line protocol."""
    creates, mixed = _phases(workload)
    server = _Server(durability)
    try:

        async def run() -> dict[str, Any]:
            phase_a = await _drive_line(server.line_port, creates, connections, in_flight)
            phase_b = await _drive_line(server.line_port, mixed, connections, in_flight)
            return {"phase_a": phase_a, "phase_b": phase_b}

        return trio.run(run)
    finally:
        server.close()


def _row(name: str, phase: dict[str, Any]) -> str:
    return (
        f"{name:<28} {phase['commands_per_s']:>10,.0f} {phase['p50_ms']:>8.2f} "
        f"{phase['p99_ms']:>8.2f} {phase['p999_ms']:>8.2f} {phase['errors']:>6}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run both measurements (or, with ``--serve``, be the server) and print
    the table and the JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_workload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=100, help="concurrent connections")
    parser.add_argument(
        "--line-in-flight", type=int, default=1, help="commands in flight per line connection"
    )
    parser.add_argument("--durability", choices=("sync", "none"), default="sync")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve", metavar="DATA", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        trio.run(_serve, Path(args.serve), args.durability)
        return
    for name in ("users", "commands", "connections", "line_in_flight"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    workload = make_workload(args.users, args.commands, args.seed)
    print("running the workload over HTTP ...", file=sys.stderr)
    http = run_http(workload, connections=args.connections, durability=args.durability)
    print("running the same workload over the line protocol ...", file=sys.stderr)
    line = run_line(
        workload,
        connections=args.connections,
        in_flight=args.line_in_flight,
        durability=args.durability,
    )
    ratio = http["phase_b"]["commands_per_s"] / line["phase_b"]["commands_per_s"]
    print(
        f"Seed workload: {args.users:,} users, {args.commands:,} commands, "
        f"{args.connections} connections, durability {args.durability}"
    )
    print(
        f"{'phase B':<28} {'cmd/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} {'errors':>6}"
    )
    print(_row("HTTP (keep-alive, 1/conn)", http["phase_b"]))
    print(_row(f"line protocol ({args.line_in_flight}/conn)", line["phase_b"]))
    print(f"HTTP / line protocol: {ratio:.2f}")
    report = {
        "workload": {
            "users": args.users,
            "commands": args.commands,
            "connections": args.connections,
            "line_in_flight": args.line_in_flight,
            "durability": args.durability,
            "seed": args.seed,
        },
        "http": http,
        "line": line,
        "http_over_line": ratio,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
