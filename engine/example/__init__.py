"""The example app: users who place orders.

It is the seed domain ``motet serve`` runs by default, the workload the
benchmarks drive, and a model for writing an app:

- :mod:`.write`: the ``User`` aggregate: its commands, events and state, the
  pure ``decide`` and ``evolve``, and password hashing;
- :mod:`.read`: the ``users`` read model, the projection that folds the
  events into it, and the queries that read it;
- :mod:`.demo`: the short scripted session ``motet demo`` runs (imported only
  by that command);
- :mod:`.shop_app`: a second app, ``shop`` (orders cancelled when not paid in
  time, a loyalty bonus after every fifth paid order), showing process
  managers and timers; imported when first used.

This face re-exports the public names of both sides and assembles
:data:`app`.
"""

from typing import TYPE_CHECKING, Any

from motet.engine.app import App

from .read import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    MAX_TOP_SPENDERS,
    GetUserByEmail,
    GetUserById,
    GetUsersByCity,
    TopSpenders,
    UserRow,
    UsersModel,
    UserSummary,
    get_user_by_email,
    get_user_by_id,
    get_users_by_city,
    queries,
    top_spenders,
    users_projection,
)
from .write import (
    PASSWORD_HASH_ITERATIONS,
    Command,
    CreateUser,
    DeleteUser,
    Event,
    OrderPlaced,
    PlaceOrder,
    UpdateUser,
    UserCreated,
    UserDeleted,
    UserState,
    UserUpdated,
    decide,
    evolve,
    hash_password,
    user,
    verify_password,
)

if TYPE_CHECKING:
    from .shop_app import shop

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "MAX_LIST_LIMIT",
    "MAX_TOP_SPENDERS",
    "PASSWORD_HASH_ITERATIONS",
    "Command",
    "CreateUser",
    "DeleteUser",
    "Event",
    "GetUserByEmail",
    "GetUserById",
    "GetUsersByCity",
    "OrderPlaced",
    "PlaceOrder",
    "TopSpenders",
    "UpdateUser",
    "UserCreated",
    "UserDeleted",
    "UserRow",
    "UserState",
    "UserSummary",
    "UserUpdated",
    "UsersModel",
    "app",
    "decide",
    "evolve",
    "get_user_by_email",
    "get_user_by_id",
    "get_users_by_city",
    "hash_password",
    "queries",
    "shop",
    "top_spenders",
    "user",
    "users_projection",
    "verify_password",
]

app = App(aggregates=(user,), projections=(users_projection,), queries=queries)
"""The example application, the default for ``motet serve``."""


def __getattr__(name: str) -> Any:
    # The shop app is a second app: the default one does not load it.
    if name == "shop":
        from .shop_app import shop

        globals()["shop"] = shop
        return shop
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
