"""Partitions: how a shared log's aggregates are split among writer nodes.

Every stream id maps to one of ``P`` partitions by a stable hash (CRC-32 of
its UTF-8 bytes, the same in every process and every Python: never the
salted built-in ``hash()``); ``P`` is fixed when the store is created. A node
writes a partition's streams only while it holds the partition's lease (see
:class:`Lease` and the PostgreSQL store's lease methods); every claim bumps
the partition's epoch, and every append carries the epoch its node holds,
so a node that lost a lease without noticing cannot commit.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol

import msgspec

__all__ = [
    "DEFAULT_PARTITIONS",
    "Lease",
    "LeaseStore",
    "LeaseView",
    "NodeInfo",
    "partition_of",
    "quotas",
]

DEFAULT_PARTITIONS = 64
"""Partitions of a new partitioned store, unless it is created with another count."""


def partition_of(stream: str, partitions: int) -> int:
    """The partition (``0 <= p < partitions``) of ``stream``: CRC-32 of its
    UTF-8 bytes modulo ``partitions``, stable across processes and versions."""
    return zlib.crc32(stream.encode("utf-8", "surrogatepass")) % partitions


def quotas(nodes: Sequence[str], partitions: int) -> dict[str, int]:
    """How many partitions each of ``nodes`` should own so that they are
    spread evenly: ``partitions // n`` each, one more for the first
    ``partitions % n`` node ids in sorted order (every node computes the same
    split from the same list)."""
    ordered = sorted(set(nodes))
    if not ordered:
        return {}
    share, extra = divmod(partitions, len(ordered))
    return {node: share + (1 if index < extra else 0) for index, node in enumerate(ordered)}


class Lease(msgspec.Struct, frozen=True):
    """One partition's lease as the store last saw it: its ``owner`` (a node
    id, or ``None`` when free), its ``epoch`` (bumped by every claim),
    whether it is ``live`` (not expired by the database's clock) and in how
    many seconds it expires (``expires_in``, by that clock; 0.0 when free or
    expired), so a node can look again right when a dead owner's lease ends."""

    partition: int
    owner: str | None
    epoch: int
    live: bool
    expires_in: float = 0.0


class NodeInfo(msgspec.Struct, frozen=True):
    """A node whose heartbeat has not expired: its id, the address it
    advertises for forwarded commands (``host:port``, ``""`` for none) and
    its role (``writer`` or ``reader``)."""

    id: str
    address: str
    role: str


class LeaseView(msgspec.Struct, frozen=True):
    """What one heartbeat of a node saw: the partitions it still holds
    (partition → epoch), every live node, and every partition's lease."""

    held: dict[int, int]
    nodes: list[NodeInfo]
    leases: list[Lease]


class LeaseStore(Protocol):
    """A store that nodes share through partition leases: the calls a node
    makes besides :class:`~motet.storage.store.EventStore`'s (blocking; run
    in worker threads). Only
    :class:`~motet.storage.postgres_store.PostgresStore` has them: the
    in-memory and LMDB stores have one writing process by construction, so
    there is nothing to lease."""

    @property
    def partitions(self) -> int:
        """The partition count, fixed when the store was created."""
        ...

    def heartbeat(self, node: str, address: str, role: str, ttl: float) -> LeaseView:
        """Mark ``node`` live and renew the leases it holds, for ``ttl`` seconds."""
        ...

    def claim(self, node: str, partitions: list[int], ttl: float) -> dict[int, int]:
        """Take those of ``partitions`` that are free or expired (a new epoch each)."""
        ...

    def release(self, node: str, partitions: list[int]) -> None:
        """Free the leases ``node`` holds on ``partitions``."""
        ...

    def leave(self, node: str) -> None:
        """Release every lease of ``node`` and remove its heartbeat."""
        ...
