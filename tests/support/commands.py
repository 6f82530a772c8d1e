"""Example-app commands for tests: as structs for an engine, and as the
protocol requests a raw connection sends.

Every field has a default derived from the ids, so a test names only what it
checks; a test module binds its own defaults with :func:`functools.partial`.
"""

from __future__ import annotations

from typing import Any

from motet.engine.example import CreateUser, PlaceOrder

__all__ = ["create_user", "create_user_request", "place_order", "place_order_request"]


def create_user(
    user_id: str = "u1",
    name: str | None = None,
    *,
    email: str | None = None,
    password: str = "pw",
    city: str | None = None,
) -> CreateUser:
    """``CreateUser`` for ``user_id``; ``name`` defaults to ``"Name <user_id>"``
    and ``email`` to ``"<user_id>@example.org"``."""
    return CreateUser(
        user_id=user_id,
        name=f"Name {user_id}" if name is None else name,
        email=f"{user_id}@example.org" if email is None else email,
        password=password,
        city=city,
    )


def place_order(user_id: str = "u1", order_id: str = "o", amount: float = 10.0) -> PlaceOrder:
    """``PlaceOrder`` of ``amount`` by ``user_id``."""
    return PlaceOrder(user_id=user_id, order_id=order_id, amount=amount)


def create_user_request(user_id: str, name: str | None = None, **fields: Any) -> dict[str, Any]:
    """The protocol request of a ``CreateUser`` (no request id); ``fields``
    replace the data's defaults (city ``"Oslo"``, password ``"pw"``)."""
    data = {
        "user_id": user_id,
        "name": f"Name {user_id}" if name is None else name,
        "email": f"{user_id}@example.org",
        "password": "pw",
        "city": "Oslo",
        **fields,
    }
    return {"op": "command", "type": "CreateUser", "data": data}


def place_order_request(user_id: str, order_id: str, amount: float = 10) -> dict[str, Any]:
    """The protocol request of a ``PlaceOrder`` (no request id)."""
    return {
        "op": "command",
        "type": "PlaceOrder",
        "data": {"user_id": user_id, "order_id": order_id, "amount": amount},
    }
