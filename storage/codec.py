"""Encoding application messages to msgpack and back, with event upcasting.

Messages are ``msgspec.Struct`` types with an explicit string tag: the tag,
never a module path, is what the log records, so classes may move freely.
Each event type has a schema version (a ``ClassVar[int]`` named
``event_version``, 1 when absent); upcasters turn a stored payload of version
*n* into version *n + 1* so handlers only ever see the newest shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from .errors import CodecError
from .records import NewEvent, RecordedEvent, StoredEvent

__all__ = ["Codec", "Upcaster", "event_version_of", "tag_of"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns one stored payload (as a dict) of version n into version n + 1."""


def tag_of(cls: type) -> str:
    """Return the stable string tag of a message type; raise ``TypeError``
    when it is not a ``msgspec.Struct`` declared with ``tag="..."``."""
    config = getattr(cls, "__struct_config__", None)
    tag = getattr(config, "tag", None)
    if not isinstance(tag, str):
        raise TypeError(
            f"{cls.__qualname__} needs a stable tag: declare it as "
            f"class {cls.__name__}(msgspec.Struct, tag={cls.__name__!r})"
        )
    return tag


def event_version_of(cls: type) -> int:
    """Return the schema version of an event type (``event_version``, default 1)."""
    version = getattr(cls, "event_version", 1)
    if not isinstance(version, int) or version < 1:
        raise TypeError(f"{cls.__qualname__}.event_version must be an int >= 1, got {version!r}")
    return version


class _EventType:
    __slots__ = ("cls", "decoder", "tag", "tag_field", "version")

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.tag = tag_of(cls)
        self.tag_field: str = cls.__struct_config__.tag_field  # type: ignore[attr-defined]
        self.version = event_version_of(cls)
        self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(cls)


class Codec:
    """Encodes events to :class:`~motet.storage.records.NewEvent` and decodes stored
    events back into their registered types, upcasting old versions.

    Build one per application and reuse it: encoders and decoders are made
    once, here.
    """

    def __init__(
        self,
        event_types: Iterable[type],
        upcasters: Mapping[tuple[str, int], Upcaster] | None = None,
    ) -> None:
        self._types: dict[str, _EventType] = {}
        self._by_class: dict[type, _EventType] = {}
        for cls in event_types:
            entry = _EventType(cls)
            if entry.tag in self._types and self._types[entry.tag].cls is not cls:
                raise TypeError(
                    f"event tag {entry.tag!r} is used by both "
                    f"{self._types[entry.tag].cls.__qualname__} and {cls.__qualname__}"
                )
            self._types[entry.tag] = entry
            self._by_class[cls] = entry
        self._upcasters = dict(upcasters or {})
        for (tag, from_version), _ in self._upcasters.items():
            if tag not in self._types:
                raise TypeError(f"upcaster for unknown event tag {tag!r}")
            if not 1 <= from_version < self._types[tag].version:
                raise TypeError(
                    f"upcaster for {tag!r} version {from_version} is outside "
                    f"1..{self._types[tag].version - 1}"
                )
        for entry in self._types.values():
            missing = [v for v in range(1, entry.version) if (entry.tag, v) not in self._upcasters]
            if missing:
                raise TypeError(
                    f"event {entry.tag!r} is at version {entry.version} but has no "
                    f"upcaster from version(s) {missing}"
                )
        self._encoder = msgspec.msgpack.Encoder()
        self._untyped = msgspec.msgpack.Decoder()

    def __repr__(self) -> str:
        return f"<Codec events={len(self._types)} upcasters={len(self._upcasters)}>"

    @property
    def event_types(self) -> tuple[type, ...]:
        """The registered event classes."""
        return tuple(entry.cls for entry in self._types.values())

    def encode_event(self, event: Any) -> NewEvent:
        """Encode one event; raise ``TypeError`` when its type is not registered."""
        entry = self._by_class.get(type(event))
        if entry is None:
            raise TypeError(f"{type(event).__qualname__} is not a registered event type")
        return NewEvent(entry.tag, entry.version, self._encoder.encode(event))

    def decode_event(self, stored: StoredEvent) -> Any:
        """Decode a stored event's payload into its registered type, upcasting
        it when it was written by an older schema version.

        Raises :class:`~motet.storage.errors.CodecError` for an unknown tag, a
        version newer than the code, or bytes that do not decode.
        """
        return self.decode_payload(stored.type, stored.event_version, stored.data)

    def decode_record(self, stored: StoredEvent) -> RecordedEvent:
        """The stored event with its payload decoded (see :meth:`decode_event`)."""
        return RecordedEvent(
            stored.position,
            stored.stream,
            stored.version,
            stored.type,
            stored.event_version,
            stored.timestamp,
            stored.metadata,
            self.decode_payload(stored.type, stored.event_version, stored.data),
        )

    def decode_payload(self, tag: str, version: int, data: bytes) -> Any:
        """Decode one payload given its tag and schema version (see :meth:`decode_event`)."""
        entry = self._types.get(tag)
        if entry is None:
            raise CodecError(f"unknown event type {tag!r}")
        try:
            if version == entry.version:
                return entry.decoder.decode(data)
            if version > entry.version:
                raise CodecError(
                    f"event {tag!r} has version {version}, newer than this code's "
                    f"version {entry.version}"
                )
            payload = self._untyped.decode(data)
            if not isinstance(payload, dict):
                raise CodecError(
                    f"event {tag!r} version {version} does not decode: expected a map, "
                    f"got {type(payload).__name__}"
                )
            for from_version in range(version, entry.version):
                payload = self._upcasters[(tag, from_version)](payload)
            payload[entry.tag_field] = tag
            return msgspec.convert(payload, entry.cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CodecError(f"event {tag!r} version {version} does not decode: {exc}") from exc

    def encode(self, obj: Any) -> bytes:
        """Encode any msgspec-supported value (e.g. a state for a snapshot)."""
        return self._encoder.encode(obj)
