"""Given/when/then tests of the example app's ``User`` aggregate: pure functions, no trio."""

from __future__ import annotations

import time
from functools import partial

import msgspec
import pytest

from motet.actors.errors import CommandRejected
from motet.engine.example import (
    PASSWORD_HASH_ITERATIONS,
    Command,
    CreateUser,
    DeleteUser,
    OrderPlaced,
    PlaceOrder,
    UpdateUser,
    UserCreated,
    UserDeleted,
    UserState,
    UserUpdated,
    app,
    decide,
    evolve,
    hash_password,
    user,
    verify_password,
)
from motet.storage.codec import tag_of
from tests.support.commands import create_user
from tests.support.folds import fold_user as given

CREATED = UserCreated(
    user_id="u1",
    name="Ada",
    email="ada@example.org",
    password_hash=hash_password("correct horse"),
    city="London",
)
DELETED = UserDeleted(user_id="u1")


create = partial(
    create_user,
    user_id="u1",
    name="Ada",
    email="ada@example.org",
    password="correct horse",
    city="London",
)


# --- CreateUser ---------------------------------------------------------------


def test_create_user_emits_user_created() -> None:
    [event] = decide(given([]), create())

    assert isinstance(event, UserCreated)
    assert (event.user_id, event.name, event.email, event.city) == (
        "u1",
        "Ada",
        "ada@example.org",
        "London",
    )


def test_create_user_city_is_optional() -> None:
    [event] = decide(
        given([]), CreateUser(user_id="u1", name="Ada", email="ada@example.org", password="pw")
    )

    assert isinstance(event, UserCreated)
    assert event.city is None


def test_create_user_stores_only_a_salted_hash_of_the_password() -> None:
    [first] = decide(given([]), create(password="correct horse"))
    [second] = decide(given([]), create(password="correct horse"))

    assert isinstance(first, UserCreated)
    assert isinstance(second, UserCreated)
    assert b"correct horse" not in msgspec.msgpack.encode(first)
    assert "correct horse" not in repr(first)
    scheme, iterations, salt, digest = first.password_hash.split("$")
    assert (scheme, int(iterations)) == ("pbkdf2_sha256", PASSWORD_HASH_ITERATIONS)
    assert len(bytes.fromhex(salt)) == 16
    assert len(bytes.fromhex(digest)) == 32
    # A fresh salt per hash: equal passwords do not give equal hashes.
    assert first.password_hash != second.password_hash
    assert verify_password(first.password_hash, "correct horse")
    assert verify_password(second.password_hash, "correct horse")
    assert not verify_password(first.password_hash, "wrong horse")


