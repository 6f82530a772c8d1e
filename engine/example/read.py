"""The read side of the example app: the ``users`` projection and its queries.

One projection, ``users``, keeps a table of every live user with denormalized
order figures (:class:`UsersModel`); the queries (:data:`queries`) read it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import msgspec

from motet.engine import NotFound, Order, Projection, Query, SubjectForgotten, Table
from motet.storage.records import RecordedEvent

from .write import OrderPlaced, UserCreated, UserDeleted, UserUpdated

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "MAX_LIST_LIMIT",
    "MAX_TOP_SPENDERS",
    "GetUserByEmail",
    "GetUserById",
    "GetUsersByCity",
    "TopSpenders",
    "UserRow",
    "UserSummary",
    "UsersModel",
    "get_user_by_email",
    "get_user_by_id",
    "get_users_by_city",
    "queries",
    "top_spenders",
    "users_projection",
]


# --- The read model -------------------------------------------------------------


class UserRow(msgspec.Struct, kw_only=True):
    """One user in the ``users`` read model (mutable: owned by its table)."""

    user_id: str
    name: str
    email: str
    city: str | None = None
    order_count: int = 0
    total_spent: float = 0.0
    last_order_at: float | None = None
    # Position of the user's UserCreated event: decides which user an email
    # finds when several registered with it (emails are not unique per se).
    created_at_position: int = 0


class UserSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What the user queries answer; never includes the password hash."""

    user_id: str
    name: str
    email: str
    city: str | None
    order_count: int
    total_spent: float
    last_order_at: str | None
    """When the last order was accepted: ISO 8601 in UTC (``...Z``), as the
    protocol gives event times; None before the first order."""


class UsersModel:
    """The ``users`` read model: users by id, by email, by city, and by total
    spent (largest first, ties by user id)."""

    def __init__(self, rows: Sequence[UserRow] = ()) -> None:
        self.users: Table[UserRow] = Table(
            UserRow,
            key="user_id",
            indexes=("email", "city"),
            orders=(Order("spent", lambda row: (-row.total_spent, row.user_id)),),
        )
        self.users.load(rows)

    def __repr__(self) -> str:
        return f"<UsersModel users={len(self.users)}>"


def _on_user_created(model: UsersModel, event: UserCreated, record: RecordedEvent) -> None:
    model.users.insert(
        UserRow(
            user_id=event.user_id,
            name=event.name,
            email=event.email,
            city=event.city,
            created_at_position=record.position,
        )
    )


def _on_user_updated(model: UsersModel, event: UserUpdated, record: RecordedEvent) -> None:
    changes = {
        name: value
        for name in ("name", "email", "city")
        if (value := getattr(event, name)) is not None
    }
    model.users.update(event.user_id, **changes)


def _on_user_deleted(model: UsersModel, event: UserDeleted, record: RecordedEvent) -> None:
    model.users.delete(event.user_id)


def _on_subject_forgotten(
    model: UsersModel, event: SubjectForgotten, record: RecordedEvent
) -> None:
    # Blank, as the log now reads after a rebuild: the user, its orders and
    # totals stay; its personal fields become their redacted value, "".
    if model.users.get(event.subject) is not None:
        model.users.update(event.subject, name="", email="", city="")


def _on_order_placed(model: UsersModel, event: OrderPlaced, record: RecordedEvent) -> None:
    row = model.users.get(event.user_id)
    if row is None:  # the aggregate refuses orders of unknown users; be lenient anyway
        return
    # Both counters move, in place: neither update may be lost.
    row.order_count += 1
    row.total_spent += event.amount
    row.last_order_at = event.at
    model.users.touch(event.user_id)


users_projection: Projection[UsersModel] = Projection(
    name="users",
    initial=UsersModel,
    handlers={
        UserCreated: _on_user_created,
        UserUpdated: _on_user_updated,
        UserDeleted: _on_user_deleted,
        OrderPlaced: _on_order_placed,
        SubjectForgotten: _on_subject_forgotten,
    },
    schema_version=1,
    snapshot_type=list[UserRow],
    dump=lambda model: model.users.rows(),
    load=UsersModel,
)
"""Folds the User events into :class:`UsersModel`; saved every 100,000 events."""


