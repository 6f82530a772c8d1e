"""Keys per data subject, and the encryption that makes erasure possible.

Crypto-shredding: every personal field (see :mod:`motet.storage.personal`)
is encrypted with AES-256-GCM under a key of its subject. Keys live in the
store apart from the events (:meth:`~motet.storage.store.EventStore.get_key`);
deleting a subject's key makes every copy of its personal data, in the log,
in snapshots, in saved read models and in any backup taken afterwards,
unreadable for good, while the log itself stays as it was.

Formats (all msgpack):

- key record: ``b"\\x01"`` + 4-byte key id + 32-byte AES key. The id changes
  when a forgotten subject comes back and gets a new key, so its old
  ciphertexts are told apart (redacted) from damaged ones (an error).
- personal field: the field's value is replaced by the extension value
  ``Ext(1, key id + 12-byte random nonce + AES-GCM(msgpack(value)))``, with
  associated data ``"motet/field\\0<subject>\\0<field name>"``, so a
  ciphertext moved to another subject or field does not decrypt.
- sealed blob (snapshots of aggregates holding personal data, saved read
  models): ``Ext(2, msgpack([subjects, layers]))`` where the bytes are
  encrypted under each subject's key in turn, with associated data
  ``"motet/sealed\\0<context>\\0<subject>"``; losing any one key makes the
  blob unreadable.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec

from .errors import CodecError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "FIELD_EXT",
    "MODELS_KEY",
    "NONCE_BLOCK",
    "SEALED_EXT",
    "KeySource",
    "Keyring",
    "NonceSource",
    "SubjectKey",
]

FIELD_EXT = 1
"""msgpack extension code of an encrypted personal field."""

SEALED_EXT = 2
"""msgpack extension code of a sealed blob (snapshot or read model)."""

MODELS_KEY = "\x1fread-models"
"""The key saved read models are sealed under (a name no subject can take:
subjects have no control characters). Replaced by a new one after each
erasure, once the projections have dropped the subject's data."""

_RECORD_FORMAT = b"\x01"
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_RECORD_BYTES = 1 + _KEY_ID_BYTES + 32
_EXT_MARKERS = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
"""First bytes of a msgpack extension value: a field or state whose encoding
starts with another byte is plaintext (written before it was declared
personal, or by an app that does not encrypt)."""


