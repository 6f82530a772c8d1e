"""The mediator: routes each command, by its type, to its aggregate."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from motet.actors.definition import Aggregate
from motet.actors.errors import UnknownMessageType
from motet.storage.records import Ack

from .app import App

__all__ = ["Mediator"]


class Mediator:
    """Knows which aggregate handles each command type and where its id is.

    ``engine.mediator.send(command)`` is ``engine.send(command)``: the
    mediator is what routes it (see :meth:`route`).
    """

    def __init__(self, app: App, send: Callable[..., Awaitable[Ack]] | None = None) -> None:
        self._send = send
        self._routes: dict[type, tuple[Aggregate[Any], str]] = {
            command: (aggregate, id_field)
            for aggregate in app.aggregates
            for command, id_field in aggregate.commands.items()
        }

    def __repr__(self) -> str:
        return f"<Mediator commands={len(self._routes)}>"

    async def send(
        self,
        command: Any,
        *,
        command_id: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Ack:
        """Route ``command`` to its aggregate and return its Ack; takes and
        raises what :meth:`engine.Engine.send` does."""
        if self._send is None:
            raise RuntimeError("this mediator is not attached to an engine")
        return await self._send(
            command,
            command_id=command_id,
            expected_version=expected_version,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )

    def route(self, command: Any) -> tuple[Aggregate[Any], str]:
        """Return the aggregate type and aggregate id ``command`` goes to.

        Raises :class:`UnknownMessageType` when no aggregate handles its type
        and ``ValueError`` when its id field is empty or not a string.
        """
        route = self._routes.get(type(command))
        if route is None:
            raise UnknownMessageType(
                f"no aggregate handles commands of type {type(command).__qualname__}"
            )
        aggregate, id_field = route
        aggregate_id = getattr(command, id_field)
        if not isinstance(aggregate_id, str) or not aggregate_id:
            raise ValueError(
                f"{type(command).__name__}.{id_field} must be a non-empty string, "
                f"got {aggregate_id!r}"
            )
        return aggregate, aggregate_id
