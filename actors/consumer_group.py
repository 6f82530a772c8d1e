"""Consumer groups: the log's events handed out, at least once, to the live
members of a named group.

Every event that passes the group's filter goes to one member; the member
acks it (done), or nacks it (deliver again, after ``retry_after`` seconds).
Events of one stream are delivered in version order, one at a time: the next
event of a stream is handed out only once the previous one is acked (or
parked), so no two members ever hold the same stream. Streams are spread
over the live members by a stable hash: stream ``s`` belongs to hash bucket
``crc32(s) % BUCKETS`` and bucket ``b`` to the ``b % n``-th of the ``n``
members sorted by id. A member that leaves or whose connection dies gives
its unacked events back; they go to the bucket's new owner.

Progress is durable per bucket (:class:`~motet.storage.records.BucketProgress`):
every event of the bucket at or below its ``position`` is done, and so are
the positions listed above it (acked out of order). It is saved before an
ack is confirmed, so after a restart only unconfirmed events come again.
An event that failed ``max_attempts`` deliveries (nacks, or members lost
while holding it) is parked: recorded durably with its last error, taken out
of the way of its stream, and kept until it is replayed or skipped.

The group reads once for all its members, however many it has: with a
category, through the store's category index; otherwise the log itself;
batches of raw records, filtered by type before they are decoded.
"""

from __future__ import annotations

import heapq
import itertools
import math
import secrets
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from motet.storage.codec import Codec
from motet.storage.errors import InvalidMessage, NotFound, Unavailable
from motet.storage.records import (
    BucketProgress,
    GroupProgress,
    ParkedEvent,
    RecordedEvent,
    StoredEvent,
)
from motet.storage.status import GroupStatus, ParkedStatus
from motet.storage.store import EventStore, check_group_name
from motet.storage.streams import category_of

from .head_watch import HeadWatch
from .store_calls import StoreCalls

__all__ = [
    "BUCKETS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_PREFETCH",
    "MAX_PREFETCH",
    "MAX_RETRY_AFTER",
    "ConsumerGroup",
    "Delivery",
    "EventFilter",
    "GroupStatus",
    "Groups",
    "Member",
    "bucket_of",
    "parked_status",
]

BUCKETS = 64
"""Hash buckets per group: the unit of progress and of assignment to members."""

DEFAULT_PREFETCH = 100
"""Events a member holds unacked at most, unless it asks for another number."""

MAX_PREFETCH = 10_000
"""The largest prefetch a member may ask for."""

DEFAULT_MAX_ATTEMPTS = 5
"""Failed deliveries (nacks, members lost holding it) before an event is parked."""

MAX_RETRY_AFTER = 3_600.0
"""The longest delay a nack may ask for, in seconds."""

MAX_BUFFERED = 10_000
"""Events a group holds read but not yet done; reading pauses beyond it, so
a group without members (or with stuck ones) holds bounded memory."""

_READ_BATCH = 1_000
_REREAD_AFTER = 0.05  # seconds before reading again after a read found nothing


def bucket_of(stream: str, buckets: int = BUCKETS) -> int:
    """The hash bucket of ``stream``: CRC-32 of its UTF-8 bytes modulo
    ``buckets``, the same in every process and release (never Python's
    salted ``hash``)."""
    return zlib.crc32(stream.encode()) % buckets


