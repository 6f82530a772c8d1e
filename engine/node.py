"""A node: one engine among several writers of a shared (PostgreSQL) log.

Every stream belongs to one of the store's partitions
(:func:`~motet.storage.partitions.partition_of`), and a writer node runs the
actors of the partitions whose leases it holds. :meth:`Node.serve` keeps the
node's heartbeat and leases alive (renewed every ``lease_ttl * 0.3``
seconds), takes free or expired leases up to the node's even share of the
partitions, and hands back the ones above it after draining their commands,
so partitions spread evenly and move when nodes join, stop or die.

A command for a partition this node does not hold is forwarded to its owner
over the line protocol (a small pool of connections per peer); one whose
partition has no live owner is refused with :class:`Unavailable`. A lease
lost without a hand-over (taken over after this node stalled) stops the
partition's actors at once: their state may be stale. The store fences
every append by the epochs the node holds, so such a node commits nothing
even before it notices.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import trio

from motet.actors.errors import InternalError, Overloaded, Unavailable
from motet.actors.request import CommandRequest
from motet.storage.errors import MotetError, StorageError
from motet.storage.partitions import LeaseStore, LeaseView, partition_of, quotas

from .status import NodeStatus

if TYPE_CHECKING:
    from .net.client import Client

__all__ = ["LOCAL", "WAIT", "Node", "NodeStatus"]

LOCAL = "local"
"""Where :meth:`Node.route` sends a command whose actor runs on this node."""
WAIT = "wait"
"""Where :meth:`Node.route` sends a command whose partition has no known owner."""

log = logging.getLogger("motet.node")

_RENEW_FRACTION = 0.3
"""Leases are renewed every ``lease_ttl * _RENEW_FRACTION`` seconds: two
renewals may fail before a lease expires."""
_EXPIRY_MARGIN = 0.05
"""Seconds past another node's lease expiry (by the database's clock, as
seen at the last heartbeat) at which a node looks again to claim it."""


class _Peer:
    """Up to ``size`` pipelined connections to one other node, opened on
    demand and owned by this peer's nursery (closed with :meth:`close`)."""

    def __init__(self, address: str, size: int, token: str | None, ssl_context: Any) -> None:
        self.address = address
        self._size = size
        self._token = token
        self._ssl_context = ssl_context
        self._clients: list[Client] = []
        self._turn = 0
        self._opening = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Peer {self.address} connections={len(self._clients)}/{self._size}>"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def close(self) -> None:
        # A forward that picked this peer just before may still ask for a
        # connection: it is told the peer is closed (client() raises).
        self._closed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def client(self) -> Client:
        """A live connection: a new one while fewer than ``size`` are open,
        else the next in turn. Raises ``OSError`` when the peer is unreachable."""
        self._clients = [c for c in self._clients if not c.closed]
        if len(self._clients) < self._size:
            async with self._opening:
                if len(self._clients) < self._size:
                    if self._nursery is None or self._closed:
                        raise Unavailable(f"the connections to {self.address} are closed")
                    client: Client = await self._nursery.start(self._hold)
                    self._clients.append(client)
                    return client
        self._turn = (self._turn + 1) % len(self._clients)
        return self._clients[self._turn]

    async def _hold(self, *, task_status: trio.TaskStatus[Client]) -> None:
        # Imported here: an engine that is no node loads no client code.
        from .net.client import open_client

        host, _, port = self.address.rpartition(":")
        async with open_client(
            host.strip("[]"), int(port), token=self._token, ssl_context=self._ssl_context
        ) as client:
            task_status.started(client)
            # The connection's reader notices a peer that goes away; this
            # task then ends, and the next call opens a fresh connection.
            while not client.closed:
                await trio.sleep(1.0)


