"""The registry: finds or starts the one live actor of each aggregate, and
stops actors that are idle too long or beyond the live-actor cap."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from motet.storage.codec import Codec
from motet.storage.store import EventStore, check_aggregate_id

from .aggregate import AggregateActor
from .definition import Aggregate
from .errors import EngineClosed
from .request import CommandRequest
from .store_calls import StoreCalls
from .writer import GroupCommitWriter

__all__ = ["Registry", "RegistryStatistics"]

log = logging.getLogger("motet.registry")

# How many of the least recently used actors to look at when over the cap: busy
# ones are skipped, and looking further would make every new actor cost O(n).
_EVICTION_SCAN = 32


class RegistryStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the registry: live actors (in total and per aggregate
    type), actors stopped so far, and the fullest mailbox."""

    actors: int
    by_aggregate: dict[str, int]
    started: int
    passivated: int
    evicted: int
    mailbox_max: int


class Registry:
    """Supervises the aggregate actors of one engine.

    It owns the actors' nursery (opened by :meth:`serve`); :meth:`actor_for`
    starts an actor on first use. Idle actors are passivated after
    ``passivate_after`` seconds; above ``max_actors`` live actors, the least
    recently used idle ones are stopped.
    """

    def __init__(
        self,
        *,
        store: EventStore,
        codec: Codec,
        writer: GroupCommitWriter,
        mailbox_size: int = 64,
        max_actors: int = 100_000,
        passivate_after: float = 300.0,
        calls: StoreCalls | None = None,
    ) -> None:
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be >= 1, got {mailbox_size}")
        if max_actors < 1:
            raise ValueError(f"max_actors must be >= 1, got {max_actors}")
        if passivate_after <= 0:
            raise ValueError(f"passivate_after must be > 0 seconds, got {passivate_after}")
        self._store = store
        self._calls = calls if calls is not None else StoreCalls(store)
        self._codec = codec
        self._writer = writer
        self.mailbox_size = mailbox_size
        self.max_actors = max_actors
        self.passivate_after = passivate_after
        self._actors: OrderedDict[str, AggregateActor[Any]] = OrderedDict()
        # Live actors per aggregate name, kept as actors start and stop, so that
        # status and metrics cost O(aggregate types), not O(live actors).
        self._live: dict[str, int] = {}
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        self._nursery: trio.Nursery | None = None
        self._started = 0
        self._passivated = 0
        self._evicted = 0

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<Registry actors={stats.actors} passivated={stats.passivated} "
            f"evicted={stats.evicted} mailbox_max={stats.mailbox_max}>"
        )

    @property
    def actors(self) -> int:
        """How many actors are live (O(1))."""
        return len(self._actors)

    def live_by_aggregate(self) -> dict[str, int]:
        """Live actors per aggregate name, for the types with any (a copy;
        O(aggregate types), so status and metrics scrapes stay cheap)."""
        return {name: count for name, count in self._live.items() if count}

    def statistics(self) -> RegistryStatistics:
        """Counts of live and stopped actors; finding the fullest mailbox walks
        all live actors, so status and metrics use :meth:`live_by_aggregate`."""
        mailbox_max = 0
        for actor in self._actors.values():
            mailbox_max = max(mailbox_max, actor.mailbox_used)
        return RegistryStatistics(
            actors=len(self._actors),
            by_aggregate=self.live_by_aggregate(),
            started=self._started,
            passivated=self._passivated,
            evicted=self._evicted,
            mailbox_max=mailbox_max,
        )

    def live(self, stream: str) -> AggregateActor[Any] | None:
        """The live actor of ``stream``, if there is one."""
        return self._actors.get(stream)

    def forget_subject(self, subject: str) -> int:
        """Make every live actor whose state may hold ``subject``'s personal
        data reload before its next command; returns how many (O(live actors):
        erasures are rare)."""
        return sum(actor.forget_subject(subject) for actor in self._actors.values())

    def actor_for(
        self, definition: Aggregate[Any], aggregate_id: str, now: float | None = None
    ) -> AggregateActor[Any]:
        """The live actor of that aggregate, started now if needed (never blocks);
        ``now`` is the current trio time when the caller has it already.

        Raises ``ValueError`` for an id that cannot name a stream and
        :class:`EngineClosed` when the registry is not serving.
        """
        stream = definition.stream_of(aggregate_id)
        actor = self._actors.get(stream)
        if now is None:
            now = trio.current_time()
        if actor is not None:
            self._actors.move_to_end(stream)
            actor.last_used = now
            return actor
        if self._nursery is None:
            raise EngineClosed("the engine is not running")
        check_aggregate_id(definition.name, aggregate_id)
        decoder = self._decoders.get(definition.name)
        if decoder is None:
            decoder = self._decoders[definition.name] = msgspec.msgpack.Decoder(
                definition.state_type
            )
        actor = AggregateActor(
            definition,
            aggregate_id,
            store=self._store,
            codec=self._codec,
            writer=self._writer,
            state_decoder=decoder,
            mailbox_size=self.mailbox_size,
            now=now,
            calls=self._calls,
        )
        self._actors[stream] = actor
        self._live[definition.name] = self._live.get(definition.name, 0) + 1
        self._started += 1
        if len(self._actors) > self.max_actors:
            self._evict(keep=stream)
        return actor

    def tell(
        self,
        definition: Aggregate[Any],
        aggregate_id: str,
        request: CommandRequest,
        now: float | None = None,
    ) -> None:
        """Hand ``request`` to the aggregate's actor (started if needed),
        running the actor's task when the command had to queue (``now``: as
        for :meth:`actor_for`).

        Raises :class:`~motet.actors.errors.Overloaded` when the mailbox is full,
        plus what :meth:`actor_for` raises.
        """
        actor = self.actor_for(definition, aggregate_id, now)
        if actor.tell(request):
            assert self._nursery is not None
            self._nursery.start_soon(actor.run, name=f"actor {actor.stream}")

    def stop_matching(self, matches: Callable[[str], bool]) -> int:
        """Stop every live actor whose stream id ``matches``, busy or not
        (their partition moved to another node, so their state may be stale:
        a busy one finishes what it holds, and its appends are fenced by the
        store). Returns how many were stopped; O(live actors)."""
        victims = [stream for stream in self._actors if matches(stream)]
        for stream in victims:
            self._stop(stream)
        self._passivated += len(victims)
        return len(victims)

    def _evict(self, keep: str) -> None:
        excess = len(self._actors) - self.max_actors
        victims: list[str] = []
        for index, (stream, actor) in enumerate(self._actors.items()):
            if index >= _EVICTION_SCAN or len(victims) >= excess:
                break
            # The actor just started for ``keep`` is idle too, but its caller is about to tell it.
            if stream != keep and actor.idle and not actor.stopped:
                victims.append(stream)
        for stream in victims:
            self._stop(stream)
        self._evicted += len(victims)

    def _stop(self, stream: str) -> None:
        actor = self._actors.pop(stream)
        actor.stop()
        self._live[actor.definition.name] -= 1

    def _passivate(self, now: float) -> None:
        deadline = now - self.passivate_after
        victims: list[str] = []
        # Least recently used first: stop at the first actor used recently.
        for stream, actor in self._actors.items():
            if actor.last_used > deadline:
                break
            if actor.idle:
                victims.append(stream)
        for stream in victims:
            self._stop(stream)
        self._passivated += len(victims)
        # Actors busy when the cap was reached may be idle now.
        if len(self._actors) > self.max_actors:
            self._evict(keep="")

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the actors' nursery and the passivation sweep until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(self.passivate_after / 4)
                    self._passivate(trio.current_time())
        finally:
            self._nursery = None
            self._actors.clear()
            self._live.clear()
