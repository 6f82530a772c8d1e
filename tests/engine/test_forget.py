"""Personal data: declaring it, encrypting it per subject, and forgetting a
subject (crypto-shredding), through the embedded API on real stores."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec
import pytest

from motet.engine import (
    Aggregate,
    App,
    CodecError,
    InvalidKey,
    Personal,
    SubjectForgotten,
    Unavailable,
    open_engine,
)
from motet.engine.example import (
    CreateUser,
    GetUserById,
    PlaceOrder,
    UpdateUser,
    UserCreated,
    app,
)
from motet.storage import Append, MemoryStore, StoredEvent
from motet.storage.codec import Codec
from tests.support.postgres import Cluster, new_schema_url


def create(user: str, name: str = "Ann Lee", city: str | None = "Oslo") -> CreateUser:
    return CreateUser(
        user_id=user, name=name, email=f"{user}@example.org", password="pw", city=city
    )


# -- declaring personal data --------------------------------------------------------------


class Good(msgspec.Struct, tag="Good", kw_only=True):
    owner: str
    name: Annotated[str, Personal("owner")]
    note: Annotated[str | None, Personal("owner")] = None
    blob: Annotated[bytes, Personal("owner")] = b""
    count: Annotated[int | None, Personal("owner")] = None


def test_the_redacted_value_fits_each_field_s_type() -> None:
    from motet.storage.personal import personal_fields_of

    fields = {f.name: (f.subject, f.redacted) for f in personal_fields_of(Good)}
    assert fields == {
        "name": ("owner", ""),
        "note": ("owner", ""),
        "blob": ("owner", b""),
        "count": ("owner", None),
    }


class UnknownSubject(msgspec.Struct, tag="UnknownSubject", kw_only=True):
    name: Annotated[str, Personal("owner")]


class IntSubject(msgspec.Struct, tag="IntSubject", kw_only=True):
    owner: int
    name: Annotated[str, Personal("owner")]


class OptionalSubject(msgspec.Struct, tag="OptionalSubject", kw_only=True):
    owner: str | None
    name: Annotated[str, Personal("owner")]


class PersonalSubject(msgspec.Struct, tag="PersonalSubject", kw_only=True):
    owner: Annotated[str, Personal("other")]
    other: str
    name: Annotated[str, Personal("owner")]


class Unredactable(msgspec.Struct, tag="Unredactable", kw_only=True):
    owner: str
    age: Annotated[int, Personal("owner")]


class Twice(msgspec.Struct, tag="Twice", kw_only=True):
    owner: str
    name: Annotated[str, Personal("owner"), Personal("owner")]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (UnknownSubject, r"UnknownSubject.name is Personal\('owner'\) but UnknownSubject has no "),
        (IntSubject, r"field 'owner' is <class 'int'>, not str: a subject is a string"),
        (OptionalSubject, r"field 'owner' is str \| None, not str"),
        (PersonalSubject, r"subject field 'owner' is itself Personal"),
        (Unredactable, r"Unredactable.age is declared Personal but its type .* accepts none"),
        (Twice, r"Twice.name carries Personal more than once"),
    ],
)
def test_a_bad_declaration_is_refused_when_the_app_is_built(event: type, message: str) -> None:
    aggregate = Aggregate(
        name="Thing",
        state_type=int,
        initial=0,
        decide=lambda state, command: [],
        evolve=lambda state, event: state,
        commands={},
        events=(event,),
    )
    with pytest.raises(TypeError, match=message):
        App(aggregates=(aggregate,))


def test_personal_needs_a_field_name() -> None:
    with pytest.raises(TypeError, match="Personal needs the name of the subject's field, got ''"):
        Personal("")


def test_no_aggregate_may_take_the_subject_streams_name() -> None:
    aggregate = Aggregate(
        name="Subject",
        state_type=int,
        initial=0,
        decide=lambda state, command: [],
        evolve=lambda state, event: state,
        commands={},
        events=(),
    )
    with pytest.raises(TypeError, match="no aggregate may be named 'Subject'"):
        App(aggregates=(aggregate,))


# -- the encryption format ------------------------------------------------------------------


def sealed_batch(codec: Codec, *events: Any) -> tuple[list[StoredEvent], dict[str, Any]]:
    appends = [Append("User-u1", 0, [codec.encode_event(e) for e in events])]
    sealed, keys = codec.seal_appends(appends)
    stored = [
        StoredEvent(n, "User-u1", n, e.type, e.event_version, 0.0, sealed[0].metadata, e.data)
        for n, e in enumerate(sealed[0].events, 1)
    ]
    return stored, keys


def test_personal_fields_are_encrypted_with_a_random_nonce_and_decrypt_back() -> None:
    store = MemoryStore()
    codec = app.codec(keys=store)
    event = UserCreated(
        user_id="u1", name="Zqname", email="zq@example.org", password_hash="h", city=None
    )
    stored, keys = sealed_batch(codec, event, event)

    assert list(keys) == ["u1"]  # one new key for the batch, written with it
    store.put_keys(keys)
    first, second = stored
    assert b"Zqname" not in first.data and b"zq@example.org" not in first.data
    assert b"u1" in first.data and b"h" in first.data  # what is not personal stays in clear
    assert first.data != second.data  # a fresh nonce for every value
    assert codec.decode_event(first) == event == codec.decode_event(second)
    assert codec.subjects_of(event) == ("u1",)


def test_every_field_of_a_large_batch_gets_its_own_nonce_and_decrypts_back() -> None:
    from motet.storage.keyring import NONCE_BLOCK

    store = MemoryStore()
    codec = app.codec(keys=store)
    # Three fields per event, over several blocks of nonces read at once.
    events = [
        UserCreated(user_id="u1", name=f"n{i}", email=f"e{i}@x.org", password_hash="h", city="c")
        for i in range(NONCE_BLOCK)
    ]
    stored, keys = sealed_batch(codec, *events)
    store.put_keys(keys)

    nonces = []
    for record in stored:
        shadow = msgspec.msgpack.decode(record.data)
        for field in ("name", "email", "city"):
            ext = shadow[field]
            assert isinstance(ext, msgspec.msgpack.Ext)
            nonces.append(bytes(ext.data)[4:16])
    assert len(nonces) == 3 * NONCE_BLOCK
    assert len(set(nonces)) == len(nonces)
    assert [codec.decode_event(record) for record in stored] == events


def test_nonce_source_hands_out_distinct_12_byte_nonces() -> None:
    from motet.storage.keyring import NONCE_BLOCK, NonceSource

    source = NonceSource()
    nonces = [source.take() for _ in range(5 * NONCE_BLOCK)]
    assert {len(n) for n in nonces} == {12}
    assert len(set(nonces)) == len(nonces)


def test_cached_keys_are_not_tracked_by_the_garbage_collector_and_still_work() -> None:
    import gc

    from motet.storage.keyring import SubjectKey

    store = MemoryStore()
    codec = app.codec(keys=store)
    events = [
        UserCreated(user_id=f"u{n}", name="Ann", email="a@x.org", password_hash="h", city="Oslo")
        for n in range(50)
    ]
    appends = [Append(f"User-u{n}", 0, [codec.encode_event(e)]) for n, e in enumerate(events)]
    sealed, keys = codec.seal_appends(appends)
    store.put_keys(keys)
    codec.keyring.committed(keys)
    cached = [codec.keyring.get(f"u{n}") for n in range(50)]
    assert all(type(key) is SubjectKey for key in cached)
    assert not any(gc.is_tracked(key) for key in cached)
    for append, event in zip(sealed, events, strict=True):
        data = append.events[0].data
        assert b"Ann" not in data
        stored = StoredEvent(1, append.stream, 1, "UserCreated", 1, 0.0, append.metadata, data)
        assert codec.decode_event(stored) == event

    key = cached[0]
    assert key is not None
    with pytest.raises(CodecError, match=r"a key record is damaged \(36 bytes\)"):
        SubjectKey(key.record[:-1])
    again = SubjectKey(bytearray(key.record))
    assert type(again.record) is bytes
    assert (again.record, again.id) == (key.record, key.record[1:5])
    ciphertext = again.encrypt(b"plain", b"aad")
    assert key.aead.decrypt(ciphertext[4:16], ciphertext[16:], b"aad") == b"plain"


def test_a_bad_subject_is_refused_after_good_ones_were_seen() -> None:
    # subjects_of remembers subjects it checked: never one it refused.
    codec = app.codec()
    good = UserCreated(user_id="u1", name="Ann", email="a@x.org", password_hash="h")
    assert codec.subjects_of(good) == ("u1",)
    assert codec.subjects_of(good) == ("u1",)
    for subject in ("", "bad\x01subject", "x" * 1000):
        bad = UserCreated(user_id=subject, name="Ann", email="a@x.org", password_hash="h")
        with pytest.raises(InvalidKey):
            codec.subjects_of(bad)
        with pytest.raises(InvalidKey):
            codec.subjects_of(bad)
    assert codec.subjects_in([good, good]) == ("u1", "u1")
    assert codec.subjects_in([]) == ()


def test_a_ciphertext_moved_to_another_field_or_subject_does_not_decrypt() -> None:
    store = MemoryStore()
    codec = app.codec(keys=store)
    event = UserCreated(user_id="u1", name="Ann", email="a@example.org", password_hash="h")
    (stored,), keys = sealed_batch(codec, event)
    store.put_keys(keys)
    raw = msgspec.msgpack.decode(stored.data)
    swapped = {**raw, "name": raw["email"], "email": raw["name"]}
    moved = msgspec.structs.replace(stored, data=msgspec.msgpack.encode(swapped))
    with pytest.raises(CodecError, match="personal field 'name' of subject 'u1' does not decrypt"):
        codec.decode_event(moved)
    store.put_keys({"u2": keys["u1"]})
    other = msgspec.structs.replace(stored, data=msgspec.msgpack.encode({**raw, "user_id": "u2"}))
    with pytest.raises(CodecError, match="of subject 'u2' does not decrypt"):
        codec.decode_event(other)


def test_events_written_in_clear_before_the_declaration_still_read() -> None:
    codec = app.codec(keys=MemoryStore())
    event = UserCreated(user_id="u1", name="Ann", email="a@example.org", password_hash="h")
    plain = msgspec.msgpack.encode(event)
    assert codec.decode_payload("UserCreated", 1, plain) == event


def test_an_app_with_personal_data_off_stores_it_in_clear() -> None:
    import dataclasses

    codec = dataclasses.replace(app, personal_data=False).codec(keys=MemoryStore())
    event = UserCreated(user_id="u1", name="Zqname", email="a@example.org", password_hash="h")
    (stored,), keys = sealed_batch(codec, event)
    assert keys == {} and b"Zqname" in stored.data
    assert not codec.has_personal


def test_a_codec_without_the_store_s_keys_says_so() -> None:
    store = MemoryStore()
    event = UserCreated(user_id="u1", name="Ann", email="a@example.org", password_hash="h")
    (stored,), _ = sealed_batch(app.codec(keys=store), event)
    with pytest.raises(CodecError, match="cannot be decrypted without the store's keys"):
        app.codec().decode_event(stored)


# -- forgetting -------------------------------------------------------------------------------


async def test_forget_redacts_every_read_and_keeps_positions_and_other_fields(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "data", app, snapshot_every=3) as engine:
        await engine.send(create("u1", "Zqname"))
        await engine.send(create("u2", "Bob Berg"))
        await engine.send(UpdateUser(user_id="u1", city="Zqtown"))
        ack = await engine.send(PlaceOrder(user_id="u1", order_id="o1", amount=5))
        before = await engine.read_stream("User-u1")
        saved = engine.store.get_checkpoint("users")
        await engine.projection("users").save(force=True)
        old_checkpoint = engine.store.get_checkpoint("users")
        assert old_checkpoint is not None and saved is None

        forgotten = await engine.forget("u1")

        assert forgotten.position == ack.position + 1 and forgotten.key_deleted
        assert not forgotten.already_forgotten and forgotten.stream == "Subject-u1"
        after = await engine.read_stream("User-u1")
        assert [(e.position, e.version, e.type) for e in after] == [
            (e.position, e.version, e.type) for e in before
        ]
        assert (after[0].data.name, after[0].data.email, after[0].data.city) == ("", "", "")
        assert after[0].data.password_hash == before[0].data.password_hash
        assert after[1].data.city == "" and after[2].data == before[2].data
        subscribed = []
        async with aclosing(engine.subscribe(0)) as records:
            async for record in records:
                subscribed.append(record)
                if record.position == forgotten.position:
                    break
        assert subscribed[0].data.name == "" and subscribed[1].data.name == "Bob Berg"
        assert subscribed[-1].data == SubjectForgotten(subject="u1")
        user = await engine.ask(GetUserById(user_id="u1"), after=forgotten.position)
        assert (user.name, user.email, user.city, user.order_count) == ("", "", "", 1)
        assert (await engine.ask(GetUserById(user_id="u2"))).name == "Bob Berg"
        # The saved read model from before is unreadable now; the new one is blank.
        assert engine.codec.open_sealed("users", old_checkpoint.model or b"") is None
        new = engine.store.get_checkpoint("users")
        opened = engine.codec.open_sealed("users", new.model)
        assert opened is not None and b"Zqname" not in opened[0]
        # The actor reloaded without the data; its snapshot is not rewritten with it.
        ack = await engine.send(PlaceOrder(user_id="u1", order_id="o2", amount=5))
        assert engine.registry.live("User-u1").state.name == ""  # type: ignore[union-attr]
        snapshot = engine.store.load_snapshot("User-u1")
        assert snapshot is None or engine.codec.open_sealed("User-u1", snapshot.state) is None

        again = await engine.forget("u1")
        assert (again.key_deleted, again.already_forgotten) == (False, True)

        # A forgotten user who comes back gets a new key; the old data stays redacted.
        await engine.send(UpdateUser(user_id="u1", name="Zqback"))
        events = await engine.read_stream("User-u1")
        assert events[0].data.name == "" and events[-1].data.name == "Zqback"
    raw = (tmp_path / "data" / "data.mdb").read_bytes()
    assert b"Zqname" not in raw and b"Zqtown" not in raw and b"Zqback" not in raw

    async with open_engine(tmp_path / "data", app) as engine:
        await engine.projection("users").rebuild()
        user = await engine.ask(GetUserById(user_id="u1"))
        assert (user.name, user.email) == ("Zqback", "")
        assert (await engine.ask(GetUserById(user_id="u2"))).email == "u2@example.org"


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ("", "subject must be a non-empty string, got ''"),
        ("a\x00b", "subject must not contain NUL characters"),
        ("a\nb", "subject must not contain control characters"),
        ("x" * 495, "subject is 495 bytes of UTF-8, longer than the limit of 494 bytes"),
        (None, "subject must be a non-empty string, got None"),
    ],
)
async def test_a_bad_subject_is_refused_naming_the_problem(subject: Any, message: str) -> None:
    async with open_engine(None, app) as engine:
        with pytest.raises(InvalidKey, match=message):
            await engine.forget(subject)
        assert engine.head_position == 0


async def test_a_reader_cannot_forget(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "data", app) as writer:
        await writer.send(create("u1"))
    async with open_engine(tmp_path / "data", app, role="reader") as reader:
        with pytest.raises(Unavailable, match="cannot forget subjects"):
            await reader.forget("u1")


async def test_a_subject_field_that_cannot_be_a_subject_fails_the_command_alone() -> None:
    async with open_engine(None, app) as engine:
        with pytest.raises(InvalidKey, match="subject must not contain control characters"):
            await engine.send(create("bad\x01id"))
        assert engine.head_position == 0
        await engine.send(create("u1"))


async def test_forget_on_postgresql(postgres_cluster: Cluster) -> None:
    url = new_schema_url(postgres_cluster)
    async with open_engine(url, app) as engine:
        await engine.send(create("u1", "Zqname"))
        await engine.send(create("u2", "Bob Berg"))
        forgotten = await engine.forget("u1")
        user = await engine.ask(GetUserById(user_id="u1"), after=forgotten.position)
        assert user.name == ""
        assert (await engine.read_stream("User-u1"))[0].data.name == ""
    # Another engine (as another node would) reads the key table afresh.
    async with open_engine(url, app) as engine:
        await engine.projection("users").rebuild()
        assert (await engine.ask(GetUserById(user_id="u1"))).email == ""
        assert (await engine.ask(GetUserById(user_id="u2"))).name == "Bob Berg"
        assert engine.store.get_key("u1") is None and engine.store.get_key("u2") is not None


class RenamedV1(msgspec.Struct, tag="Renamed", kw_only=True):
    user_id: str
    name: Annotated[str, Personal("user_id")]


class RenamedV2(msgspec.Struct, tag="Renamed", kw_only=True):
    event_version: ClassVar[int] = 2
    user_id: str
    name: Annotated[str, Personal("user_id")]
    nickname: str = ""


def test_an_old_version_is_decrypted_before_upcasting_and_redacted_once_forgotten() -> None:
    store = MemoryStore()
    old = Codec([RenamedV1], keys=store)
    appends = [Append("User-u1", 0, [old.encode_event(RenamedV1(user_id="u1", name="Zq"))])]
    sealed, keys = old.seal_appends(appends)
    store.put_keys(keys)
    data = sealed[0].events[0].data
    assert b"Zq" not in data

    def upcast(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "nickname": payload["name"].lower()}

    new = Codec([RenamedV2], {("Renamed", 1): upcast}, keys=store)
    assert new.decode_payload("Renamed", 1, data) == RenamedV2(
        user_id="u1", name="Zq", nickname="zq"
    )
    store.put_keys({"u1": None})
    new = Codec([RenamedV2], {("Renamed", 1): upcast}, keys=store)
    assert new.decode_payload("Renamed", 1, data) == RenamedV2(user_id="u1", name="", nickname="")
