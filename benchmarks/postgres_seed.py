"""The seed workload on the PostgreSQL store, and through ``eventsourcing``'s
PostgreSQL module in the same run, for the ratio.

Run from the repository root::

    python -m benchmarks.postgres_seed                        # a throwaway cluster
    python -m benchmarks.postgres_seed --url postgresql://user@host/db
    python -m benchmarks.postgres_seed --users 2000 --commands 20000 --compare-commands 5000

The workload and the Motet runner are ``benchmarks.seed_workload``'s (phase A
creates users, phase B sends 80 % ``PlaceOrder`` / 20 % ``UpdateUser`` from
``--clients`` concurrent tasks), on one engine whose store is a
``postgresql://`` URL, durability ``sync`` (``synchronous_commit = on``: every
Ack waits for the commit's WAL flush). The comparison runs the same workload
(same seed) through the ``eventsourcing`` library's PostgreSQL module
(``eventsourcing.postgres``, the domain of ``benchmarks.eventsourcing_baseline``),
sequentially from one thread as its users call it, with the server's
``synchronous_commit`` (on). Each runs in a schema of its own.

Without ``--url`` a cluster is started (initdb into a temporary directory,
fsync on; tests/support/postgres.py) and removed afterwards; with ``--url``
the schemas are made there and dropped at the end. Prints a table (the seed
workload's) and one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

from .postgres_workload import postgres_url
from .seed_workload import (
    PlaceOrderSpec,
    _log,
    _peak_rss_mib,
    _run_motet_async,
    _time_calls,
    make_workload,
    print_table,
)

__all__ = ["main", "run_eventsourcing_postgres", "run_motet_postgres"]


@contextmanager
def _cluster_url(url: str | None) -> Iterator[str]:
    """``url``, or that of a throwaway cluster's ``postgres`` database."""
    if url is not None:
        yield url
        return
    sys.path.insert(0, ".")
    from tests.support.postgres import running_cluster

    with running_cluster() as cluster:
        yield cluster.conninfo()


def run_motet_postgres(
    url: str, users: int, commands: int, seed: int, *, clients: int
) -> dict[str, Any]:
    """The seed workload through one engine on the PostgreSQL store at
    ``url`` (an empty schema), durability ``sync``."""
    workload = make_workload(users, commands, seed)
    result: dict[str, Any] = trio.run(_run_motet_async, workload, clients, "sync", url, True, False)
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


def run_eventsourcing_postgres(url: str, users: int, commands: int, seed: int) -> dict[str, Any]:
    """The seed workload through ``eventsourcing.postgres``, in a new schema
    of the database at ``url`` (dropped afterwards)."""
    from benchmarks.eventsourcing_baseline import Users

    workload = make_workload(users, commands, seed)
    parts = conninfo_to_dict(url)
    schema = f"es_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        synchronous_commit = conn.execute("SHOW synchronous_commit").fetchone()
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(parts.get("dbname", "postgres")),
        "POSTGRES_HOST": str(parts.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(parts.get("port", "5432")),
        "POSTGRES_USER": str(parts.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(parts.get("password", "")),
        "POSTGRES_SCHEMA": schema,
        "CREATE_TABLE": "y",
        "AGGREGATE_CACHE_MAXSIZE": str(max(2 * users, 1_000)),
    }
    try:
        application = Users(env=env)
        try:
            _log(f"eventsourcing/postgres: phase A, {users:,} create_user, sequential")
            phase_a = _time_calls(
                partial(application.create_user, u.user_id, u.name, u.email, u.password, u.city)
                for u in workload.users
            )
            _log(f"eventsourcing/postgres: phase B, {commands:,} commands, sequential")
            phase_b = _time_calls(
                partial(application.place_order, c.user_id, c.order_id, c.amount)
                if isinstance(c, PlaceOrderSpec)
                else partial(application.update_user, c.user_id, city=c.city)
                for c in workload.commands
            )
        finally:
            application.close()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return {
        "phase_a": phase_a,
        "phase_b": phase_b,
        "commands": commands,
        "version": importlib.metadata.version("eventsourcing"),
        "synchronous_commit": None if synchronous_commit is None else synchronous_commit[0],
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run both engines as the command line asks; print the table and JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.postgres_seed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", help="a PostgreSQL database to use (default: a throwaway one)")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--compare-commands",
        type=int,
        metavar="N",
        help="phase-B commands for the eventsourcing run (default: --commands)",
    )
    parser.add_argument("--no-compare", action="store_true", help="run Motet only")
    args = parser.parse_args(argv)
    compare = not args.no_compare
    if compare and importlib.util.find_spec("eventsourcing") is None:
        parser.error("the comparison needs eventsourcing (pip install 'eventsourcing[postgres]')")

    report: dict[str, Any] = {
        "workload": {
            "users": args.users,
            "commands": args.commands,
            "clients": args.clients,
            "durability": "sync",
            "seed": args.seed,
            "store": "postgresql",
        },
        "eventsourcing": None,
        "ratio_phase_b": None,
    }
    with _cluster_url(args.url) as base:
        with postgres_url(base) as url:
            report["motet"] = run_motet_postgres(
                url, args.users, args.commands, args.seed, clients=args.clients
            )
        if compare:
            report["eventsourcing"] = run_eventsourcing_postgres(
                base, args.users, args.compare_commands or args.commands, args.seed
            )
            motet_rate = report["motet"]["phase_b"]["commands_per_s"]
            baseline_rate = report["eventsourcing"]["phase_b"]["commands_per_s"]
            if motet_rate and baseline_rate:
                report["ratio_phase_b"] = motet_rate / baseline_rate
    print("(PostgreSQL store, synchronous_commit = on)")
    print_table(report)
    print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
