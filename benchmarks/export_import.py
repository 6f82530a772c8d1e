"""Export, import and backup rates of an LMDB store.

Run from the repository root::

    python -m benchmarks.export_import                    # 100,000 events
    python -m benchmarks.export_import --events 1000000

It writes a log of example-app events straight through the store (the same
log as ``benchmarks.catchup``: ``UserCreated`` for each user, then
``OrderPlaced``/``UserUpdated``), then measures, each as ``motet`` does it:

* **export**: every event decoded by the app's codec and written as NDJSON
  to a file (``motet export --out``);
* **import**: that file read back into a new LMDB directory, every line
  checked, re-encoded and committed in batches (``motet import --data``);
* **re-export**: the imported store exported again, which must give the
  same bytes;
* **backup**: a compacted, verified copy of the store (``motet backup``).

Peak RSS is read after each step: it stays flat, as both directions stream.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.catchup import build_log
from motet.engine.example import app
from motet.storage import LmdbStore
from motet.storage.backup import backup_store
from motet.storage.transfer import DEFAULT_BATCH, export_events, import_into_directory


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _export(path: Path, out: Path, batch: int) -> tuple[float, str]:
    store = LmdbStore(path, readonly=True)
    started = time.perf_counter()
    with out.open("wb") as file:
        summary = export_events(store, app.codec(), file, batch_size=batch)
    seconds = time.perf_counter() - started
    store.close()
    return seconds, summary.sha256


def main(argv: Sequence[str] | None = None) -> None:
    """Parse options, run the measurements, print the table and JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export_import",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=100_000, help="log length")
    parser.add_argument("--users", type=int, default=10_000, help="distinct users")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="events per batch")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.events < args.users or args.users < 1:
        parser.error("--events must be >= --users >= 1")
    with tempfile.TemporaryDirectory(prefix="motet-export-") as tmp:
        source = Path(tmp) / "source"
        exported = Path(tmp) / "events.ndjson"
        print(f"writing {args.events:,} events ...", file=sys.stderr)
        build_log(source, args.events, args.users, args.seed)
        rss_built = _peak_rss_mib()

        export_s, sha256 = _export(source, exported, args.batch)
        rss_exported = _peak_rss_mib()

        started = time.perf_counter()
        with exported.open("rb") as file:
            summary = import_into_directory(
                file, Path(tmp) / "imported", app.codec(), batch_size=args.batch
            )
        import_s = time.perf_counter() - started
        rss_imported = _peak_rss_mib()

        reexport_s, resha256 = _export(
            Path(tmp) / "imported", Path(tmp) / "again.ndjson", args.batch
        )
        same = resha256 == sha256 and (
            hashlib.sha256(exported.read_bytes()).digest()
            == hashlib.sha256((Path(tmp) / "again.ndjson").read_bytes()).digest()
        )

        started = time.perf_counter()
        backup = backup_store(source, Path(tmp) / "backup")
        backup_s = time.perf_counter() - started
        file_bytes = exported.stat().st_size
        store_bytes = (source / "data.mdb").stat().st_size
    events = summary.events
    report = {
        "events": events,
        "export_seconds": export_s,
        "export_events_per_s": events / export_s,
        "import_seconds": import_s,
        "import_events_per_s": events / import_s,
        "reexport_events_per_s": events / reexport_s,
        "reexport_identical": same,
        "backup_seconds": backup_s,
        "backup_bytes": backup.bytes,
        "store_bytes": store_bytes,
        "export_file_bytes": file_bytes,
        "peak_rss_mib": {
            "after_build": rss_built,
            "after_export": rss_exported,
            "after_import": rss_imported,
        },
    }
    print(f"{'measure':<32}{'value':>16}")
    print(f"{'events':<32}{events:>16,}")
    print(f"{'export (events/s)':<32}{events / export_s:>16,.0f}")
    print(f"{'import (events/s)':<32}{events / import_s:>16,.0f}")
    print(f"{'re-export (events/s)':<32}{events / reexport_s:>16,.0f}")
    print(f"{'re-export identical':<32}{same!s:>16}")
    print(f"{'export file (MiB)':<32}{file_bytes / 2**20:>16,.1f}")
    print(f"{'store data.mdb (MiB)':<32}{store_bytes / 2**20:>16,.1f}")
    print(f"{'backup incl. verify (s)':<32}{backup_s:>16.2f}")
    print(f"{'backup copy (MiB)':<32}{backup.bytes / 2**20:>16,.1f}")
    print(f"{'peak RSS after build (MiB)':<32}{rss_built:>16,.0f}")
    print(f"{'peak RSS after export (MiB)':<32}{rss_exported:>16,.0f}")
    print(f"{'peak RSS after import (MiB)':<32}{rss_imported:>16,.0f}")
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