# --- Queries ------------------------------------------------------------------

DEFAULT_LIST_LIMIT = 100
"""Users a list query (:class:`GetUsersByCity`) answers when it gives no ``limit``."""

MAX_LIST_LIMIT = 1_000
"""The largest ``limit`` a list query accepts: every answer is built on the
event loop, so none may grow with the read model."""


class GetUserById(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="GetUserById",
    gc=False,
    forbid_unknown_fields=True,
):
    """One user by id → :class:`UserSummary`, or :class:`~motet.engine.NotFound`."""

    user_id: str


class GetUserByEmail(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="GetUserByEmail",
    gc=False,
    forbid_unknown_fields=True,
):
    """The user registered with ``email`` (the first one, if several were)."""

    email: str


class GetUsersByCity(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="GetUsersByCity",
    gc=False,
    forbid_unknown_fields=True,
):
    """A page of the users living in ``city``, by user id (an empty list when
    none are left): at most ``limit`` (1..:data:`MAX_LIST_LIMIT`, default
    :data:`DEFAULT_LIST_LIMIT`) users whose id sorts after ``after_user_id``.
    Pass the last id of a page as ``after_user_id`` to get the next one.

    The cursor is not called ``after``: that name is the read-your-writes
    position of every query (``GET /queries/...?after=``).
    """

    city: str
    limit: int = DEFAULT_LIST_LIMIT
    after_user_id: str | None = None


class TopSpenders(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="TopSpenders",
    gc=False,
    forbid_unknown_fields=True,
):
    """The ``limit`` users who spent most (ties by user id), largest first."""

    limit: int = 10


MAX_TOP_SPENDERS = 1_000
"""The largest ``limit`` :class:`TopSpenders` accepts."""


def _summary(row: UserRow) -> UserSummary:
    return UserSummary(
        user_id=row.user_id,
        name=row.name,
        email=row.email,
        city=row.city,
        order_count=row.order_count,
        total_spent=row.total_spent,
        last_order_at=_iso_utc(row.last_order_at),
    )


def _iso_utc(seconds: float | None) -> str | None:
    """Unix seconds (``OrderPlaced.at`` keeps them so) as ISO 8601 UTC."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def get_user_by_id(model: UsersModel, query: GetUserById) -> UserSummary:
    """Answer :class:`GetUserById`."""
    row = model.users.get(query.user_id)
    if row is None:
        raise NotFound(f"no user {query.user_id!r}")
    return _summary(row)


def get_user_by_email(model: UsersModel, query: GetUserByEmail) -> UserSummary:
    """Answer :class:`GetUserByEmail`."""
    rows = model.users.where("email", query.email)
    if not rows:
        raise NotFound(f"no user with email {query.email!r}")
    return _summary(min(rows, key=lambda row: row.created_at_position))


def get_users_by_city(model: UsersModel, query: GetUsersByCity) -> list[UserSummary]:
    """Answer :class:`GetUsersByCity` with one page; raises ``ValueError`` for
    a limit outside 1..1000."""
    if not 1 <= query.limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {query.limit}")
    page = model.users.page_where("city", query.city, query.limit, query.after_user_id)
    return [_summary(row) for row in page]


def top_spenders(model: UsersModel, query: TopSpenders) -> list[UserSummary]:
    """Answer :class:`TopSpenders`; raises ``ValueError`` for a limit outside 1..1000."""
    if not 1 <= query.limit <= MAX_TOP_SPENDERS:
        raise ValueError(f"limit must be between 1 and {MAX_TOP_SPENDERS}, got {query.limit}")
    return [_summary(row) for row in model.users.top("spent", query.limit)]


queries: tuple[Query[UsersModel, Any], ...] = (
    Query(GetUserById, "users", get_user_by_id),
    Query(GetUserByEmail, "users", get_user_by_email),
    Query(GetUsersByCity, "users", get_users_by_city),
    Query(TopSpenders, "users", top_spenders),
)
"""The example's queries, all answered from the ``users`` projection."""
