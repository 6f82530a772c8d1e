"""The seed workload over TCP, next to the same workload embedded.

Run from the repository root::

    python -m benchmarks.tcp_workload                       # 10,000 users, 100,000 commands
    python -m benchmarks.tcp_workload --commands 50000 --connections 8 --in-flight 125

It starts ``motet serve`` (durability ``sync`` by default) on a fresh data
directory in a child process, then drives the seed workload of
``benchmarks.seed_workload`` through ``engine.open_client``: ``--connections``
connections, each with ``--in-flight`` commands pipelined at any time
(8 x 125 = 1,000 commands in flight, like the embedded run's 1,000 client
tasks). Then it runs the same workload through the embedded API in this
process, and prints both rates and their ratio (TCP / embedded), as a table
and one JSON line. Latency is measured from writing a request to reading its
reply, in the client.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from motet.engine import open_client
from motet.engine.example import CreateUser, PlaceOrder, UpdateUser

from .seed_workload import (
    QUANTILES,
    PlaceOrderSpec,
    Workload,
    make_workload,
    quantiles,
    run_motet,
)

_SERVING = re.compile(r"on 127\.0\.0\.1:(\d+)")
_START_TIMEOUT = 30.0


def _start_server(data: Path, durability: str, *options: str) -> tuple[subprocess.Popen[str], int]:
    """Start ``motet serve`` on a free port (with more ``options``, e.g.
    ``--role reader``); return the process and its port."""
    motet = Path(sys.executable).parent / "motet"
    command = [str(motet)] if motet.exists() else [
        sys.executable, "-c", "import sys; from motet.engine.cli import main; sys.exit(main())"
    ]  # fmt: skip
    process = subprocess.Popen(
        [
            *command,
            "serve",
            "--data",
            str(data),
            "--port",
            "0",
            "--no-metrics",
            "--durability",
            durability,
            "--log-level",
            "info",
            *options,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + _START_TIMEOUT
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise RuntimeError(f"motet serve exited with {process.wait()} before serving")
        match = _SERVING.search(line)
        if match and "serving" in line:
            return process, int(match.group(1))
    process.kill()
    raise RuntimeError("motet serve did not start in time")


async def _drive(
    port: int, commands: Sequence[Any], connections: int, in_flight: int
) -> dict[str, Any]:
    """Send ``commands`` over ``connections`` connections, ``in_flight`` each."""
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

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for c in range(connections):
            nursery.start_soon(_connection, port, commands[c::connections], in_flight, worker)
    seconds = time.perf_counter() - started
    ms = [latency * 1000.0 for latency in latencies]
    return {
        "commands": len(latencies),
        "seconds": seconds,
        "commands_per_s": len(latencies) / seconds,
        "errors": errors,
        **quantiles(ms, QUANTILES),
    }


async def _connection(port: int, commands: Sequence[Any], in_flight: int, worker: Any) -> None:
    async with open_client("127.0.0.1", port) as client, trio.open_nursery() as nursery:
        for i in range(in_flight):
            nursery.start_soon(worker, client, commands[i::in_flight])


async def _run_tcp(
    port: int, workload: Workload, connections: int, in_flight: int
) -> dict[str, Any]:
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
    phase_a = await _drive(port, creates, connections, in_flight)
    phase_b = await _drive(port, mixed, connections, in_flight)
    return {"phase_a": phase_a, "phase_b": phase_b}


def run_tcp(
    users: int, commands: int, seed: int, *, connections: int, in_flight: int, durability: str
) -> dict[str, Any]:
    """Run the seed workload against a fresh ``motet serve`` and return its figures."""
    workload = make_workload(users, commands, seed)
    with tempfile.TemporaryDirectory(prefix="motet-tcp-") as tmp:
        process, port = _start_server(Path(tmp) / "data", durability)
        try:
            return trio.run(_run_tcp, port, workload, connections, in_flight)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Run both measurements and print the table and the JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tcp_workload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=125, help="pipelined per connection")
    parser.add_argument("--durability", choices=("sync", "none"), default="sync")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for name in ("users", "commands", "connections", "in_flight"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    print("running the workload over TCP ...", file=sys.stderr)
    tcp = run_tcp(
        args.users,
        args.commands,
        args.seed,
        connections=args.connections,
        in_flight=args.in_flight,
        durability=args.durability,
    )
    print("running the same workload embedded ...", file=sys.stderr)
    embedded = run_motet(
        args.users,
        args.commands,
        args.seed,
        clients=args.connections * args.in_flight,
        durability=args.durability,
    )
    ratio = tcp["phase_b"]["commands_per_s"] / embedded["phase_b"]["commands_per_s"]
    print(
        f"Seed workload: {args.users:,} users, {args.commands:,} commands, "
        f"{args.connections} connections x {args.in_flight} in flight, "
        f"durability {args.durability}"
    )
    print(f"{'run':<10}{'phase':<7}{'cmd/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for label, result in (("tcp", tcp), ("embedded", embedded)):
        for phase in ("phase_a", "phase_b"):
            p = result[phase]
            errors = p["errors"] if isinstance(p["errors"], int) else sum(p["errors"].values())
            print(
                f"{label:<10}{phase[-1].upper():<7}{p['commands_per_s']:>10,.0f}"
                f"{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}{errors:>8,}"
            )
    print(f"phase B over TCP / embedded: {ratio:.0%}")
    report = {
        "workload": vars(args),
        "tcp": tcp,
        "embedded": {"phase_a": embedded["phase_a"], "phase_b": embedded["phase_b"]},
        "ratio_phase_b": ratio,
    }
    print(json.dumps(report, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
