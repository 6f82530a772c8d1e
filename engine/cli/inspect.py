"""``motet inspect``: read a data directory offline.

The store is opened read-only, so this is safe beside a running server and
never creates anything where there is no store.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .apps import load_app
from .errors import USAGE, fail

if TYPE_CHECKING:
    from motet.storage.lmdb_store import LmdbStore

__all__ = ["inspect"]


def inspect(args: argparse.Namespace) -> int:
    """Run ``motet inspect``: print the store's head, streams and checkpoints,
    or the events of ``--stream``."""
    from motet.storage.errors import MotetError
    from motet.storage.lmdb_store import LmdbStore

    if args.limit < 1:
        fail(f"--limit must be >= 1, got {args.limit}", USAGE)
    if args.from_version < 0:
        fail(f"--from must be >= 0, got {args.from_version}", USAGE)
    try:
        store = LmdbStore(args.data, readonly=True)
    except MotetError as exc:
        fail(str(exc))
    try:
        if args.stream:
            return _print_stream(store, args)
        return _print_store(store, args)
    except MotetError as exc:  # e.g. a damaged record: one line, not a traceback
        fail(str(exc))
    finally:
        store.close()


def _print_store(store: LmdbStore, args: argparse.Namespace) -> int:
    streams = store.streams()
    checkpoints = {}
    for name in store.checkpoint_names():
        checkpoint = store.get_checkpoint(name)
        if checkpoint is not None:
            checkpoints[name] = checkpoint.position
    removed = sum(last - first + 1 for first, last in store.removed_runs())
    if args.json:
        summary: dict[str, object] = {
            "head_position": store.head_position,
            "streams": len(streams),
            "first_streams": dict(streams[: args.limit]),
            "checkpoints": checkpoints,
        }
        if removed:
            summary["removed_positions"] = removed
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    print(f"store          {args.data}")
    print(f"head position  {store.head_position:,}")
    if removed:
        print(f"removed        {removed:,} positions (hard deletes, retention)")
    print(f"streams        {len(streams):,}")
    for name, position in sorted(checkpoints.items()):
        print(f"checkpoint     {name} at position {position:,}")
    if streams:
        print(f"\n{'stream':<40}{'version':>10}")
        for stream, version in streams[: args.limit]:
            print(f"{stream:<40}{version:>10,}")
        if len(streams) > args.limit:
            print(f"... {len(streams) - args.limit:,} more (use --limit)")
    return 0


def _print_stream(store: LmdbStore, args: argparse.Namespace) -> int:
    import datetime

    import msgspec

    from motet.storage.errors import CodecError

    # With the store's keys: personal fields decrypt (or read as redacted).
    codec = load_app(args.app).codec(keys=store)
    untyped = msgspec.msgpack.Decoder()
    events = store.read_stream(args.stream, args.from_version, args.limit)
    if not events and store.stream_version(args.stream) == 0:
        fail(f"no stream {args.stream!r} in {args.data}")
    deletion = store.stream_deletion(args.stream)
    rows = []
    for stored in events:
        try:
            data = msgspec.to_builtins(codec.decode_event(stored))
        except CodecError:
            data = untyped.decode(stored.data)
        time = datetime.datetime.fromtimestamp(stored.timestamp, datetime.UTC)
        rows.append(
            {
                "version": stored.version,
                "position": stored.position,
                "type": stored.type,
                "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "data": data,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if deletion is not None and deletion.deleted:
        how = f"hard, {deletion.removed:,} events removed" if deletion.hard else "a tombstone"
        print(f"deleted at version {deletion.version:,} ({how})")
    elif deletion is not None:
        print(f"versions up to {deletion.removed_through:,} removed by retention")
    for row in rows:
        print(f"v{row['version']:<6} @{row['position']:<10} {row['time']}  {row['type']}")
        print(f"         {json.dumps(row['data'], sort_keys=True, default=str)}")
    return 0