class Node:
    """The node side of an engine on a partitioned store; see the module
    docstring. ``role`` ``reader`` heartbeats (it shows in ``nodes``) but
    owns no partition."""

    def __init__(
        self,
        store: LeaseStore,
        node_id: str,
        *,
        role: Literal["writer", "reader"],
        advertise: str = "",
        lease_ttl: float = 10.0,
        peer_token: str | None = None,
        peer_ssl_context: Any = None,
        peer_connections: int = 4,
        max_forwarding: int = 10_000,
        forward_timeout: float = 30.0,
        stop_actors: Callable[[Callable[[str], bool]], int],
    ) -> None:
        if not isinstance(node_id, str) or not node_id or len(node_id) > 200:
            raise ValueError(f"node_id must be a non-empty string of <= 200 chars, got {node_id!r}")
        if not (isinstance(lease_ttl, (int, float)) and math.isfinite(lease_ttl) and lease_ttl > 0):
            raise ValueError(f"lease_ttl must be > 0 seconds, got {lease_ttl!r}")
        if advertise:
            check_address(advertise)
        self.store = store
        self.id = node_id
        self.role = role
        self.advertise = advertise
        self.lease_ttl = float(lease_ttl)
        self.renew_every = self.lease_ttl * _RENEW_FRACTION
        self.partitions = store.partitions
        self._peer_token = peer_token
        self._peer_ssl_context = peer_ssl_context
        self._peer_connections = peer_connections
        self._max_forwarding = max_forwarding
        self._forward_timeout = forward_timeout
        self._stop_actors = stop_actors
        # partition -> epoch of the leases whose actors run here.
        self._serving: dict[int, int] = {}
        self._releasing: set[int] = set()
        # Commands accepted and not yet answered, per partition (drained
        # before a partition is handed over).
        self._in_flight: dict[int, int] = {}
        self._drained = trio.Event()
        self._owners: dict[int, str] = {}
        self._addresses: dict[str, str] = {}
        self._view: LeaseView | None = None
        # Local deadline of the leases: the heartbeat that renewed them started
        # before the database took now(), so this ends no later than they do.
        self._valid_until = -math.inf
        # When the soonest lease of another node ends (see serve).
        self._next_expiry = math.inf
        self._peers: dict[str, _Peer] = {}
        self._forwarding = 0
        self.forwarded = 0
        self._nursery: trio.Nursery | None = None
        self._leaving = False
        self._wake = trio.Event()
        self._refreshed = trio.Event()

    def __repr__(self) -> str:
        return (
            f"<Node {self.id!r} {self.role} partitions={len(self._serving)}/{self.partitions} "
            f"forwarding={self._forwarding}>"
        )

    # -- what status and metrics show -------------------------------------------

    @property
    def owned(self) -> list[int]:
        """The partitions whose actors run here, sorted."""
        return sorted(self._serving)

    def status(self) -> NodeStatus:
        """This node: id, role, advertised address and owned partitions."""
        return NodeStatus(self.id, self.role, self.advertise, self.owned)

    def nodes(self) -> list[NodeStatus]:
        """Every live node as of the last heartbeat, with its partitions."""
        view = self._view
        if view is None:
            return []
        owned: dict[str, list[int]] = {}
        for lease in view.leases:
            if lease.live and lease.owner is not None:
                owned.setdefault(lease.owner, []).append(lease.partition)
        return [
            NodeStatus(n.id, n.role, n.address, owned.get(n.id, []))
            if n.id != self.id
            else self.status()
            for n in view.nodes
        ]

    # -- routing commands -------------------------------------------------------

    def route(self, stream: str) -> tuple[int, str]:
        """Where ``stream``'s commands go: ``(partition, LOCAL)`` when its
        actor runs here, ``(partition, "host:port")`` of the owner to forward
        to, or ``(partition, WAIT)`` when no live owner is known yet (see
        :meth:`park`)."""
        partition = partition_of(stream, self.partitions)
        return partition, self._where(partition)

    def _where(self, partition: int) -> str:
        if (
            partition in self._serving
            and partition not in self._releasing
            and trio.current_time() < self._valid_until
        ):
            return LOCAL
        owner = self._owners.get(partition)
        if owner is None or owner == self.id:
            return WAIT
        return self._addresses.get(owner) or WAIT

    def _no_owner(self, partition: int, stream: str) -> str:
        owner = self._owners.get(partition)
        where = f"partition {partition} (of stream {stream!r})"
        if owner is not None and owner != self.id:
            return (
                f"{where} is owned by node {owner!r}, which advertises no address to forward "
                "commands to"
            )
        moving = "is being handed over" if partition in self._releasing else "has no live owner"
        return (
            f"{where} {moving} yet; retry in a few seconds (a dead node's partitions are "
            "taken over within the lease TTL)"
        )

    def park(
        self, partition: int, stream: str, request: CommandRequest, run_here: Callable[[], None]
    ) -> None:
        """Hold ``request`` (never blocks) until a heartbeat, asked for now,
        shows its partition's owner: then run it here (``run_here()``) or
        forward it. Fails it with :class:`Unavailable` when no owner shows
        within two renewal intervals (a dead node's leases take up to the
        TTL to expire). Raises :class:`Overloaded` as :meth:`forward` does."""
        self._count_forwarding()
        assert self._nursery is not None
        self._wake.set()
        self._nursery.start_soon(self._await_owner, partition, stream, request, run_here)

    async def _await_owner(
        self, partition: int, stream: str, request: CommandRequest, run_here: Callable[[], None]
    ) -> None:
        try:
            where = WAIT
            with trio.move_on_after(self.renew_every * 2):
                while where == WAIT:
                    await self._refreshed.wait()
                    where = self._where(partition)
            if where == WAIT:
                request.fail(Unavailable(self._no_owner(partition, stream)))
            elif where == LOCAL:
                try:
                    run_here()
                except Exception as exc:
                    request.fail(exc)
            else:
                await self._send(where, request)
        finally:
            self._forwarding -= 1

    def track(self, partition: int, request: CommandRequest) -> None:
        """Count ``request`` as in flight in ``partition`` until it is answered."""
        self._in_flight[partition] = self._in_flight.get(partition, 0) + 1

        def done(_request: CommandRequest) -> None:
            left = self._in_flight[partition] - 1
            if left:
                self._in_flight[partition] = left
            else:
                del self._in_flight[partition]
                self._drained.set()

        request.add_done_callback(done)

    def forward(self, address: str, request: CommandRequest) -> None:
        """Send ``request`` to the node at ``address`` and answer it with that
        node's reply (never blocks). Raises :class:`Overloaded` when
        ``max_forwarding`` commands are already on their way."""
        self._count_forwarding()
        assert self._nursery is not None
        self._nursery.start_soon(self._forward, address, request)

    def _count_forwarding(self) -> None:
        if self._nursery is None:
            raise Unavailable("this node is not running")
        if self._forwarding >= self._max_forwarding:
            raise Overloaded(
                f"{self._forwarding} commands are already being forwarded from node "
                f"{self.id!r}; retry later"
            )
        self._forwarding += 1

    async def _forward(self, address: str, request: CommandRequest) -> None:
        try:
            await self._send(address, request)
        finally:
            self._forwarding -= 1

    async def _send(self, address: str, request: CommandRequest) -> None:
        try:
            with trio.move_on_after(self._forward_timeout):
                peer = await self._peer(address)
                client = await peer.client()
                ack = await client.send(
                    request.command,
                    command_id=request.command_id,
                    expected_version=request.expected_version,
                    correlation_id=request.correlation_id,
                    causation_id=request.causation_id,
                )
                self.forwarded += 1
                request.succeed(ack)
                return
            request.fail(
                Unavailable(
                    f"the owner node at {address} did not answer within "
                    f"{self._forward_timeout} s; the command may have committed: retry it "
                    "with the same command_id to find out"
                )
            )
        except MotetError as exc:  # the owner's answer (or a lost connection)
            request.fail(exc)
        except OSError as exc:
            request.fail(
                Unavailable(f"cannot reach the owner node at {address} to forward to: {exc}")
            )
        except Exception as exc:
            log.exception("forwarding to %s failed", address)
            request.fail(InternalError(f"forwarding to {address} failed: {exc!r}"))

    async def _peer(self, address: str) -> _Peer:
        peer = self._peers.get(address)
        if peer is None:
            assert self._nursery is not None
            peer = _Peer(address, self._peer_connections, self._peer_token, self._peer_ssl_context)
            await self._nursery.start(peer.serve)
            # Another task may have made one meanwhile: keep the first.
            if address in self._peers:
                peer.close()
                return self._peers[address]
            self._peers[address] = peer
        return peer

    # -- leases -----------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat, claim and hand over leases until cancelled; reports
        started after the first heartbeat (and claims). Raises
        :class:`StorageError` when that first heartbeat fails."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._tick()
                task_status.started()
                while True:
                    last = trio.current_time()
                    # Renew in time; look again as soon as another node's
                    # lease ends (its node died: take over at once, not at
                    # the next renewal), though not more often than a few
                    # times per renewal interval.
                    deadline = min(
                        last + self.renew_every,
                        max(self._next_expiry, last + self.renew_every / 8),
                    )
                    with trio.move_on_at(deadline):
                        await self._wake.wait()
                        # Asked early (a command waits for an owner): not more
                        # often than a few times per renewal interval.
                        await trio.sleep_until(last + self.renew_every / 8)
                    self._wake = trio.Event()
                    try:
                        await self._tick()
                    except StorageError as exc:
                        log.warning("node %s could not renew its leases: %s", self.id, exc)
                        if trio.current_time() >= self._valid_until and self._serving:
                            log.warning("node %s: its leases expired; serving none", self.id)
                            self._lose(list(self._serving))
            finally:
                self._nursery = None

    async def _tick(self) -> None:
        """One heartbeat, then claim or hand over towards this node's share."""
        started = trio.current_time()
        view = await trio.to_thread.run_sync(
            self.store.heartbeat, self.id, self.advertise, self.role, self.lease_ttl
        )
        self._valid_until = started + self.lease_ttl
        ending = [
            lease.expires_in for lease in view.leases if lease.live and lease.owner != self.id
        ]
        self._next_expiry = started + min(ending) + _EXPIRY_MARGIN if ending else math.inf
        self._see(view)
        try:
            await self._balance(view)
        finally:
            # Commands waiting for an owner look again (also after claims).
            self._refreshed.set()
            self._refreshed = trio.Event()

    async def _balance(self, view: LeaseView) -> None:
        """Claim free leases up to this node's share, or hand over those above it."""
        if self.role != "writer" or self._leaving:
            return
        writers = [n.id for n in view.nodes if n.role == "writer"]
        share = quotas(writers, self.partitions).get(self.id, 0)
        if len(self._serving) > share:
            await self.hand_over(sorted(self._serving)[share:])
        elif len(self._serving) < share:
            # Free or expired, or left by an earlier process with this id.
            free = [
                lease.partition
                for lease in view.leases
                if not lease.live
                or (lease.owner == self.id and lease.partition not in self._serving)
            ]
            wanted = free[: share - len(self._serving)]
            if wanted:
                taken = await trio.to_thread.run_sync(
                    self.store.claim, self.id, wanted, self.lease_ttl
                )
                if taken:
                    # Actors left from an earlier lease of these partitions
                    # may hold state another owner has moved past.
                    self._stop(taken)
                    self._serving.update(taken)
                    for partition in taken:
                        self._owners[partition] = self.id
                    log.info("node %s claimed partitions %s", self.id, sorted(taken))

    def _see(self, view: LeaseView) -> None:
        """Take in a heartbeat's view: lost leases, owners and addresses."""
        self._view = view
        lost = [p for p, epoch in self._serving.items() if view.held.get(p) != epoch]
        if lost:
            log.warning("node %s lost partitions %s to other nodes", self.id, sorted(lost))
            self._lose(lost)
        self._owners = {
            lease.partition: lease.owner
            for lease in view.leases
            if lease.live and lease.owner is not None
        }
        for partition in self._serving:
            self._owners[partition] = self.id
        live = {n.id: n.address for n in view.nodes}
        self._addresses = live
        addresses = set(live.values())
        for address in [a for a in self._peers if a not in addresses]:
            self._peers.pop(address).close()

    def _lose(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for partition in gone:
            self._serving.pop(partition, None)
            if self._owners.get(partition) == self.id:
                del self._owners[partition]
        self._stop(gone)

    def _stop(self, partitions: Iterable[int]) -> None:
        wanted = set(partitions)
        if wanted:
            count = self.partitions
            self._stop_actors(lambda stream: partition_of(stream, count) in wanted)

    async def hand_over(self, partitions: list[int]) -> None:
        """Stop taking commands for ``partitions``, wait (up to a third of the
        lease TTL) for those in flight, stop their actors and release their
        leases, for other nodes to claim at once."""
        giving = [p for p in partitions if p in self._serving]
        if not giving:
            return
        self._releasing.update(giving)
        try:
            with trio.move_on_after(self.lease_ttl / 3):
                while any(p in self._in_flight for p in giving):
                    self._drained = trio.Event()
                    await self._drained.wait()
            self._stop(giving)
            for partition in giving:
                self._serving.pop(partition, None)
                self._owners.pop(partition, None)
            await trio.to_thread.run_sync(self.store.release, self.id, giving)
            log.info("node %s handed over partitions %s", self.id, giving)
        finally:
            self._releasing.difference_update(giving)

    async def leave(self) -> None:
        """Hand over every partition and remove this node's heartbeat (the
        engine has drained its commands first). Shield it: the engine is
        closing."""
        self._leaving = True
        await self.hand_over(list(self._serving))
        await trio.to_thread.run_sync(self.store.leave, self.id)


def check_address(address: str) -> None:
    """Raise ``ValueError`` unless ``address`` is ``host:port``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"an advertised address is HOST:PORT, got {address!r}")