@dataclass(frozen=True)
class EventFilter:
    """Which events a group (or a subscription or read) wants: those of
    streams in ``category`` (the part of the stream id before its first
    ``-``) and of one of ``types``; ``None`` lets everything through."""

    category: str | None = None
    types: frozenset[str] | None = None

    @classmethod
    def of(cls, category: object = None, types: object = None) -> EventFilter:
        """A filter from user input; raises :class:`InvalidMessage` (a
        ``ValueError``) naming the bad value."""
        if category is not None:
            if not isinstance(category, str) or not category:
                raise InvalidMessage(f"category must be a non-empty string, got {category!r}")
            if "-" in category:
                raise InvalidMessage(
                    f"category is the part of a stream id before its first '-', so it "
                    f"cannot contain '-', got {category!r}"
                )
        if types is not None:
            if isinstance(types, str) or not isinstance(types, (list, tuple, set, frozenset)):
                raise InvalidMessage(f"types must be a list of event type names, got {types!r}")
            if not types:
                raise InvalidMessage("types must name at least one event type (or be left out)")
            for name in types:
                if not isinstance(name, str) or not name:
                    raise InvalidMessage(
                        f"types must hold non-empty strings, got {name!r} in {list(types)!r}"
                    )
            types = frozenset(types)
        return cls(category, types)

    @property
    def everything(self) -> bool:
        """Whether the filter lets every event through."""
        return self.category is None and self.types is None

    def matches(self, stream: str, type: str) -> bool:
        """Whether an event of ``type`` in ``stream`` passes."""
        if self.category is not None and category_of(stream) != self.category:
            return False
        return self.types is None or type in self.types

    def select(self, events: Iterable[StoredEvent]) -> list[StoredEvent]:
        """The events that pass, in order."""
        if self.everything:
            return list(events)
        return [e for e in events if self.matches(e.stream, e.type)]

    def describe(self) -> str:
        """The filter in words, for messages."""
        parts = []
        if self.category is not None:
            parts.append(f"category={self.category!r}")
        if self.types is not None:
            parts.append(f"types={sorted(self.types)!r}")
        return ", ".join(parts) or "no filter"


class Delivery:
    """One event handed to a member: ``event`` (decoded, upcast), the
    ``attempt`` it is (1 the first time), and how to settle it.

    Settle each delivery once with :meth:`ack` or :meth:`nack`; a delivery
    left unsettled when its member leaves counts as a failed attempt and goes
    to another member.
    """

    __slots__ = ("_member", "attempt", "event")

    def __init__(self, member: Member, event: RecordedEvent, attempt: int) -> None:
        self._member = member
        self.event = event
        self.attempt = attempt

    def __repr__(self) -> str:
        return (
            f"<Delivery position={self.event.position} stream={self.event.stream!r} "
            f"version={self.event.version} attempt={self.attempt}>"
        )

    @property
    def position(self) -> int:
        """The event's global position: the consumer's idempotency key."""
        return self.event.position

    async def ack(self) -> None:
        """The event is handled: returns once that is saved durably, so it is
        not delivered again even after a restart. Raises :class:`NotFound`
        when the delivery is no longer this member's (it left, or it was
        settled already)."""
        await self._member.ack(self.event.position)

    async def nack(self, error: str = "", *, retry_after: float = 0.0) -> None:
        """Handling failed with ``error``: deliver the event again (to
        whichever member owns its stream then) after ``retry_after`` seconds,
        or park it once it failed the group's ``max_attempts`` times. Other
        streams keep flowing meanwhile; later events of this stream wait."""
        self._member.nack(self.event.position, error, retry_after=retry_after)


class _Stream:
    """A stream's events read but not yet done, oldest first; the first one
    is in flight while ``busy``."""

    __slots__ = ("bucket", "busy", "events", "name", "queued", "retry_at")

    def __init__(self, name: str, bucket: int) -> None:
        self.name = name
        self.bucket = bucket
        self.events: deque[RecordedEvent] = deque()
        self.busy = False
        self.queued = False  # waiting in a member's (or the unowned) queue
        self.retry_at: float | None = None


class _Flight:
    __slots__ = ("event", "replay", "stream")

    def __init__(self, stream: _Stream, event: RecordedEvent, replay: bool) -> None:
        self.stream = stream
        self.event = event
        self.replay = replay


