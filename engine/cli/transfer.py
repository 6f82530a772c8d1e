"""``motet export`` and ``motet import``: a log as NDJSON, to move it between
stores (LMDB to PostgreSQL and back, one machine to another, a new version).

The format and what is kept are in docs/design.md, "Backup and moving data";
the work is done by :mod:`motet.storage.transfer`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .apps import DEFAULT_APP, load_app
from .errors import USAGE, fail
from .progress import ProgressLine

if TYPE_CHECKING:
    from motet.storage.store import EventStore

__all__ = ["add_parsers", "export", "import_"]


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1,000,000, got {value}")
    return value


def _common(parser: argparse.ArgumentParser, default_data: str, doing: str) -> None:
    parser.add_argument(
        "--data", default=default_data, help="LMDB store directory (default: %(default)s)"
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help=f"{doing} a postgresql:// store (needs motet[postgres]) instead of --data",
    )
    parser.add_argument(
        "--app",
        default=DEFAULT_APP,
        help="the App whose event types decode and encode the events, as MODULE:ATTR "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch",
        type=_batch,
        default=10_000,
        metavar="N",
        help="events read or committed at a time (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress line and no summary on stderr"
    )


def add_parsers(commands: Any, default_data: str) -> None:
    """Add the ``export`` and ``import`` subcommands to ``commands``."""
    export = commands.add_parser(
        "export",
        help="write a store's events as NDJSON (one event per line) to move or keep them",
        description="Write every event of a store, up to its head when the export starts, as "
        "newline-delimited JSON: a line per deleted stream first, then one event per line "
        "(position, stream, version, type, event_version, time, metadata, data as the "
        "protocol's read shows it: personal fields in clear, redacted once forgotten) with a "
        "line per run of positions removed on purpose, then a summary line with the counts and "
        "a SHA-256 of the lines that 'motet import' checks. Safe "
        "beside a running server (the LMDB store is opened read-only). A progress line goes to "
        "stderr when it is a terminal.",
    )
    _common(export, default_data, "export")
    export.add_argument(
        "--out",
        metavar="FILE",
        help="write to FILE (made whole or not at all) instead of standard output",
    )
    importer = commands.add_parser(
        "import",
        help="fill an empty store from an export: positions, versions, times, command ids kept",
        description="Read a 'motet export' file into a new or empty store, keeping every "
        "event's position, stream version, time and metadata (a retried command id still gets "
        "its original Ack), removed positions and deleted streams. Events are re-encoded by "
        "--app's types, personal fields encrypted under the new store's keys; an unknown type, "
        "a line that is not an export line, a gap no removed line declares, a version out of "
        "order or a summary that does not match stops the import, naming the line. Into "
        "--data the store appears only once the whole file is in; into --store, the events "
        "before a bad line stay.",
    )
    importer.add_argument("file", metavar="FILE", help="the export to read ('-': standard input)")
    _common(importer, default_data, "import into")


def _open(args: argparse.Namespace, *, readonly: bool) -> EventStore:
    from motet.storage.errors import MotetError
    from motet.storage.lmdb_store import LmdbStore
    from motet.storage.postgres_store import is_postgres_url

    try:
        if args.store is None:
            if readonly and not Path(args.data).exists():
                fail(f"no store at {args.data} (no such directory)")
            return LmdbStore(args.data, readonly=readonly)
        if is_postgres_url(args.store):
            from motet.storage.postgres_store import PostgresStore

            return PostgresStore(args.store)
    except MotetError as exc:
        fail(str(exc))
    fail(
        f"--store must be a postgresql:// URL, got {args.store!r} (an LMDB store is given "
        "with --data)",
        USAGE,
    )


def export(args: argparse.Namespace) -> int:
    """Run ``motet export``."""
    from motet.storage.errors import MotetError
    from motet.storage.transfer import export_events

    app = load_app(args.app)
    store = _open(args, readonly=True)
    # The store's subject keys: personal fields are exported in clear, or
    # redacted for a forgotten subject.
    codec = app.codec(keys=store)
    progress = ProgressLine("exporting", quiet=args.quiet)
    out_path = Path(args.out) if args.out else None
    partial = out_path.with_name(f".{out_path.name}.partial") if out_path else None
    try:
        if partial is None:
            out: BinaryIO = sys.stdout.buffer
        else:
            try:
                out = open(partial, "wb")  # noqa: SIM115 - closed below, renamed on success
            except OSError as exc:
                fail(f"cannot write {args.out}: {exc}")
        try:
            summary = export_events(store, codec, out, batch_size=args.batch, progress=progress)
            out.flush()
            if partial is not None and out_path is not None:
                os.fsync(out.fileno())
                out.close()
                os.replace(partial, out_path)
        except BaseException:
            if partial is not None:
                out.close()
                partial.unlink(missing_ok=True)
            raise
    except MotetError as exc:
        progress.close()
        fail(str(exc))
    except BrokenPipeError:
        # The reader went away (e.g. '| head'): say so once, and keep Python
        # from failing again when it flushes standard output at exit.
        progress.close()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.stderr.write("motet: error: standard output was closed before the export ended\n")
        return 1
    finally:
        store.close()
    progress.close()
    if not args.quiet:
        where = args.out or "standard output"
        sys.stderr.write(
            f"exported {summary.events:,} events (positions 1..{summary.last_position:,}) to "
            f"{where} at {progress.rate(summary.events):,.0f} events/s; sha256 {summary.sha256}\n"
        )
    return 0


def import_(args: argparse.Namespace) -> int:
    """Run ``motet import``."""
    from motet.storage.errors import ExportFileError, MotetError
    from motet.storage.transfer import import_events, import_into_directory

    # Rebound to the target store's keys by the import, which encrypts
    # personal fields under them.
    codec = load_app(args.app).codec()
    if args.file == "-":
        file: BinaryIO = sys.stdin.buffer
        size = None
    else:
        try:
            file = open(args.file, "rb")  # noqa: SIM115 - closed below
            size = os.fstat(file.fileno()).st_size
        except OSError as exc:
            fail(f"cannot read {args.file}: {exc}")
    progress = ProgressLine("importing", quiet=args.quiet)
    options: dict[str, Any] = {"batch_size": args.batch, "progress": progress, "size": size}
    target = args.store if args.store else args.data
    try:
        if args.store is None:
            summary = import_into_directory(file, args.data, codec, **options)
        else:
            store = _open(args, readonly=False)
            try:
                summary = import_events(file, store, codec, **options)
            finally:
                store.close()
    except ExportFileError as exc:
        progress.close()
        where = "standard input" if args.file == "-" else args.file
        kept = "" if args.store is None else " (the events before it stay in the target)"
        fail(f"{where}: {exc}{kept}")
    except MotetError as exc:
        progress.close()
        fail(str(exc))
    finally:
        if file is not sys.stdin.buffer:
            file.close()
    progress.close()
    if not args.quiet:
        sys.stderr.write(
            f"imported {summary.events:,} events (positions 1..{summary.last_position:,}) "
            f"into {_shown(target)} at {progress.rate(summary.events):,.0f} events/s; "
            f"sha256 {summary.sha256} matches the file's summary\n"
        )
    return 0


def _shown(target: str) -> str:
    """A store location fit to print: a URL without its password."""
    if "://" in target and "@" in target:
        scheme, rest = target.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return target
