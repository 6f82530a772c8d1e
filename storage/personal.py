"""Declaring personal data, and the event that records a subject's erasure.

A field of an event is personal data of a *subject* when its annotation
carries :class:`Personal`, naming the field of the same event whose value
is the subject::

    class UserCreated(msgspec.Struct, tag="UserCreated", kw_only=True):
        user_id: str
        name: Annotated[str, Personal("user_id")]

The codec reads these declarations once, when the app is built, and the
writer encrypts such fields with a key per subject (see
:mod:`motet.storage.keyring`). Forgetting a subject deletes its key and
appends :class:`SubjectForgotten` to the stream ``Subject-<subject>``;
from then on the subject's personal fields decode as their *redacted
value*: ``""`` when the field's type accepts a string, else ``b""`` when it
accepts bytes, else ``None``.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, get_args, get_origin

import msgspec

from .errors import InvalidKey
from .streams import stream_id

__all__ = [
    "MAX_SUBJECT_BYTES",
    "SUBJECT_CATEGORY",
    "Personal",
    "PersonalField",
    "SubjectForgotten",
    "check_subject",
    "personal_fields_of",
    "subject_stream",
]

SUBJECT_CATEGORY = "Subject"
"""The category of the streams :class:`SubjectForgotten` events go to:
``Subject-<subject>``. No aggregate may take this name."""

MAX_SUBJECT_BYTES = 511 - 1 - 8 - len(SUBJECT_CATEGORY) - 1
"""(``MAX_STREAM_BYTES`` of :mod:`motet.storage.store`, which imports the
codec and so cannot be imported here, less the category and its dash.)"""
"""The longest subject, in UTF-8 bytes: ``Subject-<subject>`` must be a stream id."""


class Personal:
    """Marks a field as personal data of the subject named by the value of
    field ``subject`` of the same event: ``Annotated[str, Personal("user_id")]``.

    Raises ``TypeError`` when ``subject`` is not a non-empty string.
    """

    __slots__ = ("subject",)

    def __init__(self, subject: str) -> None:
        if not isinstance(subject, str) or not subject:
            raise TypeError(f"Personal needs the name of the subject's field, got {subject!r}")
        self.subject = subject

    def __repr__(self) -> str:
        return f"Personal({self.subject!r})"


class SubjectForgotten(msgspec.Struct, frozen=True, kw_only=True, tag="SubjectForgotten"):
    """The personal data of ``subject`` was erased (its key deleted).

    A system event every app's codec knows, in stream ``Subject-<subject>``:
    a projection that keeps personal data handles it to drop or blank the
    subject's copies.
    """

    subject: str


class Forgotten(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Engine.forget <motet.engine.core.Engine.forget>` did: the
    ``subject``, the ``stream`` and ``position`` of its
    :class:`SubjectForgotten` event, whether a key was deleted, and whether the subject had been
    forgotten before (and holds no new personal data since)."""

    subject: str
    stream: str
    position: int
    key_deleted: bool
    already_forgotten: bool


class PersonalField(msgspec.Struct, frozen=True):
    """One declared personal field: its Python ``name``, its name in the
    encoded event (``encode_name``), the field holding its ``subject`` (and
    that field's encoded name), its ``type`` and its ``redacted`` value."""

    name: str
    encode_name: str
    subject: str
    subject_encode_name: str
    type: Any
    redacted: Any


def check_subject(subject: object) -> str:
    """Return ``subject`` when it can name a data subject, else raise
    :class:`~motet.storage.errors.InvalidKey` (a ``ValueError``) saying why:
    a subject is a non-empty string of at most :data:`MAX_SUBJECT_BYTES`
    UTF-8 bytes without control characters."""
    from .store import check_key  # imported here: the store module imports the codec

    check_key("subject", subject, MAX_SUBJECT_BYTES)  # type: ignore[arg-type]
    assert isinstance(subject, str)
    for char in subject:
        if char < " " or char == "\x7f":
            raise InvalidKey(f"subject must not contain control characters, got {subject!r}")
    return subject


def subject_stream(subject: str) -> str:
    """The stream that records the erasure of ``subject``."""
    return stream_id(SUBJECT_CATEGORY, subject)


def _redacted_value(cls: type, name: str, hint: Any) -> Any:
    """The value a forgotten field decodes as: the first of ``""``, ``b""``
    and ``None`` that its type accepts (constraints included)."""
    for candidate in ("", b"", None):
        try:
            converted = msgspec.convert(candidate, hint)
        except (msgspec.ValidationError, TypeError):
            continue
        # convert also turns "" into b"" (as base64): only an exact fit counts.
        if type(converted) is type(candidate):
            return candidate
    raise TypeError(
        f"{cls.__qualname__}.{name} is declared Personal but its type {hint!r} accepts "
        "none of '', b'' or None, so it cannot be redacted once its subject is forgotten"
    )


def personal_fields_of(cls: type) -> tuple[PersonalField, ...]:
    """The personal fields a ``msgspec.Struct`` event type declares (empty
    when none), read from its annotations.

    Raises ``TypeError`` naming the problem for a bad declaration: a
    :class:`Personal` marker naming a field the event lacks, a subject field
    that is not a plain ``str`` or is itself personal, two markers on one
    field, or a type without a redacted value.
    """
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:
        raise TypeError(f"cannot read the annotations of {cls.__qualname__}: {exc}") from exc
    infos = {info.name: info for info in msgspec.structs.fields(cls)}
    found: list[PersonalField] = []
    for name, info in infos.items():
        hint = hints.get(name)
        if get_origin(hint) is not Annotated:
            continue
        markers = [m for m in get_args(hint)[1:] if isinstance(m, Personal)]
        if not markers:
            continue
        if len(markers) > 1:
            raise TypeError(f"{cls.__qualname__}.{name} carries Personal more than once")
        subject = markers[0].subject
        if subject not in infos:
            raise TypeError(
                f"{cls.__qualname__}.{name} is Personal({subject!r}) but {cls.__qualname__} "
                f"has no field {subject!r} (its fields: {', '.join(infos)})"
            )
        if subject == name:
            raise TypeError(f"{cls.__qualname__}.{name} cannot be its own subject")
        subject_hint = hints.get(subject)
        if get_origin(subject_hint) is Annotated:
            if any(isinstance(m, Personal) for m in get_args(subject_hint)[1:]):
                raise TypeError(
                    f"{cls.__qualname__}.{name}'s subject field {subject!r} is itself "
                    "Personal: the subject must stay readable"
                )
            subject_hint = get_args(subject_hint)[0]
        if subject_hint is not str:
            raise TypeError(
                f"{cls.__qualname__}.{name} is Personal({subject!r}) but field {subject!r} "
                f"is {subject_hint!r}, not str: a subject is a string"
            )
        found.append(
            PersonalField(
                name,
                info.encode_name,
                subject,
                infos[subject].encode_name,
                hint,
                _redacted_value(cls, name, hint),
            )
        )
    return tuple(found)