class Member:
    """A live member of a consumer group: iterate it for :class:`Delivery`
    objects (``async for delivery in member``). Get one from
    :meth:`Groups.consume` (or ``engine.consume``), which makes it leave on
    exit. Iteration ends when the member leaves or the engine closes."""

    def __init__(self, group: ConsumerGroup, member_id: str, prefetch: int) -> None:
        self.group = group
        self.id = member_id
        self.prefetch = prefetch
        self.alive = True
        self.in_flight: dict[int, _Flight] = {}
        self.waiting: deque[_Stream] = deque()
        self._send, self._receive = trio.open_memory_channel[Delivery](prefetch)

    def __repr__(self) -> str:
        state = "live" if self.alive else "gone"
        return f"<Member {self.id} {state} in_flight={len(self.in_flight)}/{self.prefetch}>"

    @property
    def room(self) -> int:
        """How many more events this member may hold unacked."""
        return self.prefetch - len(self.in_flight)

    def __aiter__(self) -> Member:
        return self

    async def __anext__(self) -> Delivery:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def receive_nowait(self) -> Delivery:
        """The next delivery if one is waiting; raises ``trio.WouldBlock``
        otherwise and ``trio.EndOfChannel`` once the member left."""
        return self._receive.receive_nowait()

    def ack_nowait(
        self, position: int, on_saved: Callable[[BaseException | None], None] | None = None
    ) -> None:
        """Ack the delivery at ``position`` without waiting: ``on_saved(None)``
        runs once that is durable (``on_saved(error)`` if saving failed).
        Raises :class:`NotFound` when ``position`` is not in flight here."""
        self.group._ack(self, position, on_saved)

    async def ack(self, position: int) -> None:
        """Ack the delivery at ``position`` and wait until that is durable
        (see :meth:`Delivery.ack`)."""
        saved = trio.Event()
        failure: list[BaseException] = []

        def done(error: BaseException | None) -> None:
            if error is not None:
                failure.append(error)
            saved.set()

        self.group._ack(self, position, done)
        await saved.wait()
        if failure:
            raise failure[0]

    def nack(self, position: int, error: str = "", *, retry_after: float = 0.0) -> None:
        """Nack the delivery at ``position`` (see :meth:`Delivery.nack`).
        Raises :class:`NotFound` when it is not in flight here and
        :class:`InvalidMessage` for a bad ``retry_after``."""
        self.group._nack(self, position, error, retry_after)

    def leave(self) -> None:
        """Leave the group: unacked deliveries go to the other members."""
        self.group._leave(self)


