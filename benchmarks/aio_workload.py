"""The seed workload through the asyncio engine, next to the trio engine.

Run from the repository root::

    python -m benchmarks.aio_workload                    # 10,000 users, 100,000 commands
    python -m benchmarks.aio_workload --commands 20000 --loop uvloop

The workload is ``benchmarks.seed_workload``'s (same generator, same seed):
phase A creates ``--users`` users, phase B sends ``--commands`` commands (80 %
PlaceOrder, 20 % UpdateUser), each phase from ``--clients`` concurrent tasks
that await every ``send`` before the next. It runs first through
``motet.engine.aio.open_engine`` under ``asyncio.run`` (``--loop uvloop`` for
uvloop's loop), with asyncio tasks, then through the trio engine
(``seed_workload.run_motet``), each on a fresh LMDB store, and prints both
rates, their latencies and the ratio asyncio / trio, as a table and one JSON
line (sorted keys). ``--rounds N`` repeats both, alternating which runs first,
and reports each engine's best round (the machine's other load varies a lot
from one run to the next). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from motet.engine import CommandRejected, Overloaded
from motet.engine.aio import Engine, open_engine
from motet.engine.example import CreateUser, PlaceOrder, UpdateUser, app
from motet.storage import Durability

from .seed_workload import QUANTILES, PlaceOrderSpec, Workload, make_workload, quantiles, run_motet

__all__ = ["main", "run_aio"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _drive(engine: Engine, commands: Sequence[Any], clients: int) -> dict[str, Any]:
    """Send ``commands`` from ``clients`` asyncio tasks; the phase's figures."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def client(share: Sequence[Any]) -> None:
        for command in share:
            started = time.perf_counter()
            try:
                await engine.send(command)
            except (CommandRejected, Overloaded) as exc:
                errors[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for i in range(clients):
            group.create_task(client(commands[i::clients]))
    seconds = time.perf_counter() - started
    ms = [latency * 1000.0 for latency in latencies]
    return {
        "commands": len(latencies),
        "seconds": seconds,
        "commands_per_s": len(latencies) / seconds if seconds > 0 else None,
        **quantiles(ms, QUANTILES),
        "errors": dict(errors),
    }


async def _run_aio_async(
    workload: Workload, clients: int, durability: Durability, path: Path
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
    async with open_engine(path, app, durability=durability) as engine:
        _log(f"aio: phase A, {len(creates):,} CreateUser from {clients:,} asyncio tasks")
        phase_a = await _drive(engine, creates, clients)
        before = engine.statistics()
        _log(f"aio: phase B, {len(mixed):,} commands from {clients:,} asyncio tasks")
        phase_b = await _drive(engine, mixed, clients)
        after = engine.statistics()
    commits = after.commits - before.commits
    phase_b["commits"] = commits
    phase_b["mean_batch_commands"] = (
        (after.commands_committed - before.commands_committed) / commits if commits else None
    )
    return {"phase_a": phase_a, "phase_b": phase_b}


def run_aio(
    users: int,
    commands: int,
    seed: int,
    *,
    clients: int = 1_000,
    durability: Durability = "sync",
    loop: str = "asyncio",
) -> dict[str, Any]:
    """Run the seed workload through the asyncio engine (in a temporary LMDB
    store) and return its figures."""
    workload = make_workload(users, commands, seed)
    with tempfile.TemporaryDirectory(prefix="motet-aio-") as tmp:
        main = _run_aio_async(workload, clients, durability, Path(tmp) / "motet")
        if loop == "uvloop":
            import uvloop  # optional: only for --loop uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
        return asyncio.run(main)


def _row(engine: str, phase: str, p: dict[str, Any]) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return (
        f"{engine:<10}{phase:<7}{p['commands']:>10,}{p['seconds']:>9.2f}"
        f"{fmt(p['commands_per_s'], ',.0f'):>10}{fmt(p['p50_ms'], '.2f'):>9}"
        f"{fmt(p['p99_ms'], '.2f'):>9}{fmt(p['p999_ms'], '.2f'):>10}"
        f"{sum(p['errors'].values()):>8,}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run both engines as the command line asks; print the table and JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.aio_workload",
        description="The seed workload through the asyncio engine and the trio engine.",
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=1_000)
    parser.add_argument("--durability", choices=("sync", "none"), default="sync")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run both engines this many times, alternating which goes first; "
        "the best round of each is reported",
    )
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    for name in ("users", "commands", "clients", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    # Alternate which engine runs first, so that a change in the machine's
    # load during the run does not always favour the same one.
    aio_runs: list[dict[str, Any]] = []
    trio_runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        order = ("aio", "trio") if round_ % 2 == 0 else ("trio", "aio")
        for engine in order:
            if engine == "aio":
                aio_runs.append(
                    run_aio(
                        args.users,
                        args.commands,
                        args.seed,
                        clients=args.clients,
                        durability=args.durability,
                        loop=args.loop,
                    )
                )
            else:
                trio_runs.append(
                    run_motet(
                        args.users,
                        args.commands,
                        args.seed,
                        clients=args.clients,
                        durability=args.durability,
                    )
                )
    # The best round of each engine: the one least disturbed by other load.
    aio = max(aio_runs, key=lambda run: run["phase_b"]["commands_per_s"] or 0)
    trio_run = max(trio_runs, key=lambda run: run["phase_b"]["commands_per_s"] or 0)
    aio_rate = aio["phase_b"]["commands_per_s"]
    trio_rate = trio_run["phase_b"]["commands_per_s"]
    report = {
        "workload": {
            "users": args.users,
            "commands": args.commands,
            "clients": args.clients,
            "durability": args.durability,
            "seed": args.seed,
            "loop": args.loop,
            "rounds": args.rounds,
            "python": platform.python_version(),
        },
        "aio": aio,
        "trio": {"phase_a": trio_run["phase_a"], "phase_b": trio_run["phase_b"]},
        "ratio_phase_b": aio_rate / trio_rate if aio_rate and trio_rate else None,
        "phase_b_rates": {
            "aio": [run["phase_b"]["commands_per_s"] for run in aio_runs],
            "trio": [run["phase_b"]["commands_per_s"] for run in trio_runs],
        },
    }
    if not args.json_only:
        w = report["workload"]
        print(
            f"Seed workload: {w['users']:,} users, then {w['commands']:,} commands, "
            f"{w['clients']:,} clients, durability {w['durability']}, loop {w['loop']}"
        )
        header = f"{'engine':<10}{'phase':<7}{'commands':>10}{'seconds':>9}{'cmd/s':>10}"
        header += f"{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'errors':>8}"
        print(header)
        print("-" * len(header))
        for engine in ("aio", "trio"):
            for phase, label in (("phase_a", "A"), ("phase_b", "B")):
                print(_row(engine, label, report[engine][phase]))
        rates = report["phase_b_rates"]
        if args.rounds > 1:
            for engine in ("aio", "trio"):
                print(
                    f"{engine} phase B cmd/s per round: "
                    + ", ".join(f"{r:,.0f}" for r in rates[engine])
                )
        if report["ratio_phase_b"] is not None:
            print(
                f"phase B commands/s, asyncio engine / trio engine: {report['ratio_phase_b']:.2f}"
            )
    print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
