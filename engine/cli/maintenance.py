"""The commands that remove events: ``motet delete-stream`` and ``motet
retention`` (both ask a running server, with the full-access token), and
``motet compact`` (offline: it rewrites an LMDB store no process has open)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .errors import fail

__all__ = ["compact", "delete_stream", "retention"]


def _ask(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the server; its result, or end the command with
    the server's error message."""
    from .remote import _connect

    connection, _ = _connect(args)
    try:
        reply = connection.request(request)
    finally:
        connection.close()
    if not reply.get("ok"):
        error = reply.get("error") or {}
        fail(f"{error.get('code', 'error')}: {error.get('message', reply)}")
    result: dict[str, Any] = reply["result"]
    return result


def delete_stream(args: argparse.Namespace) -> int:
    """Run ``motet delete-stream``: delete one stream on the server."""
    result = _ask(args, {"op": "delete_stream", "stream": args.stream, "hard": args.hard})
    if args.json:
        print(json.dumps(result, sort_keys=True))
    elif result["hard"]:
        print(
            f"deleted {result['stream']} at version {result['version']}: "
            f"{result['removed']} events removed"
        )
    else:
        print(
            f"deleted {result['stream']} at version {result['version']} (a tombstone: "
            "its events stay, its commands are refused)"
        )
    return 0


def retention(args: argparse.Namespace) -> int:
    """Run ``motet retention``: apply the app's retention on the server now."""
    result = _ask(args, {"op": "apply_retention"})
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    categories = ", ".join(f"{name} {count:,}" for name, count in result["by_category"].items())
    print(
        f"removed {result['removed']:,} events from {result['truncated']:,} of "
        f"{result['streams']:,} streams" + (f" ({categories})" if categories else "")
    )
    return 0


def compact(args: argparse.Namespace) -> int:
    """Run ``motet compact``: rewrite the store at ``--data`` to give back the
    space of removed events."""
    from motet.storage.compact import compact_store
    from motet.storage.errors import MotetError

    try:
        result = compact_store(args.data, repack=not args.lmdb_copy)
    except MotetError as exc:
        fail(str(exc))
    saved = result.before - result.after
    print(
        f"{args.data}/data.mdb: {result.before:,} bytes before, {result.after:,} after "
        f"({saved:,} bytes given back)"
    )
    return 0
