"""``motet verify``: check a whole store offline and say what is wrong where."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, default_data: str) -> None:
    """Add the ``verify`` subcommand to ``commands`` (argparse subparsers)."""
    verify = commands.add_parser(
        "verify",
        help="check a data directory: checksums, positions, index, versions, acks",
        description="Open a store read-only (safe beside a running server) and check every "
        "record: log checksums, gap-free positions, the stream index against the log, "
        "contiguous stream versions, acks pointing at existing events. Exit status 0 only "
        "when the store is sound, 1 when something is wrong.",
    )
    verify.add_argument(
        "--data", default=default_data, help="store directory (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``motet verify``; print each problem on a line of its own."""
    from motet.storage.verify import verify_store

    result = verify_store(args.data)
    if result.sound:
        removed = f", {result.removed:,} positions removed on purpose" if result.removed else ""
        print(
            f"{args.data}: sound ({result.events:,} events, {result.streams:,} streams, "
            f"{result.acks:,} acks{removed})"
        )
        return 0
    for problem in result.problems:
        sys.stderr.write(f"motet: {args.data}: {problem}\n")
    more = " (stopped there; more may be wrong)" if result.truncated else ""
    sys.stderr.write(
        f"motet: error: {args.data} is damaged: {len(result.problems):,} problem(s){more}\n"
    )
    return 1
