"""The error hierarchy's root and the storage layer's errors.

Every error Motet raises on purpose derives from :class:`MotetError`, so an
application can catch Motet's failures without catching its own bugs.
"""

from __future__ import annotations

__all__ = [
    "CodecError",
    "CommandIdReused",
    "Conflict",
    "InvalidKey",
    "MotetError",
    "StorageError",
    "StoreFormatError",
]


class MotetError(Exception):
    """Root of every error Motet raises on purpose."""


class StorageError(MotetError):
    """The store could not do what was asked: the disk, the files or the
    environment are at fault, not the caller's data (e.g. the disk is full)."""


class StoreFormatError(StorageError):
    """The directory given is not a Motet store this version can open: it is a
    file, holds something else, or was written by an unknown format version.
    The operator's fault: point Motet at the right directory."""


class Conflict(MotetError):
    """An append's expected stream version did not match the stream's actual
    version. The caller's fault (a stale read or a concurrent writer): reload
    the stream and decide again."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream!r} is at version {actual}, expected version {expected}")
        self.stream = stream
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[type[Conflict], tuple[str, int, int]]:
        return (type(self), (self.stream, self.expected, self.actual))


class CodecError(MotetError):
    """Bytes could not be turned back into a registered message type: an
    unknown type tag, a version newer than the code, or corrupt data."""


class InvalidKey(MotetError, ValueError):
    """A stream id, aggregate id or command id that cannot be a store key:
    empty, not text, holding NUL, or longer than its limit in UTF-8 bytes.
    The caller's fault (a ``ValueError``, so the wire says ``invalid``)."""


class CommandIdReused(MotetError, ValueError):
    """A command id already taken by a different command. A retry must be the
    same command (same type, same stream, same data); anything else needs its
    own command id. The caller's fault (a ``ValueError``: ``invalid``)."""

    def __init__(self, command_id: str, stream: str, command_type: str | None, got: str) -> None:
        first = f"a {command_type} command" if command_type else "a command"
        super().__init__(
            f"command_id {command_id!r} was already used by {first} on stream {stream!r}; "
            f"a retry must be the same command, got {got} (use a new command id for a new "
            "command)"
        )
        self.command_id = command_id
        self.stream = stream
        self.command_type = command_type
        self.got = got

    def __reduce__(self) -> tuple[type[CommandIdReused], tuple[str, str, str | None, str]]:
        return (type(self), (self.command_id, self.stream, self.command_type, self.got))
