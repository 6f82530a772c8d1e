"""Projection catch-up and restart benchmark.

Run from the repository root::

    python -m benchmarks.catchup                  # 1,000,000 events, 10,000 users
    python -m benchmarks.catchup --events 200000
    python -m benchmarks.catchup --postgres --events 300000   # a throwaway cluster
    python -m benchmarks.catchup --url postgresql://user@host/db

It writes a log of example-app events straight through the store (10,000
``UserCreated`` then ``OrderPlaced``/``UserUpdated``, durability ``none``,
large batches), then measures:

* **catch-up**: ``open_engine`` on that store with no saved read model, until
  the ``users`` projection has applied the whole log — events folded per
  second into the example read model;
* **reopen**: close the engine (which saves the read model with its
  position), open it again and time until the projection is caught up.

With ``--postgres`` (a throwaway cluster, fsync on) or ``--url`` the log is
written to a PostgreSQL store (a new schema, dropped at the end) and the
engine catches up from it. Prints a table and one JSON line; the CPU seconds
are this process's (the engine's), not the server's.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from motet.engine import open_engine
from motet.engine.example import OrderPlaced, UserCreated, UserUpdated, app
from motet.storage import Append, LmdbStore
from motet.storage.postgres_store import PostgresStore

_CITIES = ("Oslo", "Lima", "Pune", "Kyiv", "Accra", "Quito")


def build_log(path: Path | str, events: int, users: int, seed: int) -> None:
    """Write ``events`` example events for ``users`` users into a new store
    (an LMDB directory, or a ``postgresql://`` URL)."""
    codec = app.codec()
    rng = random.Random(seed)
    store: Any = (
        LmdbStore(path, durability="none")
        if isinstance(path, Path)
        else PostgresStore(path, durability="none")
    )
    versions = [0] * users
    batch: list[Append] = []
    now = time.time()

    def flush() -> None:
        store.append_batch(batch, now)
        batch.clear()

    for i in range(events):
        if i < users:
            user, event = (
                i,
                UserCreated(
                    user_id=f"u{i}",
                    name=f"User {i}",
                    email=f"u{i}@example.org",
                    password_hash="x",
                    city=rng.choice(_CITIES),
                ),
            )
        else:
            user = rng.randrange(users)
            event = (
                OrderPlaced(
                    user_id=f"u{user}",
                    order_id=f"o{i}",
                    amount=float(rng.randint(1, 500)),
                    at=now,
                )
                if rng.random() < 0.8
                else UserUpdated(user_id=f"u{user}", city=rng.choice(_CITIES))
            )
        batch.append(Append(f"User-u{user}", versions[user], [codec.encode_event(event)]))
        versions[user] += 1
        if len(batch) >= 10_000:
            flush()
    if batch:
        flush()
    store.close()


async def _time_until_caught_up(path: Path | str) -> tuple[float, int, int, float]:
    """Open the engine; return (seconds until caught up, head, start
    position, CPU seconds of this process meanwhile)."""
    started = time.perf_counter()
    cpu = time.process_time()
    async with open_engine(path, app, durability="none") as engine:
        projection = engine.projection("users")
        start = projection.position
        await projection.wait_for(engine.head_position)
        return (
            time.perf_counter() - started,
            engine.head_position,
            start,
            time.process_time() - cpu,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse options, run both measurements, print the table and JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.catchup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="log length")
    parser.add_argument("--users", type=int, default=10_000, help="distinct users")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL cluster")
    parser.add_argument("--url", help="on a PostgreSQL store in a new schema of this database")
    args = parser.parse_args(argv)
    if args.events < args.users or args.users < 1:
        parser.error("--events must be >= --users >= 1")
    with _store_location(args.url, args.postgres) as path:
        print(f"writing {args.events:,} events ...", file=sys.stderr)
        build_log(path, args.events, args.users, args.seed)
        catchup_s, head, start, catchup_cpu = trio.run(_time_until_caught_up, path)
        assert start == 0, "a fresh store has no saved read model"
        reopen_s, _, restored, _ = trio.run(_time_until_caught_up, path)
    report = {
        "store": "lmdb" if isinstance(path, Path) else "postgresql",
        "events": head,
        "users": args.users,
        "catchup_seconds": catchup_s,
        "catchup_events_per_s": head / catchup_s,
        "catchup_cpu_s_per_1k_events": catchup_cpu * 1000 / max(head, 1),
        "reopen_seconds": reopen_s,
        "reopen_restored_position": restored,
    }
    print(f"{'measure':<28}{'value':>16}   ({report['store']})")
    print(f"{'events in log':<28}{head:>16,}")
    print(f"{'catch-up from 0 (s)':<28}{catchup_s:>16.2f}")
    print(f"{'catch-up rate (events/s)':<28}{head / catchup_s:>16,.0f}")
    print(f"{'catch-up CPU s/1k events':<28}{report['catchup_cpu_s_per_1k_events']:>16.4f}")
    print(f"{'reopen to caught up (s)':<28}{reopen_s:>16.3f}")
    print(f"{'restored at position':<28}{restored:>16,}")
    print(json.dumps(report, sort_keys=True))


@contextmanager
def _store_location(url: str | None, postgres: bool) -> Iterator[Path | str]:
    """A new store's location: a temporary LMDB directory, or a new schema
    of ``url`` or of a throwaway cluster (``postgres``)."""
    if url is None and not postgres:
        with tempfile.TemporaryDirectory(prefix="motet-catchup-") as tmp:
            yield Path(tmp) / "store"
        return
    from .postgres_workload import postgres_url

    with postgres_url(url) as store_url:
        yield store_url


if __name__ == "__main__":
    main()
