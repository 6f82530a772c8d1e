"""Motet's synchronous storage layer: codec, event stores, records, errors.

Nothing here knows about trio: every call blocks, and the actors layer runs
the writing ones in a worker thread.
"""

from .codec import Codec, Upcaster, event_version_of, tag_of
from .errors import (
    CodecError,
    CommandIdReused,
    Conflict,
    InvalidKey,
    MotetError,
    StorageError,
    StoreFormatError,
)
from .lmdb_store import FORMAT, LmdbStore
from .memory_store import MemoryStore
from .records import (
    Append,
    AppendResult,
    Checkpoint,
    Metadata,
    NewEvent,
    RecordedEvent,
    Snapshot,
    StoredAck,
    StoredEvent,
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

__all__ = [
    "FORMAT",
    "MAX_COMMAND_ID_BYTES",
    "MAX_KEY_BYTES",
    "MAX_STREAM_BYTES",
    "Append",
    "AppendResult",
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
    "MotetError",
    "NewEvent",
    "RecordedEvent",
    "Snapshot",
    "StorageError",
    "StoreFormatError",
    "StoredAck",
    "StoredEvent",
    "Upcaster",
    "check_key",
    "event_version_of",
    "plan_appends",
    "tag_of",
]
