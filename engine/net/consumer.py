"""What a client's consumer-group member receives: events it can ack or nack.

Shared by the trio and asyncio clients (:mod:`motet.engine.net.client`,
:mod:`motet.engine.net.aio_client`); it loads no runtime.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Any

from .protocol import AckOp, NackOp, WireEvent, WireMetadata

__all__ = ["GroupEvent", "Settle"]

Settle = Callable[[AckOp | NackOp], Awaitable[Any]]
"""Sends an ack or nack and waits for its reply (raising an error reply)."""


class GroupEvent:
    """An event delivered to this member of consumer group ``group``.

    It has the fields of a subscription's event (``position``, ``stream``,
    ``version``, ``type``, ``time``, ``data``, ``metadata``). Settle it once:
    ``await event.ack()`` when handled (returns once the server saved it
    durably), or ``await event.nack(error, retry_after=s)`` to have it
    delivered again. Delivery is at least once: use ``position`` as the
    idempotency key of what handling the event does.
    """

    __slots__ = ("_ids", "_settle", "event", "group")

    def __init__(
        self, group: str, event: WireEvent, settle: Settle, ids: Callable[[], int]
    ) -> None:
        self.group = group
        self.event = event
        self._settle = settle
        self._ids = ids

    def __repr__(self) -> str:
        event = self.event
        return (
            f"<GroupEvent group={self.group!r} position={event.position} "
            f"stream={event.stream!r} version={event.version} type={event.type!r}>"
        )

    @property
    def position(self) -> int:
        """The event's global position: the idempotency key."""
        return self.event.position

    @property
    def stream(self) -> str:
        return self.event.stream

    @property
    def version(self) -> int:
        return self.event.version

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def time(self) -> datetime.datetime:
        return self.event.time

    @property
    def data(self) -> Any:
        return self.event.data

    @property
    def metadata(self) -> WireMetadata:
        return self.event.metadata

    async def ack(self) -> None:
        """Handled: the group will not deliver it again. Raises
        :class:`~motet.storage.errors.NotFound` when this member no longer
        holds it (e.g. it was given to another member after a reconnect)."""
        await self._settle(AckOp(id=self._ids(), group=self.group, position=self.position))

    async def nack(self, error: str | None = None, *, retry_after: float = 0.0) -> None:
        """Not handled (because of ``error``): deliver it again after
        ``retry_after`` seconds, or park it once it failed the group's limit
        of attempts."""
        await self._settle(
            NackOp(
                id=self._ids(),
                group=self.group,
                position=self.position,
                retry_after=retry_after,
                error=error,
            )
        )
