"""The write side of the example app: the ``User`` aggregate.

Messages are frozen, tagged ``msgspec.Struct`` types; :func:`decide` turns a
command into events or refuses it with
:class:`~motet.engine.CommandRejected`, and :func:`evolve` folds an event
into the state without ever failing. The id is ``user_id`` (stream
``User-<user_id>``):

- :class:`CreateUser` → :class:`UserCreated`; the password is kept only as a
  salted hash (see :func:`hash_password` and :func:`verify_password`).
- :class:`UpdateUser` → :class:`UserUpdated`, carrying only the changed fields.
- :class:`DeleteUser` → :class:`UserDeleted`; a deleted user's id is not reused.
- :class:`PlaceOrder` → :class:`OrderPlaced`, stamped with the time of the
  decision.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import time
from typing import Annotated, Any

import msgspec

from motet.engine import Aggregate, CommandRejected, Personal

__all__ = [
    "PASSWORD_HASH_ITERATIONS",
    "Command",
    "CreateUser",
    "DeleteUser",
    "Event",
    "OrderPlaced",
    "PlaceOrder",
    "UpdateUser",
    "UserCreated",
    "UserDeleted",
    "UserState",
    "UserUpdated",
    "decide",
    "evolve",
    "hash_password",
    "user",
    "verify_password",
]

PASSWORD_HASH_ITERATIONS = 1_000
"""PBKDF2 rounds for new password hashes.

Deliberately low: this demo hashes inside the aggregate's ``decide``, which
runs on the event loop, so every round delays every other actor. A real
application would use a slow KDF (hundreds of thousands of rounds, scrypt or
argon2) in a worker thread, before the command is sent.
"""

_HASH_SCHEME = "pbkdf2_sha256"
_SALT_BYTES = 16
# One "@", no whitespace, and a domain of at least two non-empty labels.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")


# --- Commands -----------------------------------------------------------------
# Commands come from outside (the TCP protocol, the CLI), so a misspelled field
# is refused by name instead of being silently dropped.


class CreateUser(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="CreateUser",
    gc=False,
    forbid_unknown_fields=True,
):
    """Register a new user. ``password`` is hashed in :func:`decide` and never stored."""

    user_id: str
    name: str
    email: str
    password: str
    city: str | None = None

    def __repr__(self) -> str:
        # Keeps the plain-text password out of logs and error reports.
        return (
            f"CreateUser(user_id={self.user_id!r}, name={self.name!r}, "
            f"email={self.email!r}, password='***', city={self.city!r})"
        )


class UpdateUser(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="UpdateUser",
    gc=False,
    forbid_unknown_fields=True,
):
    """Change some of a user's details; a field left as ``None`` is unchanged."""

    user_id: str
    name: str | None = None
    email: str | None = None
    city: str | None = None


class DeleteUser(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="DeleteUser",
    gc=False,
    forbid_unknown_fields=True,
):
    """Delete a user. Later commands for that user are rejected."""

    user_id: str


class PlaceOrder(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="PlaceOrder",
    gc=False,
    forbid_unknown_fields=True,
):
    """Record that a user placed an order worth ``amount`` (> 0)."""

    user_id: str
    order_id: str
    amount: float


Command = CreateUser | UpdateUser | DeleteUser | PlaceOrder
"""Every command the ``User`` aggregate handles."""


# --- Events -------------------------------------------------------------------


class UserCreated(msgspec.Struct, frozen=True, kw_only=True, tag="UserCreated", gc=False):
    """A user was registered. ``password_hash`` is in the format of :func:`hash_password`.

    ``name``, ``email`` and ``city`` are personal data of the user: encrypted
    in the log, and ``""`` once the user is forgotten (``motet forget``)."""

    user_id: str
    name: Annotated[str, Personal("user_id")]
    email: Annotated[str, Personal("user_id")]
    password_hash: str
    city: Annotated[str | None, Personal("user_id")] = None


class UserUpdated(
    msgspec.Struct, frozen=True, kw_only=True, tag="UserUpdated", gc=False, omit_defaults=True
):
    """Some of a user's details changed; ``None`` means that field did not
    change. The details are personal data of the user, like those of
    :class:`UserCreated`."""

    user_id: str
    name: Annotated[str | None, Personal("user_id")] = None
    email: Annotated[str | None, Personal("user_id")] = None
    city: Annotated[str | None, Personal("user_id")] = None


class UserDeleted(msgspec.Struct, frozen=True, kw_only=True, tag="UserDeleted", gc=False):
    """A user was deleted."""

    user_id: str


class OrderPlaced(msgspec.Struct, frozen=True, kw_only=True, tag="OrderPlaced", gc=False):
    """A user placed an order; ``at`` is when it was accepted, in Unix seconds."""

    user_id: str
    order_id: str
    amount: float
    at: float


Event = UserCreated | UserUpdated | UserDeleted | OrderPlaced
"""Every event the ``User`` aggregate emits."""


# --- State --------------------------------------------------------------------


class UserState(msgspec.Struct, frozen=True, kw_only=True, tag="UserState", gc=False):
    """What ``decide`` needs to know about one user, folded from its events.

    The initial value (``UserState()``) is a user that was never created.
    """

    created: bool = False
    deleted: bool = False
    user_id: str = ""
    name: str = ""
    email: str = ""
    city: str | None = None
    password_hash: str = ""
    order_count: int = 0
    total_spent: float = 0.0
    last_order_at: float | None = None

    @property
    def active(self) -> bool:
        """True when the user was created and not deleted."""
        return self.created and not self.deleted


# --- Passwords ----------------------------------------------------------------


