"""What keeps damaged store files from being read as data: checks of LMDB's
own metadata before the file is mapped, and a checksum on every log record.

LMDB maps ``data.mdb`` into memory; touching a page past the end of a
truncated file kills the process with SIGBUS. The two meta pages at the start
of the file record the page size and the last page in use
(``mm_last_pg``), so :func:`check_data_file` can refuse a short file before
LMDB maps it.

A log record is written as :data:`SEALED`, a CRC-32 (zlib) of the msgpack
record, big-endian, then the record. Records written before checksums start
with a msgpack array header instead (never :data:`SEALED`, a byte msgpack
does not use), so both are told apart by their first byte.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

from .errors import StorageError, StoreFormatError

__all__ = ["SEALED", "LmdbMeta", "check_data_file", "prepare_lock_file", "seal", "unseal"]

SEALED = 0xC1
"""First byte of a checksummed log record (msgpack never uses 0xC1)."""

_HEADER = struct.Struct(">BI")

# LMDB's meta page (lmdb.h / mdb.c, MDB_DATA_VERSION 1), little-endian on the
# platforms it runs on: a 16-byte page header (flags at 10), then MDB_meta:
# magic u32 at 16, version u32 at 20, the free DB's md_pad (the page size)
# at 40, mm_last_pg at 136, mm_txnid at 144.
_MDB_MAGIC = 0xBEEFC0DE
_MDB_DATA_VERSION = 1
_P_META = 0x08
_META_BYTES = 152
_LOCK_FILE_BYTES = 1 << 16


def seal(body: bytes) -> bytes:
    """The stored form of a log record: marker, CRC-32, record."""
    return _HEADER.pack(SEALED, zlib.crc32(body)) + body


def unseal(value: bytes | memoryview) -> bytes | memoryview:
    """The record inside a stored log value; raise ``ValueError`` saying what
    is wrong when its checksum does not match. Records written before
    checksums are returned as they are."""
    if not value or value[0] != SEALED:
        return value
    if len(value) < _HEADER.size:
        raise ValueError(f"the record is cut short ({len(value)} bytes)")
    _, expected = _HEADER.unpack_from(value)
    body = value[_HEADER.size :]
    found = zlib.crc32(body)
    if found != expected:
        raise ValueError(
            f"checksum mismatch (stored CRC-32 {expected:08x}, the bytes give {found:08x})"
        )
    return body


class LmdbMeta:
    """What one LMDB meta page says."""

    __slots__ = ("last_page", "page_size", "txnid")

    def __init__(self, page_size: int, last_page: int, txnid: int) -> None:
        self.page_size = page_size
        self.last_page = last_page
        self.txnid = txnid

    def __repr__(self) -> str:
        return f"<LmdbMeta page_size={self.page_size} last_page={self.last_page} txn={self.txnid}>"

    @property
    def needed_bytes(self) -> int:
        """How long the file must be for every page in use to be in it."""
        return (self.last_page + 1) * self.page_size


def _read_meta(raw: bytes, offset: int, path: Path, which: int) -> LmdbMeta:
    page = raw[offset : offset + _META_BYTES]
    if len(page) < _META_BYTES:
        raise StorageError(
            f"{path} is damaged: it is {len(raw)} bytes, too short to hold LMDB meta page "
            f"{which} (truncated?)"
        )
    (flags,) = struct.unpack_from("<H", page, 10)
    magic, version = struct.unpack_from("<II", page, 16)
    if magic != _MDB_MAGIC or not flags & _P_META:
        raise StoreFormatError(
            f"{path} is not an LMDB data file or its meta page {which} is damaged "
            f"(magic {magic:#x})"
        )
    if version != _MDB_DATA_VERSION:
        raise StoreFormatError(
            f"{path} has LMDB data version {version}; this build reads version {_MDB_DATA_VERSION}"
        )
    (page_size,) = struct.unpack_from("<I", page, 40)
    last_page, txnid = struct.unpack_from("<QQ", page, 136)
    if page_size < 512 or page_size & (page_size - 1):
        raise StorageError(f"{path} is damaged: meta page {which} gives page size {page_size}")
    return LmdbMeta(page_size, last_page, txnid)


def check_data_file(path: Path) -> LmdbMeta:
    """Check ``path`` (an LMDB ``data.mdb``) against its own meta pages before
    it is mapped; return the meta LMDB will use (the newer one).

    Raises :class:`StoreFormatError` when it is no LMDB data file and
    :class:`StorageError` when it is damaged: shorter than the pages its
    metadata says are in use (truncated), or with an impossible meta page.
    """
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            first = file.read(_META_BYTES)
            page_size = struct.unpack_from("<I", first, 40)[0] if len(first) >= 44 else 0
            if 512 <= page_size <= 1 << 16:
                file.seek(page_size)
                second = file.read(_META_BYTES)
            else:
                second = b""
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    meta = _read_meta(first, 0, path, 0)
    raw = bytearray(meta.page_size + len(second))
    raw[: len(first)] = first
    raw[meta.page_size :] = second
    other = _read_meta(bytes(raw), meta.page_size, path, 1)
    newest = max(meta, other, key=lambda m: m.txnid)
    if size < newest.needed_bytes:
        raise StorageError(
            f"{path} is damaged: it is {size:,} bytes but its LMDB metadata says pages up to "
            f"{newest.last_page:,} are in use ({newest.needed_bytes:,} bytes); the file was "
            "truncated or overwritten, restore it from a backup"
        )
    return newest


def prepare_lock_file(directory: Path) -> None:
    """Allocate the disk blocks of LMDB's ``lock.mdb`` before LMDB maps it.

    LMDB makes the lock file with ``ftruncate`` (a sparse file) and writes it
    through a memory map; on a full disk the first write to an unallocated
    page kills the process with SIGBUS. Allocating the blocks first turns a
    full disk into an error here. ``posix_fallocate`` keeps any content, so
    this is safe while another process uses the file.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    path = directory / "lock.mdb"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        created = True
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return  # e.g. read-only: LMDB will say what it needs
        created = False
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, _LOCK_FILE_BYTES)
    except OSError as exc:
        # An existing lock file has at least the pages LMDB wrote so far, so it
        # may go on; a new one would be all holes.
        if exc.errno == errno.ENOSPC and created:
            os.unlink(path)
            raise StorageError(
                f"the disk is full (no space left on device) while opening the store at "
                f"{directory}: nothing was changed"
            ) from None
    finally:
        os.close(fd)
