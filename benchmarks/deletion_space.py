"""Disk space after hard deletes: what LMDB keeps, and what ``compact`` gives back.

Run from the repository root::

    python -m benchmarks.deletion_space                    # 20,000 streams x 10 events
    python -m benchmarks.deletion_space --streams 5000 --events 20

It writes ``--streams`` streams of ``--events`` example ``OrderPlaced``-sized
events each (interleaved, as live traffic writes them; durability ``none``,
batches of 1,000 appends), then:

1. hard deletes every other stream (``LmdbStore.delete_stream(hard=True)``)
   and times it;
2. measures ``data.mdb`` before and after: the deleted records free pages
   for reuse, the file does not shrink;
3. compacts two copies of the store, with LMDB's own compacting copy
   (``compact_store(repack=False)``) and with the default rewrite
   (``repack=True``), and measures each file and time.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from motet.storage import Append, LmdbStore, Metadata, NewEvent
from motet.storage.compact import compact_store


def build(path: Path, streams: int, events: int) -> None:
    store = LmdbStore(path, durability="none")
    payload = b"o" * 120  # about an OrderPlaced with its ids and amount
    try:
        for version in range(events):
            batch: list[Append] = []
            for n in range(streams):
                batch.append(
                    Append(f"Order-{n}", version, [NewEvent("OrderPlaced", 1, payload)], Metadata())
                )
                if len(batch) == 1000:
                    store.append_batch(batch, time.time())
                    batch = []
            if batch:
                store.append_batch(batch, time.time())
    finally:
        store.close()


def size(path: Path) -> int:
    return (path / "data.mdb").stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deletion_space")
    parser.add_argument("--streams", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=10, help="events per stream")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="motet-deletion-space-"))
    try:
        store_path = root / "store"
        build(store_path, args.streams, args.events)
        written = size(store_path)
        store = LmdbStore(store_path, durability="none")
        started = time.perf_counter()
        for n in range(0, args.streams, 2):
            store.delete_stream(f"Order-{n}", hard=True, timestamp=time.time())
        delete_seconds = time.perf_counter() - started
        runs = len(store.removed_runs())
        store.close()
        deleted = size(store_path)
        figures: dict[str, object] = {
            "streams": args.streams,
            "events": args.streams * args.events,
            "bytes_written": written,
            "bytes_after_delete": deleted,
            "delete_seconds": round(delete_seconds, 3),
            "removed_runs": runs,
        }
        for repack in (False, True):
            copy = root / f"copy-{repack}"
            shutil.copytree(store_path, copy)
            started = time.perf_counter()
            result = compact_store(copy, repack=repack)
            name = "rewrite" if repack else "lmdb_copy"
            figures[f"bytes_after_{name}"] = result.after
            figures[f"{name}_seconds"] = round(time.perf_counter() - started, 3)
        print(f"{'streams x events':<34}{args.streams:,} x {args.events}")
        print(f"{'data.mdb written':<34}{written:>14,} bytes")
        print(f"{'after deleting half (hard)':<34}{deleted:>14,} bytes  ({delete_seconds:.2f} s)")
        for name, label in (("lmdb_copy", "compact --lmdb-copy"), ("rewrite", "compact")):
            after = figures[f"bytes_after_{name}"]
            seconds = figures[f"{name}_seconds"]
            print(f"{'after ' + label:<34}{after:>14,} bytes  ({seconds:.2f} s)")
        print(json.dumps(figures, sort_keys=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