def hash_password(
    password: str, *, iterations: int = PASSWORD_HASH_ITERATIONS, salt: bytes | None = None
) -> str:
    """Return a salted PBKDF2-SHA256 hash of ``password``.

    The result reads ``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>``; the
    salt is 16 random bytes unless given.
    """
    if salt is None:
        salt = os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{_HASH_SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password_hash: str, password: str) -> bool:
    """Tell whether ``password`` matches a hash made by :func:`hash_password`.

    The comparison takes the same time wherever the digests differ. A hash that
    is malformed or of another scheme never matches (no exception).
    """
    try:
        scheme, iterations_text, salt_hex, digest_hex = password_hash.split("$")
        iterations = int(iterations_text)
        salt = bytes.fromhex(salt_hex)
        expected = bytes.fromhex(digest_hex)
    except ValueError:
        return False
    if scheme != _HASH_SCHEME or iterations < 1 or not expected:
        return False
    actual = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.compare_digest(actual, expected)


# --- decide -------------------------------------------------------------------


def decide(state: UserState, command: Command) -> list[Event]:
    """Turn ``command`` into the events it causes, given the user's ``state``.

    Raises :class:`~motet.engine.CommandRejected`, whose message says what is
    wrong and quotes the bad value, when the command is invalid or not allowed
    in this state; raises ``TypeError`` for a command this aggregate does not
    handle. Apart from the salt of a new password hash and the time stamp of an
    order, the result depends only on the arguments.
    """
    match command:
        case CreateUser():
            return [_create_user(state, command)]
        case UpdateUser():
            return [_update_user(state, command)]
        case DeleteUser():
            _require_active(state, command.user_id)
            return [UserDeleted(user_id=command.user_id)]
        case PlaceOrder():
            return [_place_order(state, command)]
        case _:
            raise TypeError(f"the User aggregate does not handle {type(command).__qualname__}")


def _create_user(state: UserState, command: CreateUser) -> UserCreated:
    _require_text("user_id", command.user_id)
    _require_text("name", command.name)
    if not command.email.strip():
        raise CommandRejected("email is required")
    _check_email(command.email)
    if not command.password:
        raise CommandRejected("password is required")
    if state.deleted:
        raise CommandRejected(
            f"user {command.user_id!r} was deleted; a deleted user's id cannot be reused"
        )
    if state.created:
        raise CommandRejected(f"user {command.user_id!r} already exists")
    return UserCreated(
        user_id=command.user_id,
        name=command.name,
        email=command.email,
        password_hash=hash_password(command.password),
        city=command.city,
    )


def _update_user(state: UserState, command: UpdateUser) -> UserUpdated:
    if command.name is None and command.email is None and command.city is None:
        raise CommandRejected("nothing to update: give at least one of name, email, city")
    if command.name is not None and not command.name.strip():
        raise CommandRejected("name must not be empty")
    if command.email is not None:
        if not command.email.strip():
            raise CommandRejected("email must not be empty")
        _check_email(command.email)
    _require_active(state, command.user_id)
    return UserUpdated(
        user_id=command.user_id, name=command.name, email=command.email, city=command.city
    )


def _place_order(state: UserState, command: PlaceOrder) -> OrderPlaced:
    _require_text("order_id", command.order_id)
    amount = float(command.amount)
    # NaN compares false with everything, so "amount <= 0" alone would let it through.
    if not math.isfinite(amount) or amount <= 0:
        raise CommandRejected(f"amount must be > 0, got {_number(amount)}")
    _require_active(state, command.user_id)
    return OrderPlaced(
        user_id=command.user_id, order_id=command.order_id, amount=amount, at=time.time()
    )


def _require_text(field: str, value: str) -> None:
    if not value.strip():
        raise CommandRejected(f"{field} is required")


def _check_email(email: str) -> None:
    if _EMAIL.fullmatch(email) is None:
        raise CommandRejected(f"email {email!r} is not a valid address")


def _require_active(state: UserState, user_id: str) -> None:
    if state.deleted:
        raise CommandRejected(f"user {user_id!r} was deleted")
    if not state.created:
        raise CommandRejected(f"user {user_id!r} does not exist")


def _number(value: float) -> str:
    """Format a number as a person wrote it: ``-5`` rather than ``-5.0``."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


# --- evolve -------------------------------------------------------------------


def evolve(state: UserState, event: Event) -> UserState:
    """Return the state after ``event``. Pure, and never fails: an event this
    function does not know leaves the state unchanged."""
    match event:
        case UserCreated():
            return UserState(
                created=True,
                user_id=event.user_id,
                name=event.name,
                email=event.email,
                city=event.city,
                password_hash=event.password_hash,
            )
        case UserUpdated():
            changes: dict[str, Any] = {}
            if event.name is not None:
                changes["name"] = event.name
            if event.email is not None:
                changes["email"] = event.email
            if event.city is not None:
                changes["city"] = event.city
            return msgspec.structs.replace(state, **changes)
        case UserDeleted():
            return msgspec.structs.replace(state, deleted=True)
        case OrderPlaced():
            return msgspec.structs.replace(
                state,
                order_count=state.order_count + 1,
                total_spent=state.total_spent + event.amount,
                last_order_at=event.at,
            )
    return state


# --- The aggregate ------------------------------------------------------------

user = Aggregate(
    name="User",
    state_type=UserState,
    initial=UserState(),
    decide=decide,
    evolve=evolve,
    commands={
        CreateUser: "user_id",
        UpdateUser: "user_id",
        DeleteUser: "user_id",
        PlaceOrder: "user_id",
    },
    events=(UserCreated, UserUpdated, UserDeleted, OrderPlaced),
    snapshot_every=100,
)
"""The ``User`` aggregate: one stream per ``user_id``, a snapshot every 100 events."""
