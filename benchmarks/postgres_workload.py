"""The PostgreSQL store's append path and catch-up reads, beside LMDB's.

Run from the repository root::

    python -m benchmarks.postgres_workload                    # a throwaway cluster
    python -m benchmarks.postgres_workload --url postgresql://user@host/db
    python -m benchmarks.postgres_workload --batches 50 --durability none

The append path alone, shaped like the engine's writer: batches of 1,000
appends (one example-app event each, ~95 bytes), every append with a command
id and its expected version, 1 % with a snapshot, each batch committed by one
``append_batch`` call in a worker thread, one after the other. Then catch-up:
``read_all`` in pages of 10,000 from the start of the log to its head,
records decoded. The same batches go to an LMDB store in the same run, for
the ratio.

Without ``--url`` it starts a cluster of its own (initdb into a temporary
directory, fsync on), as the tests do, and removes it afterwards. With
``--url`` the tables go to a new schema, dropped at the end.

Then, on fresh streams and not timed, three more batches with libpq's trace
of the writer connection on: the statements each batch sent and the round
trips it waited for.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg

from motet.engine.example import OrderPlaced, UserCreated, app
from motet.storage import Append, LmdbStore, Metadata, Snapshot
from motet.storage.postgres_store import PostgresStore

_BATCH = 1000
_PAGE = 10_000


def make_batches(batches: int, users: int, seed: int, prefix: str = "u") -> list[list[Append]]:
    """``batches`` lists of ``_BATCH`` appends to ``users`` streams (user ids
    ``{prefix}{n}``): the first append to a stream creates the user, later
    ones place orders."""
    codec = app.codec()
    rng = random.Random(seed)
    versions = [0] * users
    made: list[list[Append]] = []
    now = time.time()
    n = 0
    for _ in range(batches):
        batch: list[Append] = []
        chosen: set[int] = set()
        while len(batch) < _BATCH:
            user = n if n < users else rng.randrange(users)
            n += 1
            # One append per stream per batch: the writer sends each actor's
            # next command only after the previous one committed.
            if user in chosen:
                continue
            chosen.add(user)
            if versions[user] == 0:
                event: Any = UserCreated(
                    user_id=f"{prefix}{user}",
                    name=f"User {user}",
                    email=f"{prefix}{user}@example.org",
                    password_hash="x" * 32,
                    city="Oslo",
                )
            else:
                event = OrderPlaced(
                    user_id=f"{prefix}{user}",
                    order_id=f"o{n}",
                    amount=float(rng.randint(1, 500)),
                    at=now,
                )
            snapshot = (
                Snapshot(versions[user] + 1, 1, b"\x81\xa5state" + bytes(60))
                if rng.random() < 0.01
                else None
            )
            batch.append(
                Append(
                    f"User-{prefix}{user}",
                    versions[user],
                    [codec.encode_event(event)],
                    Metadata(command_id=uuid.UUID(int=rng.getrandbits(128)).hex),
                    snapshot,
                )
            )
            versions[user] += 1
        made.append(batch)
    return made


def run_appends(store: Any, batches: Sequence[list[Append]]) -> float:
    """Commit every batch in a worker thread, one at a time; events per second."""
    with ThreadPoolExecutor(1, thread_name_prefix="writer") as writer:
        started = time.perf_counter()
        for batch in batches:
            results = writer.submit(store.append_batch, batch, time.time()).result()
            assert len(results) == len(batch)
        seconds = time.perf_counter() - started
    return sum(len(b) for b in batches) / seconds


def count_round_trips(store: PostgresStore, batches: Sequence[list[Append]]) -> dict[str, float]:
    """Append ``batches`` (not timed) with libpq's trace of the writer
    connection on; per batch, the statements it sent and the round trips it
    waited for (each ReadyForQuery closes one, each COPY's CopyInResponse
    another)."""
    store.append_batch(batches[0], time.time())  # the writer connection is open
    writer = store._writer
    assert writer is not None
    with tempfile.TemporaryFile("w+") as trace:
        writer.pgconn.trace(trace.fileno())
        try:
            for batch in batches[1:]:
                store.append_batch(batch, time.time())
        finally:
            writer.pgconn.untrace()
        trace.seek(0)
        messages = Counter(re.findall(r"\t([FB])\t\d+\t(\w+)", trace.read()))
    traced = len(batches) - 1
    return {
        "statements_per_batch": (messages["F", "Bind"] + messages["F", "Query"]) / traced,
        "round_trips_per_batch": (messages["B", "ReadyForQuery"] + messages["B", "CopyInResponse"])
        / traced,
    }


def run_catch_up(store: Any) -> float:
    """Read the whole log in pages of ``_PAGE``; events per second."""
    started = time.perf_counter()
    after = 0
    count = 0
    while page := store.read_all(after_position=after, limit=_PAGE):
        after = page[-1].position
        count += len(page)
    seconds = time.perf_counter() - started
    assert count == store.head_position
    return count / seconds


@contextmanager
def postgres_url(url: str | None) -> Iterator[str]:
    """A URL whose connections use a new, empty schema; dropped afterwards."""
    if url is None:
        sys.path.insert(0, ".")
        from tests.support.postgres import running_cluster

        with running_cluster() as cluster, postgres_url(cluster.conninfo()) as inner:
            yield inner
        return
    schema = f"motet_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a PostgreSQL database to use (default: a throwaway one)")
    parser.add_argument("--batches", type=int, default=100, help="batches of 1,000 appends")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--durability", choices=["sync", "none"], default="sync")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    batches = make_batches(args.batches, args.users, args.seed)
    figures: dict[str, float] = {}
    with postgres_url(args.url) as url:
        store = PostgresStore(url, durability=args.durability)
        try:
            figures["postgres_append_events_per_s"] = run_appends(store, batches)
            figures["postgres_catch_up_events_per_s"] = run_catch_up(store)
            # Fresh streams of their own, after the timed ones.
            figures.update(count_round_trips(store, make_batches(4, 1_000, args.seed + 1, "t")))
        finally:
            store.close()
    with tempfile.TemporaryDirectory(prefix="motet-bench-") as directory:
        lmdb = LmdbStore(directory, durability=args.durability)
        try:
            figures["lmdb_append_events_per_s"] = run_appends(lmdb, batches)
            figures["lmdb_catch_up_events_per_s"] = run_catch_up(lmdb)
        finally:
            lmdb.close()

    events = args.batches * _BATCH
    print(f"{events:,} events in batches of {_BATCH:,} appends, durability {args.durability}")
    print(f"{'':<12}{'append events/s':>18}{'catch-up events/s':>20}")
    for name in ("postgres", "lmdb"):
        append = figures[f"{name}_append_events_per_s"]
        catch_up = figures[f"{name}_catch_up_events_per_s"]
        print(f"{name:<12}{append:>18,.0f}{catch_up:>20,.0f}")
    ratio = figures["postgres_append_events_per_s"] / figures["lmdb_append_events_per_s"]
    print(f"PostgreSQL / LMDB append ratio: {ratio:.2f}")
    print(
        f"PostgreSQL, per append batch: {figures['statements_per_batch']:.1f} statements, "
        f"{figures['round_trips_per_batch']:.1f} round trips"
    )
    print(json.dumps({"events": events, "durability": args.durability, **figures}))


if __name__ == "__main__":
    main()
