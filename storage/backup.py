"""Backups of an LMDB store: a consistent copy taken while the server runs,
and putting one back.

:func:`backup_store` opens the store read-only (beside a running writer, as
``motet inspect`` does) and has LMDB write a compacted copy of it as of one
read transaction: every commit up to some position, nothing after it, the
stream index, command ids, snapshots and checkpoints agreeing with that
log. The copy is built beside its destination, checked with
:func:`~motet.storage.verify.verify_store`, made durable and only then renamed
into place, so a destination either holds a sound store or nothing.

PostgreSQL stores are backed up with PostgreSQL's tools (``pg_dump``,
``pg_basebackup``); see docs/design.md, "Backup and moving data".
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

from .errors import StorageError, StoreFormatError
from .lmdb_store import LmdbStore
from .transfer import check_empty_directory, move_into_place
from .verify import Verification, verify_store

__all__ = ["BackupResult", "backup_store", "restore_store"]


class BackupResult(NamedTuple):
    """What a backup or a restore wrote: where, and what the check found."""

    path: Path
    head: int
    """The position of the last event in the copy."""
    bytes: int
    """The size of the copy's data file."""
    verification: Verification


def backup_store(
    data: str | os.PathLike[str] | LmdbStore, destination: str | os.PathLike[str]
) -> BackupResult:
    """Copy the LMDB store at ``data`` into ``destination`` (a directory that
    does not exist or is empty), safely while a server writes to it.
    ``data`` may also be a store this process has open (LMDB lets a process
    open an environment once), e.g. an embedded engine's.

    Raises :class:`~motet.storage.errors.StoreNotEmpty` when ``destination``
    holds anything, :class:`~motet.storage.errors.StoreFormatError` when
    ``data`` is no Motet store, and :class:`~motet.storage.errors.StorageError`
    when the copy fails or does not verify (then nothing is left at
    ``destination``).
    """
    target = Path(destination)
    check_empty_directory(target)
    staging = _staging(target, "backup")
    source = data if isinstance(data, LmdbStore) else LmdbStore(data, readonly=True)
    try:
        staging.mkdir(parents=True)
        source.copy_to(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if source is not data:
            source.close()
    return _finish(staging, target, f"the backup of {source.path}")


def restore_store(backup: str | os.PathLike[str], data: str | os.PathLike[str]) -> BackupResult:
    """Put the backup at ``backup`` in place as the store at ``data`` (a
    directory that does not exist or is empty): the backup is verified first,
    copied beside ``data``, verified again and renamed into place.

    Raises :class:`~motet.storage.errors.StoreNotEmpty` when ``data`` holds
    anything (a restore never writes over a store) and
    :class:`~motet.storage.errors.StoreFormatError` when ``backup`` is not a
    sound Motet store.
    """
    source = Path(backup)
    target = Path(data)
    check_empty_directory(target)
    checked = verify_store(source)
    if not checked.sound:
        raise StoreFormatError(f"{source} is not a sound backup: {_problems(checked)}")
    staging = _staging(target, "restore")
    try:
        staging.mkdir(parents=True)
        shutil.copyfile(source / "data.mdb", staging / "data.mdb")
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StorageError(f"cannot copy {source} to {staging}: {exc}") from exc
    return _finish(staging, target, f"the copy of {source}")


def _staging(target: Path, what: str) -> Path:
    staging = target.parent / f".{target.name}.{what}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)  # left by one of ours that was killed
    return staging


def _finish(staging: Path, target: Path, what: str) -> BackupResult:
    """Verify the copy at ``staging``, make it durable and rename it to ``target``."""
    try:
        checked = verify_store(staging)
        if not checked.sound:
            raise StorageError(f"{what} does not verify: {_problems(checked)}")
        data_file = staging / "data.mdb"
        # The copy is written without fsync; it must be on disk before it is
        # called a backup. The lock file is the copy's own, never copied.
        _fsync(data_file)
        (staging / "lock.mdb").unlink(missing_ok=True)
        size = data_file.stat().st_size
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into_place(staging, target)
    return BackupResult(target, _head(checked), size, checked)


def _head(checked: Verification) -> int:
    # A sound log is gap-free from 1, so its head is its number of events.
    return checked.events


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _problems(checked: Verification) -> str:
    shown = "; ".join(str(p) for p in checked.problems[:3])
    more = len(checked.problems) - 3
    return shown + (f"; and {more:,} more (run 'motet verify')" if more > 0 else "")
