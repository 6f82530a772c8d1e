"""The codec: tagged structs to msgpack and back, upcasting old event versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from motet.storage import (
    Append,
    Codec,
    CodecError,
    LmdbStore,
    Metadata,
    NewEvent,
    StoredEvent,
    event_version_of,
    tag_of,
)
from motet.storage.personal import SubjectForgotten


class UserCreated(msgspec.Struct, frozen=True, kw_only=True, tag="user.created"):
    user_id: str
    name: str
    tags: list[str] = []


class OrderPlaced(msgspec.Struct, frozen=True, kw_only=True, tag="order.placed"):
    order_id: str
    amount_cents: int
    note: str | None = None


class Untagged(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str


# The newest shape of an event that has changed twice:
#   v1 {name}                        -> v2 {first_name, last_name}
#   v2 {first_name, last_name}       -> v3 {first_name, last_name, display_name}
class UserRenamed(msgspec.Struct, frozen=True, kw_only=True, tag="user.renamed"):
    event_version: ClassVar[int] = 3
    user_id: str
    first_name: str
    last_name: str
    display_name: str


def split_name(payload: dict[str, Any]) -> dict[str, Any]:
    first, _, last = payload.pop("name").partition(" ")
    return {**payload, "first_name": first, "last_name": last}


def add_display_name(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "display_name": f"{payload['first_name']} {payload['last_name']}".strip()}


UPCASTERS = {("user.renamed", 1): split_name, ("user.renamed", 2): add_display_name}


def old(**fields: Any) -> bytes:
    """A payload as an older version of the code wrote it."""
    return msgspec.msgpack.encode(fields)


@pytest.fixture
def codec() -> Codec:
    return Codec([UserCreated, OrderPlaced, UserRenamed], UPCASTERS)


def stored(new: NewEvent) -> StoredEvent:
    return StoredEvent(1, "User-1", 1, new.type, new.event_version, 0.0, Metadata(), new.data)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        UserCreated(user_id="u1", name="Ada"),
        UserCreated(user_id="u2", name="Ünïcödé €", tags=["admin", ""]),
        OrderPlaced(order_id="o1", amount_cents=1999, note="gift"),
        OrderPlaced(order_id="o2", amount_cents=-1),
        UserRenamed(user_id="u1", first_name="Ada", last_name="King", display_name="Ada King"),
    ],
)
def test_tagged_events_round_trip(codec: Codec, event: Any) -> None:
    new = codec.encode_event(event)

    assert new.type == tag_of(type(event))
    assert new.event_version == event_version_of(type(event))
    decoded = codec.decode_event(stored(new))
    assert decoded == event
    assert type(decoded) is type(event)


def test_the_log_records_the_tag_not_the_class_name(codec: Codec) -> None:
    new = codec.encode_event(UserCreated(user_id="u1", name="Ada"))

    assert (new.type, new.event_version) == ("user.created", 1)
    assert msgspec.msgpack.decode(new.data) == {
        "type": "user.created",
        "user_id": "u1",
        "name": "Ada",
        "tags": [],
    }


def test_events_round_trip_through_a_real_lmdb_store(codec: Codec, tmp_path: Path) -> None:
    events = [UserCreated(user_id="u1", name="Ada"), OrderPlaced(order_id="o1", amount_cents=5)]
    store = LmdbStore(tmp_path, durability="none")
    try:
        store.append_batch([Append("User-1", 0, [codec.encode_event(e) for e in events])], 1.0)
        decoded = [codec.decode_event(e) for e in store.read_stream("User-1")]
    finally:
        store.close()

    assert decoded == events


def test_decode_record_keeps_the_envelope_and_decodes_the_payload(codec: Codec) -> None:
    event = OrderPlaced(order_id="o1", amount_cents=5)
    record = StoredEvent(
        7,
        "Order-1",
        3,
        "order.placed",
        1,
        12.5,
        Metadata(command_id="c1"),
        codec.encode_event(event).data,
    )

    recorded = codec.decode_record(record)

    assert (recorded.position, recorded.stream, recorded.version) == (7, "Order-1", 3)
    assert (recorded.type, recorded.event_version, recorded.timestamp) == ("order.placed", 1, 12.5)
    assert recorded.metadata == Metadata(command_id="c1")
    assert recorded.data == event


def test_states_encode_to_msgpack(codec: Codec) -> None:
    state = {"users": {"u1": UserCreated(user_id="u1", name="Ada")}}

    assert msgspec.msgpack.decode(codec.encode(state)) == {
        "users": {"u1": {"type": "user.created", "user_id": "u1", "name": "Ada", "tags": []}}
    }


def test_repr_and_event_types(codec: Codec) -> None:
    # SubjectForgotten is a system event every codec knows.
    assert repr(codec) == "<Codec events=4 upcasters=2 personal=0>"
    assert codec.event_types == (UserCreated, OrderPlaced, UserRenamed, SubjectForgotten)


# -- registration errors ----------------------------------------------------------------------


def test_an_untagged_struct_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Untagged needs a stable tag: declare it as"):
        Codec([UserCreated, Untagged])


def test_a_class_that_is_not_a_struct_is_refused() -> None:
    class Plain:
        pass

    with pytest.raises(TypeError, match=r"Plain needs a stable tag"):
        Codec([Plain])


def test_two_classes_with_one_tag_are_refused() -> None:
    class ImpostorCreated(msgspec.Struct, frozen=True, tag="user.created"):
        pass

    with pytest.raises(
        TypeError,
        match=r"event tag 'user.created' is used by both UserCreated and .*ImpostorCreated",
    ):
        Codec([UserCreated, ImpostorCreated])


def test_registering_the_same_class_twice_is_harmless() -> None:
    codec = Codec([UserCreated, UserCreated])

    assert codec.event_types == (UserCreated, SubjectForgotten)


def test_a_versioned_event_without_all_its_upcasters_is_refused() -> None:
    with pytest.raises(
        TypeError,
        match=r"event 'user.renamed' is at version 3 but has no upcaster from version\(s\) \[2\]",
    ):
        Codec([UserRenamed], {("user.renamed", 1): split_name})

    with pytest.raises(TypeError, match=r"no upcaster from version\(s\) \[1, 2\]"):
        Codec([UserRenamed])


def test_an_upcaster_for_an_unknown_tag_is_refused() -> None:
    with pytest.raises(TypeError, match=r"upcaster for unknown event tag 'user.deleted'"):
        Codec([UserCreated], {("user.deleted", 1): split_name})


@pytest.mark.parametrize("from_version", [0, 3, 4])
def test_an_upcaster_outside_the_event_versions_is_refused(from_version: int) -> None:
    upcasters = {**UPCASTERS, ("user.renamed", from_version): split_name}

    with pytest.raises(
        TypeError, match=rf"upcaster for 'user.renamed' version {from_version} is outside 1..2"
    ):
        Codec([UserRenamed], upcasters)


@pytest.mark.parametrize("version", [0, -1, "2", 1.5])
def test_an_invalid_event_version_is_refused(version: object) -> None:
    class Odd(msgspec.Struct, tag="odd"):
        event_version: ClassVar[object] = version

    with pytest.raises(
        TypeError, match=rf"Odd\.event_version must be an int >= 1, got {version!r}"
    ):
        Codec([Odd])


def test_encoding_an_unregistered_type_is_refused(codec: Codec) -> None:
    with pytest.raises(TypeError, match=r"Untagged is not a registered event type"):
        codec.encode_event(Untagged(user_id="u1"))


# -- upcasting --------------------------------------------------------------------------------


def test_a_version_1_payload_is_upcast_through_every_version(codec: Codec) -> None:
    v1 = old(type="user.renamed", user_id="u1", name="Ada Lovelace")

    decoded = codec.decode_payload("user.renamed", 1, v1)

    assert decoded == UserRenamed(
        user_id="u1", first_name="Ada", last_name="Lovelace", display_name="Ada Lovelace"
    )


def test_a_version_2_payload_is_upcast_by_the_later_upcasters_only() -> None:
    calls: list[tuple[int, dict[str, Any]]] = []

    def record(version: int, upcaster: Any) -> Any:
        def wrapped(payload: dict[str, Any]) -> dict[str, Any]:
            calls.append((version, dict(payload)))
            return upcaster(payload)  # type: ignore[no-any-return]

        return wrapped

    codec = Codec(
        [UserRenamed],
        {
            ("user.renamed", 1): record(1, split_name),
            ("user.renamed", 2): record(2, add_display_name),
        },
    )
    v2 = old(type="user.renamed", user_id="u1", first_name="Grace", last_name="Hopper")

    decoded = codec.decode_event(
        StoredEvent(1, "User-1", 1, "user.renamed", 2, 0.0, Metadata(), v2)
    )

    assert decoded == UserRenamed(
        user_id="u1", first_name="Grace", last_name="Hopper", display_name="Grace Hopper"
    )
    assert calls == [
        (2, {"type": "user.renamed", "user_id": "u1", "first_name": "Grace", "last_name": "Hopper"})
    ]


def test_a_payload_of_the_current_version_is_not_upcast() -> None:
    def never(payload: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("upcaster called for a current payload")

    codec = Codec([UserRenamed], {("user.renamed", 1): never, ("user.renamed", 2): never})
    event = UserRenamed(user_id="u1", first_name="A", last_name="B", display_name="AB")

    assert codec.decode_event(stored(codec.encode_event(event))) == event


def test_upcasting_does_not_need_the_old_tag_field(codec: Codec) -> None:
    # Payloads written before the event had a tag carry no "type" key.
    decoded = codec.decode_payload("user.renamed", 1, old(user_id="u1", name="Ada"))

    assert decoded == UserRenamed(user_id="u1", first_name="Ada", last_name="", display_name="Ada")


def test_upcasting_respects_a_custom_tag_field() -> None:
    class Moved(
        msgspec.Struct,
        frozen=True,
        kw_only=True,
        tag="moved",
        tag_field="kind",
        forbid_unknown_fields=True,
    ):
        event_version: ClassVar[int] = 2
        to: str
        reason: str = "unknown"

    codec = Codec([Moved], {("moved", 1): lambda p: {"kind": p["kind"], "to": p["where"]}})

    assert codec.decode_payload("moved", 1, old(kind="moved", where="Paris")) == Moved(to="Paris")


# -- decoding errors --------------------------------------------------------------------------


def test_an_unknown_tag_raises_codec_error(codec: Codec) -> None:
    with pytest.raises(CodecError, match=r"^unknown event type 'user.deleted'$"):
        codec.decode_payload("user.deleted", 1, old(user_id="u1"))


def test_a_version_newer_than_the_code_raises_codec_error(codec: Codec) -> None:
    with pytest.raises(
        CodecError,
        match=r"^event 'user.renamed' has version 4, newer than this code's version 3$",
    ):
        codec.decode_payload("user.renamed", 4, old(user_id="u1"))


@pytest.mark.parametrize(
    ("tag", "version", "data"),
    [
        pytest.param("user.created", 1, b"", id="empty"),
        pytest.param("user.created", 1, b"\xc1", id="a-byte-msgpack-never-uses"),
        pytest.param("user.created", 1, b"\x83\xa4type", id="truncated"),
        pytest.param("user.created", 1, old(user_id=5, name="Ada"), id="wrong-field-type"),
        pytest.param("user.created", 1, old(name="Ada"), id="missing-field"),
        pytest.param("user.created", 1, msgspec.msgpack.encode([1, 2]), id="not-a-map"),
        pytest.param("user.created", 1, old(type="order.placed", user_id="u"), id="other-tag"),
        pytest.param("user.renamed", 1, b"\xc1", id="old-version-a-byte-msgpack-never-uses"),
        pytest.param("user.renamed", 1, b"\x81\xa4na", id="old-version-truncated"),
        pytest.param("user.renamed", 1, msgspec.msgpack.encode(42), id="old-version-an-int"),
        pytest.param("user.renamed", 1, msgspec.msgpack.encode(["Ada"]), id="old-version-a-list"),
        pytest.param(
            "user.renamed",
            2,
            old(user_id="u1", first_name=1, last_name="x"),
            id="old-version-wrong-field-type",
        ),
    ],
)
def test_corrupt_bytes_raise_codec_error(codec: Codec, tag: str, version: int, data: bytes) -> None:
    with pytest.raises(CodecError, match=rf"^event '{tag}' version {version} does not decode: "):
        codec.decode_payload(tag, version, data)
