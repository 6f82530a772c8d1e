"""``motet backup`` and ``motet restore``: a consistent copy of an LMDB store
taken while the server runs, and putting one back (see
:mod:`motet.storage.backup`)."""

from __future__ import annotations

import argparse
from typing import Any

from .errors import USAGE, fail

__all__ = ["add_parsers", "backup", "restore"]

_POSTGRES = (
    "motet {command} copies LMDB stores only; back a PostgreSQL store up with PostgreSQL's "
    "own tools: 'pg_dump --format=custom' (a logical copy of the database or of the store's "
    "schema, restored with pg_restore) or 'pg_basebackup' (a physical copy of the cluster, "
    "with point-in-time recovery), or move its events with 'motet export --store URL' and "
    "'motet import --store URL'"
)


def add_parsers(commands: Any, default_data: str) -> None:
    """Add the ``backup`` and ``restore`` subcommands to ``commands``."""
    backup = commands.add_parser(
        "backup",
        help="copy an LMDB store consistently, even while the server runs and writes",
        description="Copy the store at --data into DEST (a new or empty directory) as of one "
        "moment: every event committed up to it, nothing after it, with its indexes, command "
        "ids, snapshots and checkpoints. Safe while 'motet serve' writes to the store; the "
        "copy is compacted, verified, made durable and only then put at DEST. For PostgreSQL "
        "use pg_dump or pg_basebackup.",
    )
    backup.add_argument(
        "--data", default=default_data, help="store directory (default: %(default)s)"
    )
    backup.add_argument(
        "--store",
        metavar="URL",
        help="not for postgresql:// stores: they are backed up with pg_dump or pg_basebackup",
    )
    backup.add_argument("dest", metavar="DEST", help="the directory to write the backup to")
    restore = commands.add_parser(
        "restore",
        help="put a backup in place as a new store directory",
        description="Verify the backup at BACKUP, then copy it to --data, which must not "
        "exist or be empty (a restore never writes over a store). Start the server on --data "
        "afterwards.",
    )
    restore.add_argument("backup", metavar="BACKUP", help="a directory made by 'motet backup'")
    restore.add_argument(
        "--data", default=default_data, help="store directory to create (default: %(default)s)"
    )
    restore.add_argument(
        "--store",
        metavar="URL",
        help="not for postgresql:// stores: they are restored with pg_restore or from a base "
        "backup",
    )


def _refuse_postgres(args: argparse.Namespace) -> None:
    for location in (args.store, args.data):
        if location is not None and location.startswith(("postgresql://", "postgres://")):
            fail(_POSTGRES.format(command=args.command), USAGE)
    if args.store is not None:
        fail(
            f"--store takes a postgresql:// URL, got {args.store!r}; give an LMDB directory "
            "with --data",
            USAGE,
        )


def backup(args: argparse.Namespace) -> int:
    """Run ``motet backup``."""
    from motet.storage.backup import backup_store
    from motet.storage.errors import MotetError

    _refuse_postgres(args)
    try:
        result = backup_store(args.data, args.dest)
    except MotetError as exc:
        fail(str(exc))
    checked = result.verification
    print(
        f"backed up {args.data} to {result.path}: {checked.events:,} events up to position "
        f"{result.head:,}, {checked.streams:,} streams, {checked.acks:,} acks, "
        f"{result.bytes:,} bytes; verified sound"
    )
    return 0


def restore(args: argparse.Namespace) -> int:
    """Run ``motet restore``."""
    from motet.storage.backup import restore_store
    from motet.storage.errors import MotetError

    _refuse_postgres(args)
    try:
        result = restore_store(args.backup, args.data)
    except MotetError as exc:
        fail(str(exc))
    checked = result.verification
    print(
        f"restored {args.backup} to {result.path}: {checked.events:,} events up to position "
        f"{result.head:,}, {checked.streams:,} streams; verified sound"
    )
    return 0
