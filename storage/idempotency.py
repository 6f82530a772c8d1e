"""Command ids: what makes a retry "the same command", and the record kept per id.

A command sent with a ``command_id`` is run once; a retry with that id gets
the first run's Ack back. A retry must be the same command, so the store keeps
a fingerprint beside each Ack: the command's type tag and a digest of its
msgpack encoding. Two commands are the same when they have the same type tag,
go to the same stream and encode to the same bytes (every field equal after
decoding, defaults included; the fields of a ``msgspec.Struct`` encode in
declaration order, so field order on the wire does not matter).

The digest is a 16-byte BLAKE2b keyed with the command id, so equal commands
under different ids do not share a digest. It is not a secret-keeping device:
whoever holds the store can test a guess of a command's contents against it,
as they can read the events themselves.

Acks written before fingerprints existed carry none; a retry of their command
id is accepted as it always was.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from .codec import tag_of
from .errors import CommandIdReused
from .records import Ack, CommandFingerprint

__all__ = [
    "AckRecord",
    "CommandFingerprint",
    "ack_record",
    "fingerprint_of",
    "retried_ack",
    "stored_ack",
]

_DIGEST_BYTES = 16


class AckRecord(Ack, frozen=True, array_like=True, gc=False):
    """What the command-id index keeps: the Ack, then the fingerprint of the
    command that earned it (``None`` in records written before fingerprints)."""

    type: str | None = None
    digest: bytes | None = None


def fingerprint_of(command: Any, command_id: str) -> CommandFingerprint:
    """The fingerprint of ``command`` sent under ``command_id``."""
    encoded = msgspec.msgpack.encode(command)
    digest = hashlib.blake2b(
        encoded, digest_size=_DIGEST_BYTES, key=command_id.encode()[:64]
    ).digest()
    return CommandFingerprint(tag_of(type(command)), digest)


def ack_record(ack: Ack, fingerprint: CommandFingerprint | None) -> AckRecord:
    """The record to keep for ``ack`` earned by a command with ``fingerprint``."""
    if fingerprint is None:
        return AckRecord(ack.stream, ack.version, ack.position)
    return AckRecord(ack.stream, ack.version, ack.position, fingerprint.type, fingerprint.digest)


def stored_ack(store: Any, command_id: str) -> Ack | None:
    """What ``store`` recorded for ``command_id``: an :class:`AckRecord` when
    the store keeps fingerprints (``get_ack_record``), else its plain Ack."""
    get_record = getattr(store, "get_ack_record", None)
    if get_record is not None:
        return get_record(command_id)  # type: ignore[no-any-return]
    return store.get_ack(command_id)  # type: ignore[no-any-return]


def retried_ack(
    command_id: str,
    first: Ack,
    first_fingerprint: CommandFingerprint | None,
    stream: str,
    fingerprint: CommandFingerprint | None,
) -> Ack:
    """The Ack to answer a retry of ``command_id`` with, given the ``first``
    Ack recorded for it (an :class:`AckRecord` carries its own fingerprint;
    else pass ``first_fingerprint``). Raises :class:`CommandIdReused` when the
    retry, going to ``stream`` with ``fingerprint``, is a different command.
    A fingerprint missing on either side (records from before fingerprints)
    compares equal."""
    if first_fingerprint is None and isinstance(first, AckRecord) and first.type is not None:
        first_fingerprint = CommandFingerprint(first.type, first.digest or b"")
    first_type = first_fingerprint.type if first_fingerprint is not None else None
    got_type = f"a {fingerprint.type} command" if fingerprint is not None else "a command"
    if stream != first.stream:
        raise CommandIdReused(command_id, first.stream, first_type, f"{got_type} on {stream!r}")
    if fingerprint is not None and first_fingerprint is not None:
        if fingerprint.type != first_fingerprint.type:
            raise CommandIdReused(command_id, first.stream, first_type, got_type)
        if fingerprint.digest != first_fingerprint.digest:
            raise CommandIdReused(
                command_id, first.stream, first_type, f"{got_type} with other data"
            )
    return Ack(first.stream, first.version, first.position)
