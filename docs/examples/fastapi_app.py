"""Motet behind a FastAPI app: the example domain (users and orders) over HTTP.

Run it (from a checkout, with ``pip install fastapi uvicorn``)::

    MOTET_DATA=./motet-data uvicorn docs.examples.fastapi_app:app

    curl -X POST localhost:8000/users -H 'content-type: application/json' \\
         -d '{"user_id": "u1", "name": "Ann", "email": "ann@example.org", "password": "pw"}'
    curl 'localhost:8000/users/u1?after=1'

FastAPI's lifespan opens the engine (``motet.engine.aio.open_engine``) when
the server starts and closes it, committing what it accepted, when it stops.
Every route is one engine call; Motet's errors become HTTP statuses in one
exception handler.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from motet.engine import (
    CommandRejected,
    Conflict,
    EngineClosed,
    MotetError,
    NotFound,
    Overloaded,
    QueryTimeout,
    UnknownMessageType,
)
from motet.engine.aio import Engine, open_engine
from motet.engine.example import CreateUser, GetUserById, PlaceOrder
from motet.engine.example import app as users_app

__all__ = ["app", "create_app"]

# The HTTP statuses of docs/design.md's error table, for the errors these routes raise.
_STATUS: dict[type[MotetError], int] = {
    CommandRejected: 422,
    Conflict: 409,
    NotFound: 404,
    UnknownMessageType: 404,
    Overloaded: 429,
    EngineClosed: 503,
    QueryTimeout: 504,
}


class NewUser(BaseModel):
    user_id: str
    name: str
    email: str
    password: str
    city: str | None = None


class NewOrder(BaseModel):
    order_id: str
    amount: float


def engine_of(request: Request) -> Engine:
    """The engine the app's lifespan opened (a FastAPI dependency)."""
    engine: Engine = request.app.state.engine
    return engine


# At module level: FastAPI resolves the routes' annotations in this namespace.
EngineDep = Annotated[Engine, Depends(engine_of)]


def create_app(data: str | None = None, **engine_options: Any) -> FastAPI:
    """The FastAPI app, with its engine on the LMDB store in ``data`` (in
    memory when None). ``engine_options`` go to ``open_engine``."""

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with open_engine(data, users_app, **engine_options) as engine:
            api.state.engine = engine
            yield

    api = FastAPI(title="Motet users", lifespan=lifespan)

    @api.exception_handler(MotetError)
    async def motet_error(request: Request, error: MotetError) -> JSONResponse:
        status = next((s for cls, s in _STATUS.items() if isinstance(error, cls)), 500)
        return JSONResponse({"error": {"message": str(error)}}, status_code=status)

    @api.post("/users", status_code=201)
    async def create_user(user: NewUser, engine: EngineDep) -> dict[str, Any]:
        ack = await engine.send(CreateUser(**user.model_dump()))
        return ack_dict(ack)

    @api.post("/users/{user_id}/orders", status_code=201)
    async def place_order(user_id: str, order: NewOrder, engine: EngineDep) -> dict[str, Any]:
        ack = await engine.send(
            PlaceOrder(user_id=user_id, order_id=order.order_id, amount=order.amount),
            command_id=f"order-{order.order_id}",
        )
        return ack_dict(ack)

    @api.get("/users/{user_id}")
    async def get_user(
        user_id: str,
        engine: EngineDep,
        after: Annotated[int | None, Query(ge=0)] = None,
        timeout: Annotated[float, Query(ge=0, le=60)] = 5.0,
    ) -> dict[str, Any]:
        # ``after`` (a position from an earlier answer) reads your own writes,
        # waiting up to ``timeout`` seconds for the read model to get there.
        summary = await engine.ask(GetUserById(user_id=user_id), after=after, timeout=timeout)
        result: dict[str, Any] = msgspec.to_builtins(summary)
        return result

    return api


def ack_dict(ack: Any) -> dict[str, Any]:
    """An Ack as JSON: the stream, its version and the log position."""
    return {"stream": ack.stream, "version": ack.version, "position": ack.position}


app = create_app(os.environ.get("MOTET_DATA"))