class ConsumerGroup:
    """One consumer group: its members, what it read, and its progress.

    Made by :class:`Groups`; its :meth:`serve` loop runs from the first
    join until the engine closes.
    """

    def __init__(
        self,
        name: str,
        *,
        store: EventStore,
        codec: Codec,
        calls: StoreCalls,
        watch: HeadWatch,
        write_limiter: trio.CapacityLimiter,
        max_attempts: int,
        progress: GroupProgress | None,
        parked: list[ParkedEvent],
    ) -> None:
        self.name = name
        self.filter: EventFilter | None = None  # set by the first join
        self.max_attempts = max_attempts
        self._store = store
        self._codec = codec
        self._calls = calls
        self._watch = watch
        self._write_limiter = write_limiter
        self._members: dict[str, Member] = {}
        self._owners: list[Member] = []
        self._unowned: deque[_Stream] = deque()
        self._streams: dict[str, _Stream] = {}
        self._outstanding: list[deque[int]] = [deque() for _ in range(BUCKETS)]
        self._times: dict[int, float] = {}
        self._attempts: dict[int, int] = {}
        self._retries: list[tuple[float, int, str]] = []
        self._retry_numbers = itertools.count()
        self._parked: dict[int, ParkedEvent] = {p.position: p for p in parked}
        self._to_park: list[ParkedEvent] = []
        self._to_unpark: list[int] = []
        self._replays: dict[int, RecordedEvent] = {}
        self._saves: list[Callable[[BaseException | None], None]] = []
        self._dirty = False
        self._buffered = 0
        self._wake = trio.Event()
        self._save_wanted = trio.Event()
        self.running = False
        self.error: str | None = None
        self.delivered = self.acked = self.redelivered = 0
        base, done = _unpack(progress)
        self._base = base
        self._done: list[set[int]] = done
        self._scan = min(base)
        self.saved_position = min(base)

    def __repr__(self) -> str:
        state = "failed" if self.error else "running" if self.running else "idle"
        return (
            f"<ConsumerGroup {self.name!r} {state} members={len(self._members)} "
            f"position={self.position} buffered={self._buffered} parked={len(self._parked)}>"
        )

    # -- what it reports ------------------------------------------------------------

    @property
    def members(self) -> list[str]:
        """The live members' ids, sorted."""
        return sorted(self._members)

    @property
    def in_flight(self) -> int:
        """Events delivered and not settled yet."""
        return sum(len(m.in_flight) for m in self._members.values())

    @property
    def parked_events(self) -> list[ParkedEvent]:
        """The events this group parked, by position."""
        return sorted(self._parked.values(), key=lambda p: p.position)

    def _marks(self) -> list[int]:
        """Each bucket's progress mark: every event at or below it is done."""
        marks = []
        for bucket in range(BUCKETS):
            outstanding = self._outstanding[bucket]
            done = self._done[bucket]
            while outstanding and outstanding[0] in done:
                done.discard(outstanding.popleft())
            mark = outstanding[0] - 1 if outstanding else self._scan
            marks.append(max(mark, self._base[bucket]))
        return marks

    @property
    def position(self) -> int:
        """Every matching event at or below this position is done."""
        return min(self._marks())

    def lag(self) -> tuple[int, float]:
        """(events, seconds): the head minus :attr:`position`, and the age of
        the oldest event read and not done (0 when there is none)."""
        head = self._watch.head_position
        events = max(head - self.position, 0)
        oldest = min(
            (self._times[q[0]] for q in self._outstanding if q and q[0] in self._times),
            default=None,
        )
        seconds = 0.0 if oldest is None or events == 0 else max(time.time() - oldest, 0.0)
        return events, seconds

    # -- joining and leaving ---------------------------------------------------------

    def _join(self, event_filter: EventFilter, prefetch: int) -> Member:
        if self.error is not None:
            raise NotFound(f"group {self.name!r} is stopped by an error: {self.error}")
        if self.filter is None:
            self.filter = event_filter
        elif event_filter != self.filter:
            raise InvalidMessage(
                f"group {self.name!r} delivers {self.filter.describe()}; this member asks "
                f"for {event_filter.describe()}: every member of a group uses the same filter"
            )
        member = Member(self, f"{self.name}/{secrets.token_hex(6)}", prefetch)
        self._members[member.id] = member
        self._rebalance()
        return member

    def _leave(self, member: Member) -> None:
        if not member.alive:
            return
        member.alive = False
        del self._members[member.id]
        member._send.close()
        flights = list(member.in_flight.values())
        member.in_flight.clear()
        # Its waiting streams are routed again with the others.
        self._unowned.extend(member.waiting)
        member.waiting.clear()
        self._rebalance()
        for flight in flights:
            self._fail(flight, f"member {member.id} left without settling it")
        self._poke()

    def _rebalance(self) -> None:
        """Hand each bucket to its member by the stable rule, and route the
        streams waiting for a member again (in-flight events stay with the
        member holding them: their stream moves once they are settled)."""
        self._owners = [self._members[m] for m in sorted(self._members)]
        waiting = list(self._unowned)
        self._unowned.clear()
        for member in self._members.values():
            waiting.extend(member.waiting)
            member.waiting.clear()
        for stream in waiting:
            stream.queued = False
        waiting.sort(key=lambda s: s.events[0].position if s.events else 0)
        for stream in waiting:
            self._ready(stream)

    # -- delivering ---------------------------------------------------------------------

    def _ready(self, stream: _Stream) -> None:
        """Deliver the stream's next event, or queue the stream for its member."""
        if stream.busy or stream.queued or not stream.events or stream.retry_at is not None:
            return
        owners = self._owners
        if not owners:
            stream.queued = True
            self._unowned.append(stream)
            return
        member = owners[stream.bucket % len(owners)]
        if member.room > 0:
            self._deliver(member, stream)
        else:
            stream.queued = True
            member.waiting.append(stream)

    def _deliver(self, member: Member, stream: _Stream) -> None:
        event = stream.events[0]
        position = event.position
        replay = position in self._replays
        stream.busy = True
        member.in_flight[position] = _Flight(stream, event, replay)
        attempt = self._attempts.get(position, 0) + 1
        self.delivered += 1
        if attempt > 1:
            self.redelivered += 1
        member._send.send_nowait(Delivery(member, event, attempt))

    def _refill(self, member: Member) -> None:
        while member.alive and member.room > 0 and member.waiting:
            stream = member.waiting.popleft()
            stream.queued = False
            self._ready(stream)

    def _settled(self, flight: _Flight) -> None:
        """The flight's event is out of its stream's way (acked or parked)."""
        stream = flight.stream
        event = stream.events.popleft()
        stream.busy = False
        position = event.position
        self._attempts.pop(position, None)
        if flight.replay:
            del self._replays[position]
        else:
            self._done[stream.bucket].add(position)
            self._times.pop(position, None)
            self._buffered -= 1
        if stream.events:
            self._ready(stream)
        else:
            del self._streams[stream.name]

    def _take(self, member: Member, position: object) -> _Flight:
        if not isinstance(position, int) or isinstance(position, bool) or position < 1:
            raise InvalidMessage(f"position must be an event position >= 1, got {position!r}")
        flight = member.in_flight.pop(position, None)
        if flight is None:
            raise NotFound(
                f"position {position} is not in flight for member {member.id} of group "
                f"{self.name!r} (never delivered to it, already settled, or given to "
                "another member after this one left)"
            )
        return flight

    def _ack(
        self,
        member: Member,
        position: object,
        on_saved: Callable[[BaseException | None], None] | None,
    ) -> None:
        flight = self._take(member, position)
        self.acked += 1
        if flight.replay:
            self._to_unpark.append(flight.event.position)
            self._parked.pop(flight.event.position, None)
        self._settled(flight)
        if on_saved is not None:
            self._saves.append(on_saved)
        self._mark_dirty()
        self._refill(member)
        self._poke()

    def _nack(self, member: Member, position: object, error: object, retry_after: object) -> None:
        if (
            not isinstance(retry_after, (int, float))
            or isinstance(retry_after, bool)
            or not 0 <= retry_after <= MAX_RETRY_AFTER
        ):
            raise InvalidMessage(
                f"retry_after must be a number of seconds from 0 to {MAX_RETRY_AFTER:g}, "
                f"got {retry_after!r}"
            )
        if not isinstance(error, str):
            raise InvalidMessage(f"error must be a string, got {error!r}")
        flight = self._take(member, position)
        self._fail(flight, error or "nacked", float(retry_after))
        self._refill(member)
        self._poke()

    def _fail(self, flight: _Flight, error: str, retry_after: float = 0.0) -> None:
        """A delivery failed: deliver it again later, or park it."""
        event = flight.event
        position = event.position
        attempts = self._attempts.get(position, 0) + 1
        self._attempts[position] = attempts
        stream = flight.stream
        if attempts >= self.max_attempts:
            parked = ParkedEvent(position, event.stream, attempts, error[:1000], time.time())
            self._parked[position] = parked
            self._to_park.append(parked)
            self._mark_dirty()
            self._settled(flight)
            return
        stream.busy = False
        if retry_after > 0:
            stream.retry_at = due = trio.current_time() + retry_after
            heapq.heappush(self._retries, (due, next(self._retry_numbers), stream.name))
        else:
            self._ready(stream)

    def _poke(self) -> None:
        self._wake.set()

    def _mark_dirty(self) -> None:
        """Something to save (an ack, a parked event): wake the saver."""
        self._dirty = True
        self._save_wanted.set()

    # -- parked events -------------------------------------------------------------------

    def _check_parked(self, position: object) -> ParkedEvent:
        if not isinstance(position, int) or isinstance(position, bool) or position < 1:
            raise InvalidMessage(f"position must be an event position >= 1, got {position!r}")
        parked = self._parked.get(position)
        if parked is None:
            listed = ", ".join(str(p) for p in sorted(self._parked)[:10]) or "none"
            raise NotFound(
                f"group {self.name!r} has no parked event at position {position} (parked: {listed})"
            )
        return parked

    async def skip(self, position: object) -> ParkedEvent:
        """Forget the parked event at ``position`` for good. Raises
        :class:`NotFound` when the group has none there."""
        parked = self._check_parked(position)
        if parked.replaying:
            raise InvalidMessage(
                f"the parked event at position {parked.position} of group {self.name!r} "
                "is being replayed; skip it if it is parked again"
            )
        del self._parked[parked.position]
        await trio.to_thread.run_sync(
            self._store.unpark, self.name, parked.position, limiter=self._write_limiter
        )
        return parked

    async def replay(self, position: object) -> ParkedEvent:
        """Deliver the parked event at ``position`` again (once, to the
        member owning its stream); it stays parked, marked ``replaying``,
        until that delivery is acked, and is parked again if it fails
        ``max_attempts`` more times. Raises :class:`NotFound` when the group
        has none there."""
        parked = self._check_parked(position)
        if parked.replaying:
            return parked
        stored = await self._calls.run(self._store.read_all, parked.position - 1, 1)
        if not stored or stored[0].position != parked.position:
            raise NotFound(f"the log has no event at position {parked.position}")
        replaying = ParkedEvent(
            parked.position, parked.stream, parked.attempts, parked.error, parked.parked_at, True
        )
        await trio.to_thread.run_sync(
            self._store.park, self.name, replaying, limiter=self._write_limiter
        )
        self._parked[parked.position] = replaying
        self._enqueue_replay(stored[0])
        return replaying

    def _enqueue_replay(self, record: StoredEvent) -> None:
        event = self._codec.decode_record(record)
        self._replays[event.position] = event
        stream = self._streams.get(event.stream)
        if stream is None:
            stream = self._streams[event.stream] = _Stream(event.stream, bucket_of(event.stream))
        # After the event in flight, if any, so the stream's order is kept there.
        if stream.busy:
            stream.events.insert(1, event)
        else:
            stream.events.appendleft(event)
        self._ready(stream)
        self._poke()

    # -- the loop ----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the log for the members, re-deliver nacked events when due,
        and save the progress as events are acked; runs until cancelled."""
        self.running = True
        for parked in list(self._parked.values()):
            if parked.replaying and parked.position not in self._replays:
                stored = await self._calls.run(self._store.read_all, parked.position - 1, 1)
                if stored and stored[0].position == parked.position:
                    self._enqueue_replay(stored[0])
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_head)
                # Saving runs beside reading and delivering: a save waits for
                # the store's writer (behind command commits) and its fsync.
                nursery.start_soon(self._save_loop)
                task_status.started()
                await self._loop()
        finally:
            self.running = False
            for member in list(self._members.values()):
                member.alive = False
                member._send.close()
            self._fail_saves(None)

    async def _watch_head(self) -> None:
        seen = self._watch.head_position
        while True:
            await self._watch.wait_beyond(seen)
            seen = self._watch.head_position
            self._poke()

    async def _loop(self) -> None:
        empty_read = False
        while True:
            read = False
            if self._scan < self._watch.head_position and self._buffered < MAX_BUFFERED:
                read = await self._read_batch()
                empty_read = not read
            self._release_retries()
            if not read:
                self._wake = trio.Event()
                if (
                    not empty_read
                    and self._scan < self._watch.head_position
                    and self._buffered < MAX_BUFFERED
                ):
                    continue
                deadline = self._retries[0][0] if self._retries else math.inf
                if empty_read:
                    # The head is known before its events can be read (another
                    # process's commit): look again shortly rather than spin.
                    deadline = min(deadline, trio.current_time() + _REREAD_AFTER)
                with trio.move_on_at(deadline):
                    await self._wake.wait()

    async def _read_batch(self) -> bool:
        assert self.filter is not None
        head = self._watch.head_position
        far = head - self._scan > _READ_BATCH
        category = self.filter.category
        if category is None:
            stored = await self._calls.run(
                self._store.read_all, self._scan, _READ_BATCH, offload=far
            )
        else:
            # The store's category index: a rare category costs what it holds.
            stored = await self._calls.run(
                self._store.read_category, category, self._scan, _READ_BATCH, offload=far
            )
        before = self._scan
        matches = self.filter.matches
        decode = self._codec.decode_record
        base = self._base
        done = self._done
        for record in stored:
            position = record.position
            self._scan = position
            if not matches(record.stream, record.type):
                continue
            bucket = bucket_of(record.stream)
            if position <= base[bucket] or position in done[bucket]:
                continue
            try:
                event = decode(record)
            except Exception as exc:
                # An event no handler could ever take: out of its stream's way at once.
                parked = ParkedEvent(
                    position, record.stream, 0, f"cannot decode: {exc}"[:1000], time.time()
                )
                self._parked[position] = parked
                self._to_park.append(parked)
                self._mark_dirty()
                continue
            stream = self._streams.get(record.stream)
            if stream is None:
                stream = self._streams[record.stream] = _Stream(record.stream, bucket)
            stream.events.append(event)
            self._outstanding[bucket].append(position)
            self._times[position] = record.timestamp
            self._buffered += 1
            self._ready(stream)
        if category is not None and len(stored) < _READ_BATCH:
            # Every event of the category up to the head seen before the read is in.
            self._scan = max(self._scan, head)
        return self._scan > before

    def _release_retries(self) -> None:
        now = trio.current_time()
        while self._retries and self._retries[0][0] <= now:
            _, _, name = heapq.heappop(self._retries)
            stream = self._streams.get(name)
            if stream is not None and stream.retry_at is not None:
                stream.retry_at = None
                self._ready(stream)

    async def _save_loop(self) -> None:
        while True:
            if not self._dirty:
                self._save_wanted = trio.Event()
                await self._save_wanted.wait()
                continue
            await self._save()

    async def _save(self) -> None:
        """Write what was parked and the progress in one worker-thread call
        (parked events first: the progress that passes them must never be
        saved without them), then confirm the acks it covers."""
        parks, self._to_park = self._to_park, []
        unparks, self._to_unpark = self._to_unpark, []
        saves, self._saves = self._saves, []
        self._dirty = False
        marks = self._marks()
        progress = GroupProgress(
            tuple(
                BucketProgress(mark, tuple(sorted(p for p in self._done[b] if p > mark)))
                for b, mark in enumerate(marks)
            )
        )
        for b, mark in enumerate(marks):
            if self._done[b]:
                self._done[b] = {p for p in self._done[b] if p > mark}
        store = self._store
        name = self.name

        def write() -> None:
            for parked in parks:
                store.park(name, parked)
            for position in unparks:
                store.unpark(name, position)
            store.put_group(name, progress)

        try:
            await trio.to_thread.run_sync(write, limiter=self._write_limiter)
        except Exception as exc:
            for done in saves:
                done(exc)
            raise
        self.saved_position = min(marks)
        for done in saves:
            done(None)

    def _fail_saves(self, error: BaseException | None) -> None:
        saves, self._saves = self._saves, []
        closed = error or Unavailable(
            f"group {self.name!r} stopped before the ack was saved; the event will be "
            "delivered again"
        )
        for done in saves:
            done(closed)

    def status(self) -> GroupStatus:
        """A snapshot of the group."""
        events, seconds = self.lag()
        event_filter = self.filter
        return GroupStatus(
            name=self.name,
            category=None if event_filter is None else event_filter.category,
            types=None
            if event_filter is None or event_filter.types is None
            else sorted(event_filter.types),
            members=self.members,
            position=self.position,
            lag_events=events,
            lag_seconds=seconds,
            in_flight=self.in_flight,
            delivered=self.delivered,
            acked=self.acked,
            redelivered=self.redelivered,
            parked=[parked_status(p) for p in self.parked_events],
        )


def parked_status(parked: ParkedEvent) -> ParkedStatus:
    """A parked event as status reports show it (an object, not an array)."""
    return ParkedStatus(
        parked.position,
        parked.stream,
        parked.attempts,
        parked.error,
        parked.parked_at,
        parked.replaying,
    )


def _unpack(progress: GroupProgress | None) -> tuple[list[int], list[set[int]]]:
    """Per bucket: the saved mark and the positions done above it. A
    progress saved with another number of buckets is folded into the
    safest reading: every bucket restarts from the lowest mark (events
    between it and their own mark come again: at least once)."""
    if progress is None or not progress.buckets:
        return [0] * BUCKETS, [set() for _ in range(BUCKETS)]
    if len(progress.buckets) != BUCKETS:
        low = min(b.position for b in progress.buckets)
        return [low] * BUCKETS, [set() for _ in range(BUCKETS)]
    return [b.position for b in progress.buckets], [set(b.done) for b in progress.buckets]


class Groups:
    """The engine's consumer groups: starts each group's loop on its first
    join (in the nursery of :meth:`serve`, their supervisor), and knows the
    groups the store holds progress for, so their status and parked events
    show before anyone joins."""

    def __init__(
        self,
        store: EventStore,
        *,
        codec: Codec,
        calls: StoreCalls,
        watch: HeadWatch,
        write_limiter: trio.CapacityLimiter,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        self._store = store
        self._codec = codec
        self._calls = calls
        self._watch = watch
        self._write_limiter = write_limiter
        self.max_attempts = max_attempts
        self._groups: dict[str, ConsumerGroup] = {}
        self._loading: dict[str, trio.Event] = {}
        self._starting: dict[str, trio.Event] = {}
        self._start_send, self._start_receive = trio.open_memory_channel[
            tuple[ConsumerGroup, trio.Event]
        ](16)
        self._closed = False

    def __repr__(self) -> str:
        running = sum(1 for g in self._groups.values() if g.running)
        return f"<Groups groups={len(self._groups)} running={running}>"

    def __iter__(self) -> Any:
        return iter(list(self._groups.values()))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the groups the store knows, then start each group's loop
        when it is first joined; runs until cancelled."""
        for name in await self._calls.run(self._store.group_names, offload=True):
            await self._load(name)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for group, started in self._start_receive:
                    nursery.start_soon(self._run, group, started)
        finally:
            self._closed = True

    async def _run(self, group: ConsumerGroup, started: trio.Event) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(group.serve)
                started.set()
        except Exception as exc:
            # One group's failure (e.g. its store writes) stops that group only.
            group.error = f"{type(exc).__name__}: {exc}"
            started.set()

    async def _load(self, name: str) -> ConsumerGroup:
        while name in self._loading:
            await self._loading[name].wait()
        group = self._groups.get(name)
        if group is not None:
            return group
        self._loading[name] = loaded = trio.Event()
        try:
            progress = await self._calls.run(self._store.get_group, name, offload=True)
            parked = await self._calls.run(self._store.parked, name, offload=True)
            group = ConsumerGroup(
                name,
                store=self._store,
                codec=self._codec,
                calls=self._calls,
                watch=self._watch,
                write_limiter=self._write_limiter,
                max_attempts=self.max_attempts,
                progress=progress,
                parked=parked,
            )
            self._groups[name] = group
            return group
        finally:
            del self._loading[name]
            loaded.set()

    def get(self, name: str) -> ConsumerGroup:
        """The group called ``name``; raises :class:`NotFound` naming the known ones."""
        group = self._groups.get(name)
        if group is None:
            known = ", ".join(sorted(self._groups)) or "none"
            raise NotFound(f"no consumer group {name!r}; known: {known}")
        return group

    async def join(
        self,
        name: str,
        *,
        category: str | None = None,
        types: Iterable[str] | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> Member:
        """Join group ``name`` (made on first use) as a new member. Raises
        :class:`InvalidMessage` for a bad name, filter or prefetch, or a
        filter other than the group's."""
        check_group_name(name)
        if (
            not isinstance(prefetch, int)
            or isinstance(prefetch, bool)
            or not 1 <= prefetch <= MAX_PREFETCH
        ):
            raise InvalidMessage(
                f"prefetch must be an integer from 1 to {MAX_PREFETCH}, got {prefetch!r}"
            )
        event_filter = EventFilter.of(category, None if types is None else list(types))
        group = await self._load(name)
        member = group._join(event_filter, prefetch)
        if not group.running and group.error is None:
            # Joins racing for a new group start its loop once.
            started = self._starting.get(name)
            try:
                if started is None:
                    started = self._starting[name] = trio.Event()
                    await self._start_send.send((group, started))
                await started.wait()
            except BaseException:
                group._leave(member)
                raise
            if group.error is not None:
                group._leave(member)
                raise NotFound(f"group {name!r} is stopped by an error: {group.error}")
        return member

    @asynccontextmanager
    async def consume(
        self,
        name: str,
        *,
        category: str | None = None,
        types: Iterable[str] | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> AsyncIterator[Member]:
        """Be a member of group ``name`` for the block (see :meth:`join`);
        on exit the member leaves and its unacked events go to the others."""
        member = await self.join(name, category=category, types=types, prefetch=prefetch)
        try:
            yield member
        finally:
            member.leave()

    def status(self) -> list[GroupStatus]:
        """Every known group's :class:`GroupStatus`, by name."""
        return [self._groups[name].status() for name in sorted(self._groups)]
