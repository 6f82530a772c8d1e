"""The seed workload's domain written for the Python ``eventsourcing`` library.

This is the comparison baseline of ``benchmarks.seed_workload --compare``: the same
users-and-orders domain as ``motet.engine.example``, written the way that library's
documentation writes applications (an ``Application`` whose command methods load
an aggregate from the repository, call a decorated method and ``save`` it), and
persisted with its SQLite module. Only the benchmark imports this module, and only
when a comparison is asked for, so ``eventsourcing`` stays an optional dependency.
"""

from __future__ import annotations

import re
from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from motet.engine.example import hash_password

__all__ = ["CACHES", "User", "Users", "open_users"]


# The same checks and the same password hashing (the example's own function) as
# motet.engine.example, so that both engines do the same work per command.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")


class User(Aggregate):
    """A user who places orders; its id is derived from ``user_id``."""

    @staticmethod
    def create_id(user_id: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/users/{user_id}")

    @event("Created")
    def __init__(
        self, user_id: str, name: str, email: str, password_hash: str, city: str | None
    ) -> None:
        self.user_id = user_id
        self.name = name
        self.email = email
        self.password_hash = password_hash
        self.city = city
        self.order_count = 0
        self.total_spent = 0.0

    @event("Updated")
    def update(self, name: str | None, email: str | None, city: str | None) -> None:
        if name is not None:
            self.name = name
        if email is not None:
            self.email = email
        if city is not None:
            self.city = city

    @event("OrderPlaced")
    def place_order(self, order_id: str, amount: float) -> None:
        self.order_count += 1
        self.total_spent += amount


class Users(Application[UUID]):
    """Command methods of the users-and-orders domain; they raise ``ValueError``
    for invalid input, as the Motet example app rejects it."""

    def create_user(
        self, user_id: str, name: str, email: str, password: str, city: str | None = None
    ) -> None:
        if _EMAIL.fullmatch(email) is None:
            msg = f"email {email!r} is not a valid address"
            raise ValueError(msg)
        # A second User with the same id fails in save() with IntegrityError.
        user = User(
            user_id=user_id,
            name=name,
            email=email,
            password_hash=hash_password(password),
            city=city,
        )
        self.save(user)

    def update_user(
        self,
        user_id: str,
        name: str | None = None,
        email: str | None = None,
        city: str | None = None,
    ) -> None:
        user: User = self.repository.get(User.create_id(user_id))
        user.update(name=name, email=email, city=city)
        self.save(user)

    def place_order(self, user_id: str, order_id: str, amount: float) -> None:
        if amount <= 0:
            msg = f"amount must be > 0, got {amount}"
            raise ValueError(msg)
        user: User = self.repository.get(User.create_id(user_id))
        user.place_order(order_id=order_id, amount=amount)
        self.save(user)


CACHES = ("fastforward", "trusted", "none")
"""How the baseline keeps aggregates between commands (``--compare-cache``):
``fastforward``, an aggregate cache that looks for newer events in the
database on every get (the library's default once a cache is on);
``trusted``, a cache that does not (``AGGREGATE_CACHE_FASTFORWARD=n``: one
process writes, as one Motet process owns its actors); ``none``, no cache
(the library's default: every command replays the aggregate's events)."""


def open_users(db_path: Path, *, cache_maxsize: int, cache: str = "fastforward") -> Users:
    """Return a ``Users`` application persisted in the SQLite file ``db_path``,
    keeping aggregates as ``cache`` says (see :data:`CACHES`).

    The configuration is passed as the application's ``env``, which takes
    precedence over ``os.environ``. SQLite runs in WAL mode with its default
    ``synchronous=FULL``, so every ``save`` is durable before it returns.
    """
    if cache not in CACHES:
        msg = f"cache must be one of {', '.join(CACHES)}, got {cache!r}"
        raise ValueError(msg)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(db_path),
    }
    if cache != "none":
        env["AGGREGATE_CACHE_MAXSIZE"] = str(cache_maxsize)
    if cache == "trusted":
        env["AGGREGATE_CACHE_FASTFORWARD"] = "n"
    return Users(env=env)
