"""Encoding application messages to msgpack and back, with event upcasting.

Messages are ``msgspec.Struct`` types with an explicit string tag: the tag,
never a module path, is what the log records, so classes may move freely.
Each event type has a schema version (a ``ClassVar[int]`` named
``event_version``, 1 when absent); upcasters turn a stored payload of version
*n* into version *n + 1* so handlers only ever see the newest shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from .errors import CodecError
from .keyring import (
    FIELD_EXT,
    MODELS_KEY,
    Keyring,
    KeySource,
    NonceSource,
    SubjectKey,
    field_aad,
    is_extension,
)
from .personal import PersonalField, SubjectForgotten, check_subject, personal_fields_of
from .records import Append, NewEvent, RecordedEvent, Snapshot, StoredEvent

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


_CHECKED_SUBJECTS = 65_536
"""How many subjects :meth:`Codec.subjects_of` remembers as checked."""

_NIL = b"\xc0"
"""msgpack ``None``: a personal field left empty is neither encrypted nor redacted."""


class _PersonalField:
    __slots__ = ("decoder", "encode_name", "name", "redacted", "subject", "subject_encode_name")

    def __init__(self, field: PersonalField) -> None:
        self.name = field.name
        self.encode_name = field.encode_name
        self.subject = field.subject
        self.subject_encode_name = field.subject_encode_name
        self.redacted = field.redacted
        self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(field.type)


class _EventType:
    __slots__ = (
        "cls",
        "decoder",
        "field_names",
        "personal",
        "shadow_decoder",
        "tag",
        "tag_field",
        "version",
    )

    def __init__(self, cls: type, personal: bool = True) -> None:
        self.cls = cls
        self.tag = tag_of(cls)
        self.tag_field: str = cls.__struct_config__.tag_field  # type: ignore[attr-defined]
        self.version = event_version_of(cls)
        self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(cls)
        fields = personal_fields_of(cls)
        self.personal = tuple(_PersonalField(f) for f in fields) if personal else ()
        self.field_names: tuple[str, ...] = cls.__struct_fields__  # type: ignore[attr-defined]
        # The same event with its personal fields kept as raw msgpack: what
        # the writer encrypts and the reader decrypts, field by field.
        self.shadow_decoder: msgspec.msgpack.Decoder[Any] | None = (
            msgspec.msgpack.Decoder(_shadow_of(cls, {f.name for f in fields}))
            if self.personal
            else None
        )


def _shadow_of(cls: type, personal: set[str]) -> type:
    """A struct encoded like ``cls`` whose ``personal`` fields are ``msgspec.Raw``."""
    import typing

    hints = typing.get_type_hints(cls)
    config = cls.__struct_config__  # type: ignore[attr-defined]
    encoder = msgspec.msgpack.Encoder()
    # A NODEFAULT default is what defstruct takes for "required".
    fields: list[tuple[str, Any, Any]] = []
    rename: dict[str, str] = {}
    for info in msgspec.structs.fields(cls):
        rename[info.name] = info.encode_name
        if info.name in personal:
            kind: Any = msgspec.Raw
            if info.default is not msgspec.NODEFAULT:
                default: Any = msgspec.Raw(encoder.encode(info.default))
            elif info.default_factory is not msgspec.NODEFAULT:
                default = msgspec.Raw(encoder.encode(info.default_factory()))
            else:
                default = msgspec.NODEFAULT
        else:
            kind = hints[info.name]
            if info.default is not msgspec.NODEFAULT:
                default = info.default
            elif info.default_factory is not msgspec.NODEFAULT:
                default = msgspec.field(default_factory=info.default_factory)
            else:
                default = msgspec.NODEFAULT
        fields.append((info.name, kind, default))
    return msgspec.defstruct(
        f"{cls.__name__}Stored",
        fields,
        kw_only=True,
        tag=config.tag,
        tag_field=config.tag_field,
        rename=rename,
        omit_defaults=config.omit_defaults,
        array_like=config.array_like,
    )


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
        *,
        personal: bool = True,
        keys: KeySource | None = None,
        key_cache_size: int = 100_000,
    ) -> None:
        self._arguments = (tuple(event_types), dict(upcasters or {}), personal, key_cache_size)
        self._types: dict[str, _EventType] = {}
        self._by_class: dict[type, _EventType] = {}
        self._personal_by_class: dict[type, tuple[_PersonalField, ...]] = {}
        for cls in [*event_types, SubjectForgotten]:
            entry = _EventType(cls, personal)
            if entry.personal:
                self._personal_by_class[cls] = entry.personal
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
        self.keyring = Keyring(keys, cache_size=key_cache_size)
        """The subject keys this codec encrypts and decrypts with (see
        :mod:`motet.storage.keyring`)."""
        self._forgotten = self._types[tag_of(SubjectForgotten)]
        # The tags of the events sealing a batch looks at (those with personal
        # fields, and a forget): it passes the others by at a set lookup each.
        self._sealed_tags = frozenset(
            tag for tag, entry in self._types.items() if entry.personal
        ) | {self._forgotten.tag}
        self._checked_subjects: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"<Codec events={len(self._types)} upcasters={len(self._upcasters)} "
            f"personal={len(self._personal_by_class)}>"
        )

    def with_keys(self, keys: KeySource, *, key_cache_size: int | None = None) -> Codec:
        """A codec for the same event types and upcasters whose subject keys
        come from ``keys`` (a store): the one to encrypt or decrypt that
        store's events with. ``key_cache_size`` (default: this codec's)
        bounds the keys it keeps in memory."""
        event_types, upcasters, personal, cache_size = self._arguments
        return Codec(
            event_types,
            upcasters,
            personal=personal,
            keys=keys,
            key_cache_size=cache_size if key_cache_size is None else key_cache_size,
        )

    @property
    def has_personal(self) -> bool:
        """Whether any event type declares personal fields (then the writer
        encrypts them, and snapshots and saved read models are sealed)."""
        return bool(self._personal_by_class)

    def subjects_of(self, event: Any) -> tuple[str, ...]:
        """The subjects whose personal data ``event`` carries (its personal
        fields that are not ``None``); ``()`` for most events, cheaply.

        Raises :class:`~motet.storage.errors.InvalidKey` (a ``ValueError``)
        when a subject field's value cannot name a subject.
        """
        fields = self._personal_by_class.get(type(event))
        if fields is None:
            return ()
        subjects: list[str] = []
        checked = self._checked_subjects
        for field in fields:
            if getattr(event, field.name) is not None:
                subject = getattr(event, field.subject)
                if subject not in subjects:
                    # The same few subjects come back with every command:
                    # a string checked once needs no second check.
                    if type(subject) is not str or subject not in checked:
                        check_subject(subject)
                        if len(checked) >= _CHECKED_SUBJECTS:
                            checked.clear()  # bounded memory: start over
                        checked.add(subject)
                    subjects.append(subject)
        return tuple(subjects)

    def subjects_in(self, events: Sequence[Any]) -> tuple[str, ...]:
        """The subjects of every event of ``events`` (see :meth:`subjects_of`),
        possibly repeated; ``()`` at once when no event type declares
        personal fields."""
        personal = self._personal_by_class
        if not personal:
            return ()
        if len(events) == 1:
            # One event, most often without personal fields: that is one
            # lookup here, not a call.
            event = events[0]
            return self.subjects_of(event) if type(event) in personal else ()
        return tuple(s for event in events for s in self.subjects_of(event))

    # -- encryption (in the writer's worker thread) -------------------------------

    def seal_appends(
        self, appends: Sequence[Append]
    ) -> tuple[Sequence[Append], dict[str, bytes | None]]:
        """Encrypt the personal fields of a batch about to be committed, and
        seal its snapshots that hold personal data; return the appends to
        write and the key records to write in the same transaction (``None``:
        delete, for a :class:`SubjectForgotten` event).

        A subject without a key gets a new one here, written with the first
        event that needs it. A snapshot whose subject has no key (it was
        forgotten) is left out: snapshots are derived data, and it would
        keep what was just erased. Runs in the writer's worker thread.
        """
        if not self._personal_by_class:
            return appends, {}  # no keys to make or delete
        keyring = self.keyring
        changes: dict[str, bytes | None] = {}
        batch: dict[str, SubjectKey | None] = {}
        # Not trusting a cached absence: on a shared store another process may
        # have made the key since. Every subject the batch needs and the cache
        # holds no key for is read anew, all in one call to the store.
        todo, shadows, subjects = self._personal_shadows(appends)
        fresh = keyring.without_key(subjects)
        keyring.refresh_many(fresh)

        def key_for(subject: str, create: bool) -> SubjectKey | None:
            if subject in batch:
                key = batch[subject]
            else:
                key = keyring.get(subject)
                if key is None and subject not in fresh:
                    key = keyring.refresh(subject)
                if key is not None:
                    batch[subject] = key  # the subject's next fields in this batch
            if key is None and create:
                key = batch[subject] = SubjectKey.generate()
                changes[subject] = key.record
            return key

        nonces = NonceSource()
        sealed = list(appends)
        sealed_tags = self._sealed_tags
        for at in todo:
            append = appends[at]
            events: list[NewEvent] | None = None
            for index, event in enumerate(append.events):
                if event.type not in sealed_tags:
                    continue
                entry = self._types[event.type]
                if event.event_version != entry.version:
                    continue
                if entry is self._forgotten:
                    subject = entry.decoder.decode(event.data).subject
                    batch[subject] = None
                    changes[subject] = None
                elif entry.personal:
                    if events is None:
                        events = list(append.events)
                    events[index] = NewEvent(
                        event.type,
                        event.event_version,
                        self._seal_event(
                            entry, event, key_for, nonces, shadows.get((id(append), index))
                        ),
                    )
            snapshot = append.snapshot
            if snapshot is not None and append.subjects:
                keys: list[tuple[str, SubjectKey]] | None = []
                for subject in sorted(append.subjects):
                    key = key_for(subject, False)
                    if key is None:
                        keys = None
                        break
                    keys.append((subject, key))  # type: ignore[union-attr]
                snapshot = (
                    None
                    if keys is None
                    else Snapshot(
                        snapshot.version,
                        snapshot.schema_version,
                        keyring.seal(append.stream, keys, snapshot.state),
                    )
                )
            if events is not None or snapshot is not append.snapshot:
                sealed[at] = msgspec.structs.replace(
                    append,
                    events=events if events is not None else append.events,
                    snapshot=snapshot,
                )
        return sealed, changes

    def seal_recorded(
        self, records: Sequence[StoredEvent]
    ) -> tuple[list[StoredEvent], dict[str, bytes | None]]:
        """:meth:`seal_appends` for events that already have their positions
        (an import): each record sealed as a one-event append of its stream;
        return the records to write and the key records to write no later
        than them."""
        if not self._personal_by_class:
            return list(records), {}
        appends = [
            Append(r.stream, r.version - 1, [NewEvent(r.type, r.event_version, r.data)])
            for r in records
        ]
        sealed, keys = self.seal_appends(appends)
        return [
            record
            if append.events[0].data is record.data
            else msgspec.structs.replace(record, data=append.events[0].data)
            for record, append in zip(records, sealed, strict=True)
        ], keys

    def _personal_shadows(
        self, appends: Sequence[Append]
    ) -> tuple[list[int], dict[tuple[int, int], Any], set[str]]:
        """Which appends of the batch sealing must look at (by index: those
        with a snapshot, several events or an event of a type with personal
        fields; the usual append has one event and nothing to seal), the
        decoded shadows of their events with personal fields, by (``id`` of
        the append, index of the event), and every subject whose key
        sealing the batch needs (its fields to encrypt, its snapshots')."""
        todo: list[int] = []
        shadows: dict[tuple[int, int], Any] = {}
        subjects: set[str] = set()
        types = self._types
        sealed_tags = self._sealed_tags
        for at, append in enumerate(appends):
            events = append.events
            if append.snapshot is None:
                if len(events) == 1 and events[0].type not in sealed_tags:
                    continue
            else:
                subjects.update(append.subjects)
            todo.append(at)
            for index, event in enumerate(events):
                if event.type not in sealed_tags:
                    continue
                entry = types[event.type]
                if (
                    not entry.personal
                    or entry is self._forgotten
                    or event.event_version != entry.version
                ):
                    continue
                assert entry.shadow_decoder is not None
                shadow = shadows[(id(append), index)] = entry.shadow_decoder.decode(event.data)
                for field in entry.personal:
                    raw = bytes(getattr(shadow, field.name))
                    if raw != _NIL and not is_extension(raw):
                        subjects.add(getattr(shadow, field.subject))
        return todo, shadows, subjects

    def _seal_event(
        self,
        entry: _EventType,
        event: NewEvent,
        key_for: Callable[[str, bool], SubjectKey | None],
        nonces: NonceSource | None = None,
        shadow: Any = None,
    ) -> bytes:
        assert entry.shadow_decoder is not None
        if shadow is None:
            shadow = entry.shadow_decoder.decode(event.data)
        replaced: dict[str, msgspec.Raw] = {}
        for field in entry.personal:
            raw = bytes(getattr(shadow, field.name))
            if raw == _NIL or is_extension(raw):
                continue
            subject = getattr(shadow, field.subject)
            key = key_for(subject, True)
            assert key is not None
            nonce = None if nonces is None else nonces.take()
            ciphertext = key.encrypt(raw, field_aad(subject, field.encode_name), nonce)
            replaced[field.name] = msgspec.Raw(
                self._encoder.encode(msgspec.msgpack.Ext(FIELD_EXT, ciphertext))
            )
        if not replaced:
            return event.data
        return self._encoder.encode(msgspec.structs.replace(shadow, **replaced))

    def warm_keys(self, events: Sequence[StoredEvent]) -> None:
        """Look up (into the cache) the keys that decoding ``events`` needs,
        so that decoding them later asks the store nothing: for a store whose
        calls block, call it in the worker thread that read them."""
        if not self._personal_by_class:
            return
        types = self._types
        keyring = self.keyring
        wanted: dict[tuple[str, bytes], None] = {}
        for stored in events:
            entry = types.get(stored.type)
            if entry is None or not entry.personal or stored.event_version != entry.version:
                continue
            assert entry.shadow_decoder is not None
            try:
                shadow = entry.shadow_decoder.decode(stored.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # decoding it will say what is wrong
            for field in entry.personal:
                raw = bytes(getattr(shadow, field.name))
                if is_extension(raw):
                    ext = self._untyped.decode(raw)
                    if isinstance(ext, msgspec.msgpack.Ext) and ext.code == FIELD_EXT:
                        wanted[(getattr(shadow, field.subject), bytes(ext.data)[:4])] = None
        # The subjects not cached with the key their ciphertexts name are
        # read together, in one call to the store, instead of one each.
        keyring.refresh_many(keyring.stale(wanted))
        for subject, key_id in wanted:
            keyring.lookup(subject, key_id)

    def read_warm(self, read: Callable[..., list[StoredEvent]], *args: Any) -> list[StoredEvent]:
        """``read(*args)``, then :meth:`warm_keys` on what it returned."""
        events = read(*args)
        self.warm_keys(events)
        return events

    def seal_model(self, name: str, data: bytes, position: int) -> bytes | None:
        """A projection's encoded read model, sealed under the read-model key
        (made and stored on first use) when the app has personal data;
        ``None`` when a model at ``position`` must not be saved, being from
        before the last erasure. Runs in a worker thread holding the
        writer's limiter."""
        if not self._personal_by_class:
            return data
        keyring = self.keyring
        if position < keyring.models_from:
            return None
        key = keyring.get(MODELS_KEY)
        if key is None:
            key = self.rotate_models_key()
        return keyring.seal(name, [(MODELS_KEY, key)], data)

    def rotate_models_key(self) -> SubjectKey:
        """Replace the read-model key with a new one (stored at once), so
        read models saved before are unreadable. Runs in a worker thread
        holding the writer's limiter."""
        key = SubjectKey.generate()
        source = self.keyring.source
        if source is None or not hasattr(source, "put_keys"):
            raise CodecError("read models cannot be sealed without a store to keep the key in")
        source.put_keys({MODELS_KEY: key.record})
        self.keyring.committed({MODELS_KEY: key.record})
        return key

    def open_sealed(self, context: str, data: bytes) -> tuple[bytes, list[str]] | None:
        """A snapshot's state or a saved model, unsealed (as it is when it was
        not sealed), with the subjects it was sealed for; ``None`` when it
        cannot be read any more (a key is gone)."""
        return self.keyring.open_sealed(context, data)

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
                if entry.personal:
                    return self._decode_personal(entry, data)
                event = entry.decoder.decode(data)
                if entry is self._forgotten:
                    # Another process may have forgotten it: its key must not linger here.
                    self.keyring.evict(event.subject)
                return event
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
            if entry.personal:
                self._open_fields(entry, payload)
            for from_version in range(version, entry.version):
                payload = self._upcasters[(tag, from_version)](payload)
            payload[entry.tag_field] = tag
            return msgspec.convert(payload, entry.cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CodecError(f"event {tag!r} version {version} does not decode: {exc}") from exc

    def _decode_personal(self, entry: _EventType, data: bytes) -> Any:
        """Decode an event with personal fields: each is decrypted, or
        redacted when its key is gone, or read as it is when it was stored
        in clear (written before it was declared personal)."""
        assert entry.shadow_decoder is not None
        shadow = entry.shadow_decoder.decode(data)
        values = msgspec.structs.asdict(shadow)
        for field in entry.personal:
            raw = bytes(values[field.name])
            if is_extension(raw):
                ext = self._untyped.decode(raw)
                if isinstance(ext, msgspec.msgpack.Ext) and ext.code == FIELD_EXT:
                    plain = self.keyring.open_field(
                        values[field.subject], field.encode_name, bytes(ext.data)
                    )
                    values[field.name] = (
                        field.redacted if plain is None else field.decoder.decode(plain)
                    )
                    continue
            values[field.name] = field.decoder.decode(raw)
        return entry.cls(**values)

    def _open_fields(self, entry: _EventType, payload: dict[str, Any]) -> None:
        """Decrypt (or redact) in place the personal fields of an older
        version's payload, before upcasting: the current declaration names
        the fields and their subject fields."""
        for field in entry.personal:
            value = payload.get(field.encode_name)
            if isinstance(value, msgspec.msgpack.Ext) and value.code == FIELD_EXT:
                plain = self.keyring.open_field(
                    payload.get(field.subject_encode_name, ""),
                    field.encode_name,
                    bytes(value.data),
                )
                payload[field.encode_name] = (
                    field.redacted if plain is None else self._untyped.decode(plain)
                )

    def encode(self, obj: Any) -> bytes:
        """Encode any msgspec-supported value (e.g. a state for a snapshot)."""
        return self._encoder.encode(obj)
