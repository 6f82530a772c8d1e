"""Consumer-group benchmark: acked events per second with 1, 2 and 4 member
processes, commit-to-member latency, and filtered log reads, all over TCP.

Run from the repository root::

    python -m benchmarks.consumer_groups                  # 2,000 users, 20,000 orders
    python -m benchmarks.consumer_groups --orders 5000 --members 1 2

It starts ``motet serve`` (durability ``sync`` by default) on a fresh data
directory and writes the users and orders (pipelined, 8 connections). Then:

* **throughput**: for each member count, a fresh group (``types:
  ["OrderPlaced"]``) and that many member processes, each one connection
  that acks every event as it comes (acks pipelined, prefetch
  ``--prefetch``); every member joins, then all start together, timed until
  the group has acked every order (read from ``status``). Each ack is answered only once the
  group's progress holding it is saved (fsynced in ``sync`` mode).
* **latency**: one caught-up member while orders are written at
  ``--rate`` per second; for each event, its commit time (the event's
  ``time``) to its arrival at the member: p50, p99 (ms).
* **filtered reads**: ``read`` of the log with ``types: ["UserCreated"]``
  (a rare type: 1 in 11 events) page by page over the whole log: log
  records looked at per second, and the time per page.
* **category index**: in this process, an LMDB store of ``--index-events``
  events of which 1 in 100 is of a rare category: reading that category
  through the store's category index against filtering a scan of the log.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from motet.engine import open_client
from motet.engine.example import CreateUser, PlaceOrder

from .seed_workload import quantiles
from .tcp_workload import _start_server

_GROUP_TYPES = ["OrderPlaced"]


async def _write(port: int, commands: Sequence[Any], connections: int = 8) -> None:
    async def connection(share: Sequence[Any]) -> None:
        async with open_client("127.0.0.1", port) as client, trio.open_nursery() as nursery:
            for lane in range(50):
                nursery.start_soon(send_all, client, share[lane::50])

    async def send_all(client: Any, share: Sequence[Any]) -> None:
        for command in share:
            await client.send(command)

    async with trio.open_nursery() as nursery:
        for c in range(connections):
            nursery.start_soon(connection, commands[c::connections])


def _seed_commands(users: int, orders: int) -> tuple[list[Any], list[Any]]:
    creates = [
        CreateUser(user_id=f"u{u}", name=f"User {u}", email=f"u{u}@example.org", password="pw")
        for u in range(users)
    ]
    placed = [
        PlaceOrder(user_id=f"u{o % users}", order_id=f"o{o}", amount=1.0 + o % 50)
        for o in range(orders)
    ]
    return creates, placed


async def _member(port: int, group: str, prefetch: int) -> None:
    """One member process: ack every delivery as it arrives (acks pipelined)."""
    async with (
        open_client("127.0.0.1", port) as client,
        trio.open_nursery() as nursery,
        client.consume(group, types=_GROUP_TYPES, prefetch=prefetch) as events,
    ):
        print("joined", flush=True)
        # Every member starts at once, when the parent says so.
        await trio.to_thread.run_sync(sys.stdin.readline)
        async for event in events:
            nursery.start_soon(event.ack)


async def _acked(client: Any, group: str) -> int:
    for status in (await client.status()).groups:
        if status.name == group:
            return int(status.acked)
    return 0


async def _throughput(port: int, members: int, orders: int, prefetch: int) -> dict[str, Any]:
    group = f"bench-{members}"
    command = [sys.executable, "-m", "benchmarks.consumer_groups", "--member", str(port), group]
    command += ["--prefetch", str(prefetch)]
    processes = []
    async with open_client("127.0.0.1", port) as client:
        try:
            for _ in range(members):
                process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                processes.append(process)
            # Timed from when every member has joined (not from process start-up).
            for process in processes:
                assert process.stdout is not None
                await trio.to_thread.run_sync(process.stdout.readline)
            started = time.perf_counter()
            for process in processes:
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()
            before = await _acked(client, group)
            while (acked := await _acked(client, group)) < orders:
                await trio.sleep(0.01)
            seconds = time.perf_counter() - started
            [status] = [g for g in (await client.status()).groups if g.name == group]
        finally:
            for process in processes:
                process.kill()
                process.wait()
    timed = acked - before
    return {
        "members": members,
        "events": timed,
        "seconds": seconds,
        "events_per_s": timed / seconds,
        "redelivered": status.redelivered,
    }


async def _latency(port: int, users: int, count: int, rate: float) -> dict[str, Any]:
    latencies: list[float] = []
    async with (
        open_client("127.0.0.1", port) as member,
        open_client("127.0.0.1", port) as writer,
        member.consume("latency", types=_GROUP_TYPES, prefetch=1000) as events,
    ):
        caught_up = trio.Event()

        async def consume() -> None:
            async for event in events:
                if caught_up.is_set():
                    latencies.append(time.time() - event.time.timestamp())
                await event.ack()
                if len(latencies) >= count:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            while (await member.status()).groups[-1].lag_events:
                await trio.sleep(0.05)
            caught_up.set()
            for n in range(count):
                nursery.start_soon(
                    writer.send,
                    PlaceOrder(user_id=f"u{n % users}", order_id=f"late{n}", amount=2.0),
                )
                await trio.sleep(1 / rate)
    ms = [latency * 1000.0 for latency in latencies]
    return {"events": len(ms), **quantiles(ms, {"p50": 0.5, "p99": 0.99})}


async def _filtered_reads(port: int) -> dict[str, Any]:
    async with open_client("127.0.0.1", port) as client:
        head = (await client.status()).head_position
        position = 0
        pages = found = 0
        started = time.perf_counter()
        while position < head:
            events, position = await client.read_log(position, 1000, types=["UserCreated"])
            pages += 1
            found += len(events)
        seconds = time.perf_counter() - started
    return {
        "log_records": head,
        "matching": found,
        "pages": pages,
        "seconds": seconds,
        "records_per_s": head / seconds,
        "ms_per_page": seconds * 1000 / pages,
    }


def _category_index(directory: Path, events: int) -> dict[str, Any]:
    """A rare category (1 event in 100) read through the LMDB store's
    category index, against filtering a scan of the whole log."""
    from motet.storage import Append, LmdbStore, NewEvent

    store = LmdbStore(directory / "category-index", durability="none")
    try:
        payload = [NewEvent("Noted", 1, b"x" * 80)]
        for start in range(0, events, 1000):
            store.append_batch(
                [
                    Append(
                        f"Audit-{n}" if n % 100 == 0 else f"User-{n % 5000}",
                        store.stream_version(f"Audit-{n}" if n % 100 == 0 else f"User-{n % 5000}"),
                        payload,
                    )
                    for n in range(start, min(start + 1000, events))
                ],
                time.time(),
            )
        started = time.perf_counter()
        indexed = []
        position = 0
        while batch := store.read_category("Audit", position, 1000):
            indexed += batch
            position = batch[-1].position
        index_seconds = time.perf_counter() - started
        started = time.perf_counter()
        scanned = []
        position = 0
        while batch := store.read_all(position, 10_000):
            scanned += [e for e in batch if e.stream.startswith("Audit-")]
            position = batch[-1].position
        scan_seconds = time.perf_counter() - started
        assert indexed == scanned
    finally:
        store.close()
    return {
        "log_events": events,
        "category_events": len(indexed),
        "index_ms": index_seconds * 1000,
        "scan_ms": scan_seconds * 1000,
    }


async def _run(args: argparse.Namespace, port: int) -> dict[str, Any]:
    creates, placed = _seed_commands(args.users, args.orders)
    started = time.perf_counter()
    await _write(port, creates)
    await _write(port, placed)
    seeded = time.perf_counter() - started
    runs = [await _throughput(port, m, args.orders, args.prefetch) for m in args.members]
    latency = await _latency(port, args.users, args.latency_events, args.rate)
    reads = await _filtered_reads(port)
    return {
        "users": args.users,
        "orders": args.orders,
        "durability": args.durability,
        "seed_seconds": seeded,
        "throughput": runs,
        "latency_ms": latency,
        "filtered_read": reads,
    }


def _report(result: dict[str, Any]) -> None:
    print(
        f"consumer groups over TCP: {result['orders']:,} OrderPlaced in "
        f"{result['users']:,} streams, durability {result['durability']}"
    )
    print(f"{'members':>8}{'events/s acked':>16}{'seconds':>10}{'redelivered':>13}")
    for run in result["throughput"]:
        print(
            f"{run['members']:>8}{run['events_per_s']:>16,.0f}{run['seconds']:>10.2f}"
            f"{run['redelivered']:>13,}"
        )
    latency = result["latency_ms"]
    print(
        f"commit -> member latency over {latency['events']:,} events: "
        f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms"
    )
    index = result["category_index"]
    print(
        f"category index (LMDB, in process): {index['category_events']:,} events of a rare "
        f"category in a log of {index['log_events']:,}: {index['index_ms']:.1f} ms through "
        f"the index, {index['scan_ms']:.1f} ms scanning the log"
    )
    reads = result["filtered_read"]
    print(
        f"filtered read (types=UserCreated): {reads['log_records']:,} log records in "
        f"{reads['seconds']:.2f} s = {reads['records_per_s']:,.0f} records/s, "
        f"{reads['ms_per_page']:.1f} ms per page, {reads['matching']:,} matches"
    )
    print(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.consumer_groups",
        description="Consumer-group throughput, latency and filtered reads over TCP.",
    )
    parser.add_argument("--users", type=int, default=2_000, help="streams (default: 2,000)")
    parser.add_argument(
        "--orders", type=int, default=20_000, help="OrderPlaced events (default: 20,000)"
    )
    parser.add_argument(
        "--members", type=int, nargs="+", default=[1, 2, 4], help="member counts (1 2 4)"
    )
    parser.add_argument("--prefetch", type=int, default=500, help="per member (default: 500)")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="orders/s in the latency run (default: 200)"
    )
    parser.add_argument(
        "--latency-events", type=int, default=1000, help="events timed (default: 1,000)"
    )
    parser.add_argument("--durability", choices=["sync", "none"], default="sync")
    parser.add_argument(
        "--index-events",
        type=int,
        default=200_000,
        help="log size for the category-index comparison (default: 200,000)",
    )
    parser.add_argument("--member", nargs=2, metavar=("PORT", "GROUP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.member is not None:
        port, group = args.member
        trio.run(_member, int(port), group, args.prefetch)
        return 0
    with tempfile.TemporaryDirectory(prefix="motet-groups-") as directory:
        process, port = _start_server(Path(directory) / "data", args.durability)
        try:
            result = trio.run(_run, args, port)
        finally:
            process.terminate()
            process.wait(30)
        result["category_index"] = _category_index(Path(directory), args.index_events)
    _report(result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