def test_create_user_repr_hides_the_password() -> None:
    assert "correct horse" not in repr(create(password="correct horse"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"email": ""}, r"^email is required$"),
        ({"email": "   "}, r"^email is required$"),
        ({"email": "ada"}, r"^email 'ada' is not a valid address$"),
        ({"email": "ada@example"}, r"^email 'ada@example' is not a valid address$"),
        ({"email": "a@b@example.org"}, r"^email 'a@b@example.org' is not a valid address$"),
        ({"email": "ada @example.org"}, r"^email 'ada @example.org' is not a valid address$"),
        ({"email": "ada@example..org"}, r"^email 'ada@example..org' is not a valid address$"),
        ({"user_id": ""}, r"^user_id is required$"),
        ({"name": " "}, r"^name is required$"),
        ({"password": ""}, r"^password is required$"),
    ],
)
def test_create_user_rejects_invalid_fields(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(CommandRejected, match=message):
        decide(given([]), create(**overrides))


def test_create_user_rejects_an_existing_user() -> None:
    with pytest.raises(CommandRejected, match=r"^user 'u1' already exists$"):
        decide(given([CREATED]), create())


def test_create_user_rejects_the_id_of_a_deleted_user() -> None:
    with pytest.raises(CommandRejected, match=r"^user 'u1' was deleted"):
        decide(given([CREATED, DELETED]), create())


def test_create_user_refuses_unknown_fields_at_the_edge() -> None:
    data = {"user_id": "u1", "name": "Ada", "emial": "ada@example.org", "password": "pw"}

    with pytest.raises(msgspec.ValidationError, match="emial"):
        msgspec.convert(data, CreateUser)


# --- UpdateUser ---------------------------------------------------------------


def test_update_user_emits_only_the_given_fields() -> None:
    [event] = decide(given([CREATED]), UpdateUser(user_id="u1", city="Paris"))

    assert event == UserUpdated(user_id="u1", city="Paris")


def test_update_user_changes_only_the_given_fields() -> None:
    before = given([CREATED])

    after = given([CREATED, UserUpdated(user_id="u1", city="Paris")])

    assert after.city == "Paris"
    assert msgspec.structs.replace(after, city=before.city) == before


def test_update_user_changes_every_given_field() -> None:
    state = given(
        [CREATED, UserUpdated(user_id="u1", name="Ada L.", email="ada@example.com", city="Paris")]
    )

    assert (state.name, state.email, state.city) == ("Ada L.", "ada@example.com", "Paris")


def test_update_user_rejects_a_user_that_does_not_exist() -> None:
    with pytest.raises(CommandRejected, match=r"^user 'u1' does not exist$"):
        decide(given([]), UpdateUser(user_id="u1", name="Ada"))


def test_update_user_rejects_a_deleted_user() -> None:
    with pytest.raises(CommandRejected, match=r"^user 'u1' was deleted$"):
        decide(given([CREATED, DELETED]), UpdateUser(user_id="u1", name="Ada"))


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (UpdateUser(user_id="u1", email="nope"), r"^email 'nope' is not a valid address$"),
        (UpdateUser(user_id="u1", email=""), r"^email must not be empty$"),
        (UpdateUser(user_id="u1", name=""), r"^name must not be empty$"),
        (UpdateUser(user_id="u1"), r"^nothing to update: give at least one of name, email, city$"),
    ],
)
def test_update_user_rejects_invalid_fields(command: UpdateUser, message: str) -> None:
    with pytest.raises(CommandRejected, match=message):
        decide(given([CREATED]), command)


# --- DeleteUser ---------------------------------------------------------------


def test_delete_user_emits_user_deleted() -> None:
    assert decide(given([CREATED]), DeleteUser(user_id="u1")) == [DELETED]


def test_delete_user_rejects_a_user_that_does_not_exist() -> None:
    with pytest.raises(CommandRejected, match=r"^user 'u1' does not exist$"):
        decide(given([]), DeleteUser(user_id="u1"))


def test_delete_user_rejects_a_user_already_deleted() -> None:
    with pytest.raises(CommandRejected, match=r"^user 'u1' was deleted$"):
        decide(given([CREATED, DELETED]), DeleteUser(user_id="u1"))


# --- PlaceOrder ---------------------------------------------------------------


def test_place_order_emits_order_placed_stamped_with_the_decision_time() -> None:
    before = time.time()

    [event] = decide(given([CREATED]), PlaceOrder(user_id="u1", order_id="o1", amount=12.5))

    assert isinstance(event, OrderPlaced)
    assert (event.user_id, event.order_id, event.amount) == ("u1", "o1", 12.5)
    assert before <= event.at <= time.time()


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (-5.0, r"^amount must be > 0, got -5$"),
        (0.0, r"^amount must be > 0, got 0$"),
        (-0.25, r"^amount must be > 0, got -0.25$"),
        (float("nan"), r"^amount must be > 0, got nan$"),
        (float("inf"), r"^amount must be > 0, got inf$"),
    ],
)
def test_place_order_rejects_an_amount_not_above_zero(amount: float, message: str) -> None:
    with pytest.raises(CommandRejected, match=message):
        decide(given([CREATED]), PlaceOrder(user_id="u1", order_id="o1", amount=amount))


def test_place_order_rejects_an_empty_order_id() -> None:
    with pytest.raises(CommandRejected, match=r"^order_id is required$"):
        decide(given([CREATED]), PlaceOrder(user_id="u1", order_id="", amount=1.0))