def _crypto() -> tuple[type[AESGCM], type[Exception]]:
    """cryptography's AESGCM and InvalidTag, imported on first use: a codec
    (which clients load too) without personal data never needs them."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM, InvalidTag


class KeySource(Protocol):
    """Where keys are read from: the store (see ``EventStore.get_key``)."""

    def get_key(self, subject: str) -> bytes | None:
        """The key record of ``subject``, if it has one."""
        ...

    def get_keys(self, subjects: Sequence[str]) -> dict[str, bytes]:
        """The key records of those of ``subjects`` that have one."""
        ...


class SubjectKey(msgspec.Struct, gc=False, eq=False):
    """One subject's key: its ``record``, its 4-byte ``id`` and the AES-GCM
    object built once for it (encryption and decryption reuse it); give
    the record alone, the rest is derived from it.

    The garbage collector does not track it (a cache holds up to 100,000):
    it refers to nothing that could refer back to it (bytes and an AES-GCM
    object, which holds no Python objects), so it can never be part of a
    reference cycle.
    """

    record: bytes
    id: bytes = b""
    aead: AESGCM = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        record = self.record
        if len(record) != _RECORD_BYTES or record[:1] != _RECORD_FORMAT:
            raise CodecError(f"a key record is damaged ({len(record)} bytes)")
        self.record = record = bytes(record)
        self.id = record[1 : 1 + _KEY_ID_BYTES]
        self.aead = _crypto()[0](record[1 + _KEY_ID_BYTES :])

    @classmethod
    def generate(cls) -> SubjectKey:
        """A new random key (its id random too): 256 bits from the OS's CSPRNG."""
        return cls(_RECORD_FORMAT + os.urandom(_KEY_ID_BYTES) + os.urandom(32))

    def __repr__(self) -> str:
        return f"<SubjectKey id={self.id.hex()}>"

    def encrypt(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        """key id + nonce + ciphertext (with its tag). ``nonce`` (12 random
        bytes, e.g. from a :class:`NonceSource`) is drawn from the OS's
        CSPRNG when not given; it must never be used twice."""
        if nonce is None:
            nonce = os.urandom(_NONCE_BYTES)
        return self.id + nonce + self.aead.encrypt(nonce, plaintext, aad)


class NonceSource:
    """Random 96-bit AES-GCM nonces, read from the OS's CSPRNG a block at a
    time: one ``os.urandom`` call per block (2 nonces, then twice as many
    each time, up to :data:`NONCE_BLOCK`) instead of one per encrypted
    field. Each nonce is handed out once; use one source per thread (the
    writer makes one per batch)."""

    __slots__ = ("_at", "_block", "_size")

    def __init__(self) -> None:
        self._block = b""
        self._at = 0
        self._size = 2

    def take(self) -> bytes:
        """The next nonce: 12 bytes never handed out before."""
        at = self._at
        if at >= len(self._block):
            # Small blocks first: a batch with one personal field reads 24 bytes.
            self._block = os.urandom(_NONCE_BYTES * self._size)
            self._size = min(self._size * 2, NONCE_BLOCK)
            at = 0
        self._at = at + _NONCE_BYTES
        return self._block[at : at + _NONCE_BYTES]


NONCE_BLOCK = 64
"""Nonces a :class:`NonceSource` reads from the OS at once."""


def field_aad(subject: str, field: str) -> bytes:
    """Associated data binding a field's ciphertext to its subject and field."""
    return f"motet/field\x00{subject}\x00{field}".encode()


def sealed_aad(context: str, subject: str) -> bytes:
    """Associated data binding one layer of a sealed blob to its context
    (a stream or a projection) and subject."""
    return f"motet/sealed\x00{context}\x00{subject}".encode()


def is_extension(data: bytes) -> bool:
    """Whether msgpack ``data`` starts with an extension value."""
    return bool(data) and data[0] in _EXT_MARKERS


class Keyring:
    """Subject keys as read from a :class:`KeySource`, with a bounded cache.

    Lookups come from the writer's worker thread and from readers (the event
    loop, read threads) at once, so the cache takes a lock. Only keys known
    to be stored are cached: a key made for a batch joins the cache once the
    batch committed (:meth:`committed`). A ciphertext names its key's id:
    when the cached key is another (or none), the store is asked again once
    (another process may have made or deleted the key), and an id it does
    not hold is remembered as gone for good (ids are never reused).
    """

    def __init__(self, source: KeySource | None, *, cache_size: int = 100_000) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self._source = source
        self._cache: OrderedDict[str, SubjectKey | None] = OrderedDict()
        self._cache_size = cache_size
        self._gone: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._lock = threading.Lock()
        self.models_from = 0
        """Saved read models are sealed only from this position on: the last
        erasure's, so none written afterwards still holds the subject."""

    def __repr__(self) -> str:
        return f"<Keyring cached={len(self._cache)} max={self._cache_size}>"

    @property
    def source(self) -> KeySource | None:
        """Where keys are read from (the store), if anywhere."""
        return self._source

    def get(self, subject: str) -> SubjectKey | None:
        """The stored key of ``subject`` (cached), or ``None`` when it has
        none (never had one, or was forgotten)."""
        with self._lock:
            if subject in self._cache:
                self._cache.move_to_end(subject)
                return self._cache[subject]
        return self._fetch(subject)

    def _fetch(self, subject: str) -> SubjectKey | None:
        if self._source is None:
            raise CodecError(
                "personal data cannot be decrypted without the store's keys: "
                "build the codec with keys=<the store>"
            )
        record = self._source.get_key(subject)
        key = None if record is None else SubjectKey(record)
        self._remember(subject, key)
        return key

    def refresh(self, subject: str) -> SubjectKey | None:
        """The key of ``subject`` as the store holds it now (cached anew)."""
        return self._fetch(subject)

    def without_key(self, subjects: Iterable[str]) -> set[str]:
        """Those of ``subjects`` the cache holds no key for (not cached, or
        cached as having none)."""
        with self._lock:
            cache = self._cache
            return {subject for subject in subjects if cache.get(subject) is None}

    def stale(self, wanted: Iterable[tuple[str, bytes]]) -> set[str]:
        """The subjects of ``wanted`` (subject, key id) pairs whose cached key
        is not the one named, and that is not known to be gone: those
        :meth:`lookup` would ask the store for."""
        with self._lock:
            cache = self._cache
            gone = self._gone
            stale: set[str] = set()
            for subject, key_id in wanted:
                key = cache.get(subject)
                if (key is None or key.id != key_id) and (subject, key_id) not in gone:
                    stale.add(subject)
            return stale

    def refresh_many(self, subjects: Collection[str]) -> None:
        """Cache anew the keys of ``subjects`` as the store holds them now,
        read by one call (:meth:`refresh` for many: a network store answers
        them in one round trip instead of one each)."""
        if not subjects:
            return
        if self._source is None:
            raise CodecError(
                "personal data cannot be decrypted without the store's keys: "
                "build the codec with keys=<the store>"
            )
        records = self._source.get_keys(sorted(subjects))
        for subject in subjects:
            record = records.get(subject)
            self._remember(subject, None if record is None else SubjectKey(record))

    def lookup(self, subject: str, key_id: bytes) -> SubjectKey | None:
        """The key with id ``key_id`` of ``subject``, or ``None`` when it is
        gone (forgotten, or replaced after the subject was forgotten)."""
        key = self.get(subject)
        if key is not None and key.id == key_id:
            return key
        with self._lock:
            if (subject, key_id) in self._gone:
                return None
        key = self._fetch(subject)
        if key is not None and key.id == key_id:
            return key
        with self._lock:
            self._gone[(subject, key_id)] = None
            while len(self._gone) > self._cache_size:
                self._gone.popitem(last=False)
        return None

    def _remember(self, subject: str, key: SubjectKey | None) -> None:
        with self._lock:
            self._cache[subject] = key
            self._cache.move_to_end(subject)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def committed(self, changes: Mapping[str, bytes | None]) -> None:
        """Key records (``None``: deleted) a commit has just made durable."""
        for subject, record in changes.items():
            self._remember(subject, None if record is None else SubjectKey(record))

    def evict(self, subject: str) -> None:
        """Drop ``subject`` from the cache (another process changed its key)."""
        with self._lock:
            self._cache.pop(subject, None)

    # -- personal fields ------------------------------------------------------

    def open_field(self, subject: str, field: str, ext_data: bytes) -> bytes | None:
        """The plaintext msgpack of one encrypted field, or ``None`` when the
        key it was written with is gone (the subject was forgotten).

        Raises :class:`CodecError` when the ciphertext is damaged."""
        key = self.lookup(subject, ext_data[:_KEY_ID_BYTES])
        if key is None:
            return None
        nonce = ext_data[_KEY_ID_BYTES : _KEY_ID_BYTES + _NONCE_BYTES]
        try:
            return key.aead.decrypt(
                nonce, ext_data[_KEY_ID_BYTES + _NONCE_BYTES :], field_aad(subject, field)
            )
        except _crypto()[1]:
            raise CodecError(
                f"personal field {field!r} of subject {subject!r} does not decrypt: "
                "its ciphertext is damaged or was moved from another field"
            ) from None

    # -- sealed blobs -----------------------------------------------------------

    def seal(self, context: str, keys: list[tuple[str, SubjectKey]], data: bytes) -> bytes:
        """``data`` sealed under every key of ``keys`` (subject, key), in turn."""
        for subject, key in keys:
            data = key.encrypt(data, sealed_aad(context, subject))
        body = _blob_encoder.encode(([subject for subject, _ in keys], data))
        return _blob_encoder.encode(msgspec.msgpack.Ext(SEALED_EXT, body))

    def open_sealed(self, context: str, data: bytes) -> tuple[bytes, list[str]] | None:
        """``data`` unsealed, with the subjects it was sealed for (``data``
        itself and none when it was not sealed); ``None`` when a key it needs
        is gone or it does not decrypt (sealed blobs are derived data:
        unreadable means rebuild, not fail)."""
        if not is_extension(data):
            return data, []
        try:
            ext = _blob_decoder.decode(data)
            if not isinstance(ext, msgspec.msgpack.Ext) or ext.code != SEALED_EXT:
                return None
            subjects, body = _layers_decoder.decode(ext.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        for subject in reversed(subjects):
            key = self.lookup(subject, body[:_KEY_ID_BYTES])
            if key is None:
                return None
            nonce = body[_KEY_ID_BYTES : _KEY_ID_BYTES + _NONCE_BYTES]
            try:
                body = key.aead.decrypt(
                    nonce, body[_KEY_ID_BYTES + _NONCE_BYTES :], sealed_aad(context, subject)
                )
            except _crypto()[1]:
                return None
        return body, subjects


_blob_encoder = msgspec.msgpack.Encoder()
_blob_decoder = msgspec.msgpack.Decoder()
_layers_decoder = msgspec.msgpack.Decoder(tuple[list[str], bytes])
