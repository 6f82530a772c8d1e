"""Query throughput with a reader process beside the writer, vs the writer alone.

Run from the repository root::

    python -m benchmarks.reader_workload                 # 2,000 users, 10 s per phase
    python -m benchmarks.reader_workload --clients 128 --seconds 20

It starts ``motet serve`` (the writer, durability ``sync``) on a fresh data
directory, creates ``--users`` users, then runs two phases of ``--seconds``
each, in one invocation:

1. **writer alone**: ``--clients`` tasks over ``--connections`` connections
   send ``GetUserById`` for random users to the writer, one at a time each,
   while ``--writers`` other tasks keep sending ``PlaceOrder`` to it;
2. **writer + reader**: a ``motet serve --role reader`` process is started on
   the same directory and waited for until it has caught up; then the same
   query clients, half of the connections to each process, and the same
   writes (to the writer only).

It prints queries/s (total and per process), query latency quantiles and
writes/s for both phases, and the ratio of the two query rates, as a table and
one JSON line. On a 2-core machine the reader's gain is bounded by the second
core, which the writer's fsyncs and the clients (this process) share.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from motet.engine import open_client
from motet.engine.example import CreateUser, GetUserById, PlaceOrder

from .seed_workload import QUANTILES, quantiles
from .tcp_workload import _start_server

__all__ = ["main", "run_phase"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _create_users(port: int, users: int) -> int:
    """Create ``users`` users on the writer; return the last Ack position."""
    last = 0
    async with open_client("127.0.0.1", port) as client:

        async def create(share: range) -> None:
            nonlocal last
            for i in share:
                ack = await client.send(
                    CreateUser(
                        user_id=f"u{i}", name=f"User {i}", email=f"u{i}@example.org", password="pw"
                    )
                )
                last = max(last, ack.position)

        async with trio.open_nursery() as nursery:
            for task in range(50):
                nursery.start_soon(create, range(task, users, 50))
    return last


async def run_phase(
    query_ports: Sequence[int],
    writer_port: int,
    *,
    users: int,
    clients: int,
    connections: int,
    writers: int,
    seconds: float,
    seed: int,
) -> dict[str, Any]:
    """Query for ``seconds`` from ``clients`` tasks over ``connections``
    connections spread round-robin over ``query_ports``, while ``writers``
    tasks send orders to ``writer_port``; return the figures."""
    latencies: list[float] = []
    per_port = dict.fromkeys(query_ports, 0)
    writes = 0
    errors = 0
    deadline = trio.current_time() + seconds
    rng = random.Random(seed)

    async def query(client: Any, port: int, picks: random.Random) -> None:
        nonlocal errors
        while trio.current_time() < deadline:
            user_id = f"u{picks.randrange(users)}"
            started = time.perf_counter()
            try:
                await client.ask(GetUserById(user_id=user_id))
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            per_port[port] += 1

    async def connection(port: int, tasks: int) -> None:
        async with open_client("127.0.0.1", port) as client, trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(query, client, port, random.Random(rng.random()))

    async def write(client: Any, task: int) -> None:
        nonlocal writes
        n = 0
        while trio.current_time() < deadline:
            n += 1
            user_id = f"u{(task * 7919 + n) % users}"
            await client.send(PlaceOrder(user_id=user_id, order_id=f"w{seed}-{task}-{n}", amount=1))
            writes += 1

    async def writing() -> None:
        async with open_client("127.0.0.1", writer_port) as client, trio.open_nursery() as nursery:
            for task in range(writers):
                nursery.start_soon(write, client, task)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writing)
        for c in range(connections):
            tasks = clients // connections + (c < clients % connections)
            nursery.start_soon(connection, query_ports[c % len(query_ports)], tasks)
    elapsed = time.perf_counter() - started
    ms = [latency * 1000.0 for latency in latencies]
    return {
        "queries": len(latencies),
        "seconds": elapsed,
        "queries_per_s": len(latencies) / elapsed,
        "queries_per_s_by_port": {str(port): n / elapsed for port, n in per_port.items()},
        "writes_per_s": writes / elapsed,
        "errors": errors,
        **quantiles(ms, QUANTILES),
    }


async def _wait_caught_up(port: int, position: int) -> None:
    async with open_client("127.0.0.1", port) as client:
        await client.ask(GetUserById(user_id="u0"), after=position, timeout=60)


def main(argv: Sequence[str] | None = None) -> None:
    """Run both phases as the command line asks; print the table and JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reader_workload", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=64, help="concurrent query tasks")
    parser.add_argument("--connections", type=int, default=4, help="query connections")
    parser.add_argument("--writers", type=int, default=8, help="tasks sending PlaceOrder")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--durability", choices=("sync", "none"), default="sync")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.connections < 2 or args.clients < args.connections:
        parser.error("need --connections >= 2 and --clients >= --connections")

    report: dict[str, Any] = {"workload": vars(args).copy()}
    options = {
        "users": args.users,
        "clients": args.clients,
        "connections": args.connections,
        "writers": args.writers,
        "seconds": args.seconds,
    }
    with tempfile.TemporaryDirectory(prefix="motet-reader-") as directory:
        data = Path(directory) / "data"
        writer, writer_port = _start_server(data, args.durability)
        reader = None
        try:
            _log(f"creating {args.users:,} users")
            trio.run(_create_users, writer_port, args.users)
            _log(f"phase 1: writer alone, {args.seconds} s")
            report["writer_alone"] = trio.run(
                lambda: run_phase([writer_port], writer_port, seed=args.seed, **options)
            )
            reader, reader_port = _start_server(data, args.durability, "--role", "reader")
            _log("waiting for the reader to catch up")

            async def head() -> int:
                async with open_client("127.0.0.1", writer_port) as client:
                    return (await client.status()).head_position

            trio.run(_wait_caught_up, reader_port, trio.run(head))
            _log(f"phase 2: writer + reader, {args.seconds} s")
            report["writer_and_reader"] = trio.run(
                lambda: run_phase(
                    [writer_port, reader_port], writer_port, seed=args.seed + 1, **options
                )
            )
        finally:
            for process in (reader, writer):
                if process is not None:
                    process.terminate()
                    process.wait(30)
    alone = report["writer_alone"]["queries_per_s"]
    both = report["writer_and_reader"]["queries_per_s"]
    report["ratio"] = both / alone if alone else None

    print(
        f"GetUserById over TCP: {args.clients} clients on {args.connections} connections, "
        f"{args.writers} PlaceOrder tasks, {args.seconds} s per phase, durability {args.durability}"
    )
    print(f"{'phase':<20}{'queries/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'writes/s':>10}{'errors':>8}")
    for key, label in (("writer_alone", "writer alone"), ("writer_and_reader", "writer + reader")):
        p = report[key]
        print(
            f"{label:<20}{p['queries_per_s']:>12,.0f}{p['p50_ms'] or 0:>9.2f}"
            f"{p['p99_ms'] or 0:>9.2f}{p['writes_per_s']:>10,.0f}{p['errors']:>8}"
        )
    by_port = list(report["writer_and_reader"]["queries_per_s_by_port"].values())
    print(
        f"writer + reader: {by_port[0]:,.0f} queries/s on the writer, "
        f"{by_port[1]:,.0f} on the reader"
    )
    if report["ratio"] is not None:
        print(f"queries/s, writer + reader / writer alone: {report['ratio']:.2f}")
    print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
