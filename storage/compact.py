"""Give the disk space of removed records back: a compacting copy of an LMDB store.

LMDB reuses the pages that deleted records free, but never shrinks
``data.mdb``. :func:`compact_store` writes a compacted copy (LMDB's
``mdb_env_copy2`` with ``MDB_CP_COMPACT``: live pages only, packed) beside
the store and swaps it in. It runs offline: it takes the store's writer lock
(so it refuses while a server has the store open) and refuses while a
reader process has a read transaction open. LMDB-only: a PostgreSQL store
gives the space of deleted rows back through ``VACUUM`` (see
docs/design.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

from .errors import StorageError, StoreFormatError

__all__ = ["Compaction", "compact_store"]

_COPY_DIRECTORY = "compact.tmp"


class Compaction(NamedTuple):
    """What :func:`compact_store` did: ``data.mdb``'s size before and after, in bytes."""

    before: int
    after: int


def compact_store(path: str | os.PathLike[str]) -> Compaction:
    """Compact the LMDB store at ``path`` in place; return the sizes.

    Raises :class:`StoreFormatError` when ``path`` holds no Motet store and
    :class:`StorageError` when another process has it open (a writer, or a
    reader in a transaction) or the copy cannot be written (e.g. the disk
    cannot hold a second copy). On failure the store is left as it was.
    """
    from .lmdb_store import LmdbStore

    directory = Path(path)
    data = directory / "data.mdb"
    if not data.is_file():
        raise StoreFormatError(f"{directory} holds no Motet store (no data.mdb)")
    before = data.stat().st_size
    # Opening for writing takes the writer lock: a running server makes this fail.
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