def test_place_order_rejects_a_user_that_does_not_exist() -> None:
    with pytest.raises(CommandRejected, match=r"^user 'u1' does not exist$"):
        decide(given([]), PlaceOrder(user_id="u1", order_id="o1", amount=1.0))


def test_place_order_rejects_a_deleted_user() -> None:
    with pytest.raises(CommandRejected, match=r"^user 'u1' was deleted$"):
        decide(given([CREATED, DELETED]), PlaceOrder(user_id="u1", order_id="o1", amount=1.0))


# --- evolve -------------------------------------------------------------------


def test_evolve_folds_every_event_into_the_state() -> None:
    state = given(
        [
            CREATED,
            UserUpdated(user_id="u1", email="ada@example.com"),
            OrderPlaced(user_id="u1", order_id="o1", amount=10.0, at=1_700_000_000.0),
            OrderPlaced(user_id="u1", order_id="o2", amount=2.5, at=1_700_000_100.0),
            DELETED,
        ]
    )

    assert state == UserState(
        created=True,
        deleted=True,
        user_id="u1",
        name="Ada",
        email="ada@example.com",
        city="London",
        password_hash=CREATED.password_hash,
        order_count=2,
        total_spent=12.5,
        last_order_at=1_700_000_100.0,
    )
    assert not state.active


def test_evolve_ignores_an_event_it_does_not_know() -> None:
    state = given([CREATED])

    assert evolve(state, object()) is state  # type: ignore[arg-type]


def test_initial_state_is_a_user_never_created() -> None:
    state = given([])

    assert state == UserState()
    assert not state.created
    assert not state.active


def test_decide_then_evolve_round_trip() -> None:
    state = given([])
    commands: list[Command] = [
        create(),
        UpdateUser(user_id="u1", name="Ada L."),
        PlaceOrder(user_id="u1", order_id="o1", amount=3.0),
    ]
    for command in commands:
        for event in decide(state, command):
            state = evolve(state, event)

    assert state.active
    assert (state.name, state.order_count, state.total_spent) == ("Ada L.", 1, 3.0)
    assert verify_password(state.password_hash, "correct horse")


# --- Passwords ----------------------------------------------------------------


def test_hash_password_is_deterministic_for_a_given_salt() -> None:
    salt = bytes(range(16))

    assert hash_password("pw", salt=salt) == hash_password("pw", salt=salt)
    assert hash_password("pw", salt=salt).startswith(
        f"pbkdf2_sha256${PASSWORD_HASH_ITERATIONS}${salt.hex()}$"
    )


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain text",
        "pbkdf2_sha256$1000$zz$00",
        "pbkdf2_sha256$many$00$00",
        "pbkdf2_sha256$0$00$00",
        "md5$1000$00$00",
        "pbkdf2_sha256$1000$00$",
    ],
)
def test_verify_password_rejects_malformed_hashes(stored: str) -> None:
    assert not verify_password(stored, "pw")


# --- The app definition ---------------------------------------------------------


def test_user_aggregate_routes_every_command_by_user_id() -> None:
    assert user.name == "User"
    assert dict(user.commands) == {
        CreateUser: "user_id",
        UpdateUser: "user_id",
        DeleteUser: "user_id",
        PlaceOrder: "user_id",
    }
    assert set(user.events) == {UserCreated, UserUpdated, UserDeleted, OrderPlaced}
    assert user in app.aggregates


def test_messages_have_stable_tags() -> None:
    for cls in [*user.commands, *user.events, UserState]:
        assert tag_of(cls) == cls.__name__


def test_the_face_exports_both_sides_and_the_app() -> None:
    from motet.engine import example
    from motet.engine.example import read, write

    assert sorted(example.__all__) == sorted([*write.__all__, *read.__all__, "app", "shop"])
    for name in example.__all__:
        assert getattr(example, name) is not None, name
    for side in (write, read):
        for name in side.__all__:
            assert getattr(example, name) is getattr(side, name), name
    assert {"user", "queries", "users_projection", "decide", "evolve"} <= set(example.__all__)
    # The demo is what a command runs, not part of the app.
    assert "demo" not in example.__all__
