"""Motet's synchronous storage layer: codec, event stores, records, errors.

Nothing here knows about trio: every call blocks, and the actors layer runs
the writing ones in a worker thread. The names below are imported when first
used (PEP 562), so ``motet.storage.errors`` costs no codec and only
:class:`LmdbStore` loads lmdb.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .codec import Codec, Upcaster, event_version_of, tag_of
    from .errors import (
        CodecError,
        CommandIdReused,
        Conflict,
        InvalidKey,
        MisplacedRecord,
        MotetError,
        StorageError,
        StorageFull,
        StoreFormatError,
        StreamDeleted,
    )
    from .lmdb_store import FORMAT, LmdbStore
    from .memory_store import MemoryStore
    from .records import (
        Ack,
        Append,
        Checkpoint,
        Metadata,
        NewEvent,
        RecordedEvent,
        Snapshot,
        StoredEvent,
        StreamDeletion,
    )
    from .store import (
        MAX_COMMAND_ID_BYTES,
        MAX_KEY_BYTES,
        MAX_STREAM_BYTES,
        Durability,
        EventStore,
        check_key,
        plan_appends,
    )

# Each public name and the module that defines it.
_MODULES: dict[str, str] = {
    **dict.fromkeys(["Codec", "Upcaster", "event_version_of", "tag_of"], "codec"),
    **dict.fromkeys(
        [
            "CodecError",
            "CommandIdReused",
            "Conflict",
            "InvalidKey",
            "MisplacedRecord",
            "MotetError",
            "StorageError",
            "StorageFull",
            "StoreFormatError",
            "StreamDeleted",
        ],
        "errors",
    ),
    **dict.fromkeys(["FORMAT", "LmdbStore"], "lmdb_store"),
    "MemoryStore": "memory_store",
    **dict.fromkeys(
        [
            "Append",
            "Ack",
            "Checkpoint",
            "Metadata",
            "NewEvent",
            "RecordedEvent",
            "Snapshot",
            "StoredEvent",
            "StreamDeletion",
        ],
        "records",
    ),
    **dict.fromkeys(
        [
            "MAX_COMMAND_ID_BYTES",
            "MAX_KEY_BYTES",
            "MAX_STREAM_BYTES",
            "Durability",
            "EventStore",
            "check_key",
            "plan_appends",
        ],
        "store",
    ),
}

__all__ = [
    "FORMAT",
    "MAX_COMMAND_ID_BYTES",
    "MAX_KEY_BYTES",
    "MAX_STREAM_BYTES",
    "Ack",
    "Append",
    "Checkpoint",
    "Codec",
    "CodecError",
    "CommandIdReused",
    "Conflict",
    "Durability",
    "EventStore",
    "InvalidKey",
    "LmdbStore",
    "MemoryStore",
    "Metadata",
    "MisplacedRecord",
    "MotetError",
    "NewEvent",
    "RecordedEvent",
    "Snapshot",
    "StorageError",
    "StorageFull",
    "StoreFormatError",
    "StoredEvent",
    "StreamDeleted",
    "StreamDeletion",
    "Upcaster",
    "check_key",
    "event_version_of",
    "plan_appends",
    "tag_of",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
