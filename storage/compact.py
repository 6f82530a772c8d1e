"""Give the disk space of removed records back: a compacting copy of an LMDB store.

LMDB reuses the pages that deleted records free, but never shrinks
``data.mdb``. :func:`compact_store` writes a compacted copy beside the store
and swaps it in. LMDB's own compacting copy (``mdb_env_copy2`` with
``MDB_CP_COMPACT``, ``repack=False``) leaves out free pages but copies the
others as they are, so pages half emptied by deleting every other event stay
half empty; the default (``repack=True``) rewrites every record in key
order into a new environment instead (LMDB's append mode fills each page),
which gives back the space of removed records wherever they were.

It runs offline: it takes the store's writer lock (so it refuses while a
server has the store open) and refuses while a reader process has a read
transaction open. LMDB-only: a PostgreSQL store
gives the space of deleted rows back through ``VACUUM`` (see
docs/design.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from .errors import StorageError, StoreFormatError

__all__ = ["Compaction", "compact_store"]

_COPY_DIRECTORY = "compact.tmp"


class Compaction(NamedTuple):
    """What :func:`compact_store` did: ``data.mdb``'s size before and after, in bytes."""

    before: int
    after: int


def compact_store(path: str | os.PathLike[str], *, repack: bool = True) -> Compaction:
    """Compact the LMDB store at ``path`` in place; return the sizes.

    ``repack`` rewrites every record into fresh pages (see the module
    docstring); ``False`` uses LMDB's own compacting copy. Raises
    :class:`StoreFormatError` when ``path`` holds no Motet store and
    :class:`StorageError` when another process has it open (a writer, or a
    reader in a transaction) or the copy cannot be written (e.g. the disk
    cannot hold a second copy). On failure the store is left as it was.
    """
    from .lmdb_store import LmdbStore, _lock_for_writing

    directory = Path(path)
    data = directory / "data.mdb"
    if not data.is_file():
        raise StoreFormatError(f"{directory} holds no Motet store (no data.mdb)")
    before = data.stat().st_size
    # The writer lock first, on a descriptor of our own: it says "in use" for
    # a server in this process too, where LMDB would only say "already open".
    probe = _lock_for_writing(directory)
    if probe is not None:
        os.close(probe)
    store = LmdbStore(directory, durability="sync")
    copy = directory / _COPY_DIRECTORY
    try:
        env = store._env
        readers = env.readers().strip()
        if readers and "no active readers" not in readers:
            raise StorageError(
                f"{directory} is being read by another process (e.g. motet serve --role "
                "reader, or motet inspect): stop it before compacting"
            )
        if copy.exists():
            shutil.rmtree(copy)  # left by an interrupted compaction
        copy.mkdir()
        try:
            if repack:
                _rewrite(env, copy)
            else:
                env.copy(str(copy), compact=True)
            with open(copy / "data.mdb", "rb") as file:
                os.fsync(file.fileno())
        except Exception as exc:
            shutil.rmtree(copy, ignore_errors=True)
            raise StorageError(f"cannot write a compacted copy of {directory}: {exc}") from exc
        # Swapped while the writer lock (held on the old file) keeps other
        # writers out; the stale lock file goes, so the next opener makes a
        # fresh one for the new file.
        os.replace(copy / "data.mdb", data)
        (directory / "lock.mdb").unlink(missing_ok=True)
        shutil.rmtree(copy, ignore_errors=True)
        _sync_directory(directory)
    finally:
        store.close()
    return Compaction(before, data.stat().st_size)


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_BATCH = 10_000
"""Records per ``putmulti`` call while rewriting."""


def _rewrite(source: Any, target: Path) -> None:
    """Copy every named database of ``source`` into a new environment at
    ``target``, record by record in key order (each page filled)."""
    import lmdb

    from .lmdb_store import _CATEGORIES, _DATABASES, _GROUPS, _LATER_DATABASES

    # Every database, consumer groups' progress included: a compacted store
    # must not deliver a group's acked events again.
    names = (*_DATABASES, *_LATER_DATABASES, _GROUPS, _CATEGORIES)
    info = source.info()
    env = lmdb.open(
        str(target), map_size=info["map_size"], max_dbs=len(names) + 2, subdir=True, sync=False
    )
    try:
        with source.begin(buffers=False) as reader:
            for name in names:
                try:
                    db = source.open_db(name, txn=reader, create=False)
                except lmdb.NotFoundError:
                    continue
                with env.begin(write=True) as writer:
                    copy = writer.cursor(env.open_db(name, txn=writer, create=True))
                    batch: list[tuple[bytes, bytes]] = []
                    for item in reader.cursor(db):
                        batch.append(item)
                        if len(batch) >= _BATCH:
                            copy.putmulti(batch, append=True)
                            batch = []
                    copy.putmulti(batch, append=True)
        env.sync(True)
    finally:
        env.close()
