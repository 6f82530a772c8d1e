"""Process managers: long-running reactions to events, with durable timers.

A process manager follows the log like a projection does and reacts to the
events it selects (by type, or every event of a category) with commands. It
keeps a state per *process instance*, correlated by a field of the event
(``order_id``, say), and may schedule timers ("if no payment within 15
minutes, cancel the order").

Everything it knows is event-sourced in the same store: each instance is an
aggregate of its own, stream ``<name>-<process id>``, whose events record
that it handled the event at position P (with the state after it), that a
timer was scheduled, cancelled or fired. So a restart or a crash loses no
timer and fires none twice:

- A trigger (an event at position P, or a due timer whose
  ``TimerScheduled`` record is at position Q) is carried out in this order:
  the reaction is computed from the instance's state, its commands are sent
  with the command ids ``pm:<name>:<P or Q>:<n>``, then one append to the
  instance's stream (at its expected version) records the outcome. Only then
  does the manager's position move on.
- A trigger seen again (the checkpoint was older than the crash) is skipped
  when the instance's stream says it was handled. When the crash came after
  the commands but before the record, the reaction is computed again from the
  same state, so it is the same, and the engine's command-id index answers
  each command with its first Ack instead of running it again.
- A command the domain refuses is recorded in the outcome event (with its
  error code and message) and not retried; a command that could not run at
  all (overloaded, unavailable, storage down) makes the whole trigger wait
  and go again.

The manager's position and its index of pending timers are a durable
checkpoint (a cache: the log is the truth, and the index is rebuilt from the
manager's own events after the checkpoint). On start it first catches up
with the log as it was, then fires the timers that came due meanwhile; a
timer fires once its time has passed on the engine's clock and once every
event committed before that time has been handled.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import msgspec
import trio

from motet.storage.codec import Codec, tag_of
from motet.storage.errors import (
    CodecError,
    InvalidKey,
    MotetError,
    Overloaded,
    StorageError,
    Unavailable,
    code_for,
)
from motet.storage.records import Ack, Append, Checkpoint, Metadata, RecordedEvent, StoredEvent
from motet.storage.status import ProcessManagerState, ProcessManagerStatus
from motet.storage.store import EventStore, check_aggregate_id
from motet.storage.streams import SEPARATOR, category_of, stream_id

from .request import CommandRequest
from .store_calls import StoreCalls
from .writer import GroupCommitWriter

__all__ = [
    "ProcessManager",
    "ProcessManagerActor",
    "ProcessManagerStatus",
    "Reaction",
    "Rejection",
    "Timer",
    "command_id_of",
]

log = logging.getLogger("motet.process_managers")

S = TypeVar("S")

MAX_TIMER_SLEEP = 1.0
"""Longest the manager sleeps between looks at its clock (seconds): a clock
that jumps (a test's, or a wall clock set forward) is noticed this soon."""

_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)
"""Pauses (seconds) before a trigger whose commands or append could not run
is tried again; the last one repeats."""

Send = Callable[..., Awaitable[Ack]]
"""``send(command, *, command_id, correlation_id, causation_id) -> Ack``: the
engine's ``send``."""


def command_id_of(name: str, trigger: int, n: int) -> str:
    """The command id of the ``n``-th command (from 0) that process manager
    ``name`` sends for the trigger at log position ``trigger`` (the event it
    reacted to, or the ``TimerScheduled`` record of the timer that fired)."""
    return f"pm:{name}:{trigger}:{n}"


class Timer(msgspec.Struct, frozen=True, kw_only=True):
    """A timer a reaction asks for: at ``at`` (Unix seconds, on the engine's
    clock) the manager's ``on_timer(state, name, at)`` runs. Scheduling a
    ``name`` that is pending for the instance replaces that timer."""

    name: str
    at: float


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """A command of a process manager that was refused, as recorded in the
    outcome event of its trigger: its id, type tag, error code and message."""

    command_id: str
    type: str
    code: str
    message: str


@dataclass(frozen=True)
class Reaction(Generic[S]):
    """What a process manager does about one event or timer: its instance's
    next ``state``, the ``commands`` to send (in order), the ``timers`` to
    schedule and the names of pending timers to ``cancel``."""

    state: S
    commands: Sequence[Any] = ()
    timers: Sequence[Timer] = ()
    cancel: Sequence[str] = ()


@dataclass(frozen=True)
class ProcessManager(Generic[S]):
    """A process manager: see the module docstring.

    ``correlate`` selects the events it reacts to and says where their process
    id is: a key that is an event type selects that type, a key that is a
    category (an aggregate name) selects every event of it; the value names
    the event's field holding the process id (an event without a non-empty
    string there is passed over). ``react(state, event, record)`` returns a
    :class:`Reaction`, or ``None`` to do and record nothing; ``on_timer(state,
    name, at)`` does the same for a timer that fired. Both are pure functions
    of their arguments (the same arguments always give the same reaction),
    which is what makes a redelivered trigger harmless. The instance's stream
    is ``f"{name}-{process id}"``; ``state_type`` must be a ``msgspec.Struct``
    (it is stored in the instance's events).
    """

    name: str
    state_type: type[S]
    initial: S
    correlate: Mapping[type | str, str]
    react: Callable[[S, Any, RecordedEvent], Reaction[S] | None]
    on_timer: Callable[[S, str, float], Reaction[S] | None] | None = None
    events: tuple[type, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or SEPARATOR in self.name or "\x00" in self.name or ":" in self.name:
            raise ValueError(
                f"process manager name must be non-empty without '-', ':' or NUL, got {self.name!r}"
            )
        if not self.correlate:
            raise ValueError(f"process manager {self.name!r} correlates no events")
        for key, id_field in self.correlate.items():
            if isinstance(key, str):
                if key == self.name:
                    raise ValueError(
                        f"process manager {self.name!r} cannot react to its own events"
                    )
            elif id_field not in getattr(key, "__struct_fields__", ()):
                raise ValueError(
                    f"{key.__qualname__} has no field {id_field!r} to correlate "
                    f"process manager {self.name!r} by"
                )
        object.__setattr__(self, "events", _event_types(self.name, self.state_type))

    def stream_of(self, process_id: str) -> str:
        """The stream of one instance of this process manager."""
        return stream_id(self.name, process_id)

    def event_type(self, kind: str) -> type:
        """This manager's own event type ``kind``: ``EventHandled``,
        ``TimerScheduled``, ``TimerCancelled`` or ``TimerFired`` (its tag is
        ``f"{name}.{kind}"``)."""
        for cls in self.events:
            if cls.__name__ == kind:
                return cls
        raise KeyError(f"no event type {kind!r}; known: {[c.__name__ for c in self.events]}")


def _event_types(name: str, state_type: type) -> tuple[type, ...]:
    """The four event types of one process manager, tagged with its name so
    two managers never share a tag."""

    def define(kind: str, fields: list[tuple[str, Any] | tuple[str, Any, Any]]) -> type:
        return msgspec.defstruct(
            kind, fields, tag=f"{name}.{kind}", kw_only=True, frozen=True, module=__name__
        )

    outcome: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("state", state_type),
        ("commands", list[str], []),
        ("rejected", list[Rejection], []),
    ]
    return (
        define("EventHandled", [("position", int), ("event_type", str), *outcome]),
        define("TimerScheduled", [("name", str), ("at", float)]),
        define("TimerCancelled", [("timer", int), ("name", str)]),
        define("TimerFired", [("timer", int), ("name", str), ("at", float), *outcome]),
    )


class _Pending(msgspec.Struct, frozen=True, array_like=True):
    """A pending timer of an instance: where its ``TimerScheduled`` is, when
    it is due, and the correlation id its commands carry."""

    position: int
    at: float
    correlation_id: str | None


class _Instance:
    """One process instance as folded from its stream."""

    __slots__ = ("last_position", "state", "timers", "version")

    def __init__(self, state: Any) -> None:
        self.state = state
        self.version = 0
        # The position of the last event it handled: a trigger at or before
        # it was handled already (triggers arrive in log order).
        self.last_position = 0
        self.timers: dict[str, _Pending] = {}


class _Retry(Exception):
    """The trigger could not be carried out now (a command or the append did
    not run); try it again after a pause."""


class _HandlerFailed(Exception):
    """``react`` or ``on_timer`` raised or returned something unusable."""


class _Checkpointed(msgspec.Struct, array_like=True):
    """The pending-timer index saved with the manager's position."""

    timers: list[tuple[int, float, str]]


_INDEX_ENCODER = msgspec.msgpack.Encoder()
_INDEX_DECODER = msgspec.msgpack.Decoder(_Checkpointed)


class ProcessManagerActor(Generic[S]):
    """Runs one :class:`ProcessManager`; see the module docstring.

    ``send`` is the engine's ``send``; ``clock()`` is the engine's clock
    (Unix seconds) that timers are due on.
    """

    def __init__(
        self,
        definition: ProcessManager[S],
        *,
        store: EventStore,
        codec: Codec,
        writer: GroupCommitWriter,
        send: Send,
        clock: Callable[[], float],
        calls: StoreCalls | None = None,
        batch_size: int = 500,
        cache_size: int = 10_000,
        save_every: float = 1.0,
    ) -> None:
        self.definition = definition
        self.name = definition.name
        self.checkpoint_name = f"pm:{definition.name}"
        self._store = store
        self._codec = codec
        self._writer = writer
        self._send = send
        self._clock = clock
        self._calls = calls if calls is not None else StoreCalls(store)
        self._batch_size = batch_size
        self._cache_size = cache_size
        self._save_every = save_every
        handled, scheduled, cancelled, fired = definition.events
        self._handled: type = handled
        self._scheduled: type = scheduled
        self._cancelled: type = cancelled
        self._fired: type = fired
        self._by_type: dict[str, str] = {}
        self._by_category: dict[str, str] = {}
        for key, id_field in definition.correlate.items():
            if isinstance(key, str):
                self._by_category[key] = id_field
            else:
                self._by_type[tag_of(key)] = id_field
        self._instances: OrderedDict[str, _Instance] = OrderedDict()
        # Pending timers: position of the TimerScheduled record → (due, process
        # id), and a heap of (due, position) over it (entries no longer in the
        # dict are skipped when they come up).
        self._timers: dict[int, tuple[float, str]] = {}
        self._heap: list[tuple[float, int]] = []
        self.position = 0
        self.saved_position = 0
        self._saved_at = -math.inf
        self.error: str | None = None
        self.failed_position: int | None = None
        self.events_handled = 0
        self.timers_fired = 0
        self.commands_sent = 0
        self.commands_rejected = 0
        self._scope: trio.CancelScope | None = None
        self._wait: trio.CancelScope | None = None
        self._idle_now = False
        self._resume = trio.Event()
        self._stopped = False

    def __repr__(self) -> str:
        state = "failed" if self.error else "running"
        return (
            f"<ProcessManagerActor {self.name} {state} position={self.position} "
            f"head={self._writer.head_position} timers={len(self._timers)}>"
        )

    # -- state --------------------------------------------------------------

    @property
    def pending_timers(self) -> int:
        """Timers scheduled and not yet fired or cancelled, as the manager's
        index counts them."""
        return len(self._timers)

    @property
    def idle(self) -> bool:
        """Whether it is waiting for the log or a timer with nothing to do
        (caught up, no timer due when it last looked, not woken since)."""
        return self._idle_now

    def next_timer_at(self) -> float | None:
        """When the next pending timer is due (Unix seconds), if any."""
        heap = self._heap
        timers = self._timers
        while heap and timers.get(heap[0][1], (None,))[0] != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def lag(self) -> tuple[int, float]:
        """(events, seconds) behind the log's head; seconds is the age of the
        oldest committed event not looked at yet (0.0 when caught up or not
        known)."""
        behind = self._writer.head_position - self.position
        if behind <= 0:
            return 0, 0.0
        seen = self._writer.watch.committed_at(self.position + 1)
        return behind, 0.0 if seen is None else max(0.0, time.time() - seen)

    def status(self) -> ProcessManagerStatus:
        """A snapshot of the manager's position, lag, timers and counters."""
        events, seconds = self.lag()
        state: ProcessManagerState = "failed" if self.error else "running"
        return ProcessManagerStatus(
            name=self.name,
            state=state,
            position=self.position,
            lag_events=events,
            lag_seconds=seconds,
            pending_timers=len(self._timers),
            next_timer_at=self.next_timer_at(),
            events_handled=self.events_handled,
            timers_fired=self.timers_fired,
            commands_sent=self.commands_sent,
            commands_rejected=self.commands_rejected,
            error=self.error,
            failed_position=self.failed_position,
        )

    # -- control ------------------------------------------------------------

    def wake(self) -> None:
        """Look at the clock now instead of at the end of the current sleep
        (after a test moved its clock, say)."""
        self._idle_now = False
        if self._wait is not None:
            self._wait.cancel()

    def retry(self) -> None:
        """Try the failed trigger again (after the handler was fixed)."""
        self.error = None
        self.failed_position = None
        self._resume.set()
        self._resume = trio.Event()

    def stop(self) -> None:
        """Stop following the log and firing timers; :meth:`run` returns.
        A trigger cut short is carried out again after a restart."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    # -- running ------------------------------------------------------------

    async def restore(self) -> None:
        """Load the saved position and timer index, if usable."""
        try:
            checkpoint = await self._calls.run(self._store.get_checkpoint, self.checkpoint_name)
        except CodecError as exc:
            log.warning("process manager %s: %s; starting from the log", self.name, exc)
            return
        if checkpoint is None or checkpoint.model is None:
            return
        if checkpoint.position > self._writer.head_position:
            log.warning(
                "process manager %s: checkpoint at %d is past the log's head %d; "
                "starting from the log",
                self.name,
                checkpoint.position,
                self._writer.head_position,
            )
            return
        try:
            saved = _INDEX_DECODER.decode(checkpoint.model)
        except msgspec.DecodeError as exc:
            log.warning("process manager %s: unreadable checkpoint (%s)", self.name, exc)
            return
        for position, at, process_id in saved.timers:
            self._index_add(position, at, process_id)
        self.position = self.saved_position = checkpoint.position

    async def save(self) -> None:
        """Save the position and the timer index now."""
        if self.position == self.saved_position:
            return
        position = self.position
        index = _Checkpointed([(q, at, pid) for q, (at, pid) in self._timers.items()])
        checkpoint = Checkpoint(position, 1, _INDEX_ENCODER.encode(index))
        await trio.to_thread.run_sync(
            self._store.put_checkpoint,
            self.checkpoint_name,
            checkpoint,
            limiter=self._writer.limiter,
        )
        self.saved_position = position
        self._saved_at = trio.current_time()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Restore, then follow the log and fire timers until :meth:`stop`
        or cancelled."""
        await self.restore()
        task_status.started()
        with trio.CancelScope() as scope:
            self._scope = scope
            if self._stopped:
                scope.cancel()
            await self._serve()

    async def _serve(self) -> None:
        writer = self._writer
        # Timers wait until the log as it was at start has been handled: an
        # event committed before a crash may settle what a timer would do.
        start_head = writer.head_position
        while True:
            if self.error is not None:
                await self._resume.wait()
                continue
            horizon = math.inf
            if self.position < writer.head_position:
                horizon = await self._follow()
                if self.error is not None:
                    continue
                if self.position < start_head:
                    continue
                if self.position >= writer.head_position:
                    horizon = math.inf
            await self._fire_due(horizon)
            if self.error is None and self.position >= writer.head_position:
                await self._idle()
            if trio.current_time() - self._saved_at >= self._save_every:
                try:
                    await self.save()
                except (StorageError, Unavailable) as exc:
                    # A checkpoint is a cache: the next save catches up.
                    log.warning("process manager %s: saving failed: %s", self.name, exc)
                    self._saved_at = trio.current_time()

    async def _idle(self) -> None:
        """Sleep until the log moves, the next timer is due, :meth:`wake`, or
        :data:`MAX_TIMER_SLEEP` passes."""
        delay = MAX_TIMER_SLEEP
        due = self.next_timer_at()
        if due is not None:
            delay = min(delay, max(0.0, due - self._clock()))
        with trio.move_on_after(delay) as scope:
            self._wait = scope
            self._idle_now = True
            try:
                await self._writer.wait_head_beyond(self.position)
            finally:
                self._wait = None
                self._idle_now = False

    async def _follow(self) -> float:
        """Handle one batch of the log; return the timestamp of the last event
        handled (timers due before it may fire)."""
        far = self._writer.head_position - self.position > self._batch_size
        try:
            events = await self._calls.run(
                self._store.read_all, self.position, self._batch_size, offload=far
            )
        except CodecError as exc:
            self._stop(self.position + 1, f"{type(exc).__name__}: {exc}")
            return -math.inf
        except (StorageError, Unavailable) as exc:
            # The store may come back (a network store reconnects).
            log.warning("process manager %s: reading the log failed: %s", self.name, exc)
            await trio.sleep(_BACKOFF[-1])
            return -math.inf
        if not events:
            # The head is known to be further, but nothing is readable yet:
            # do not spin on it.
            await trio.sleep(MAX_TIMER_SLEEP / 10)
        horizon = -math.inf
        for stored in events:
            if not await self._on_record(stored):
                return horizon
            self.position = stored.position
            horizon = stored.timestamp
        return horizon

    async def _on_record(self, stored: StoredEvent) -> bool:
        """Handle one log record; ``False`` when the manager stopped on it."""
        category = category_of(stored.stream)
        if category == self.name:
            try:
                self._index_own(stored)
            except CodecError as exc:
                log.warning("process manager %s: own record unreadable: %s", self.name, exc)
            return True
        id_field = self._by_type.get(stored.type) or self._by_category.get(category)
        if id_field is None:
            return True
        try:
            record = self._codec.decode_record(stored)
        except CodecError as exc:
            self._stop(stored.position, f"{type(exc).__name__}: {exc}")
            return False
        process_id = getattr(record.data, id_field, None)
        if not isinstance(process_id, str) or not process_id:
            return True
        try:
            check_aggregate_id(self.name, process_id)
        except InvalidKey as exc:
            log.warning(
                "process manager %s passes over the event at %d: %s",
                self.name,
                stored.position,
                exc,
            )
            return True
        return await self._carry_out(
            stored.position, partial(self._handle_event, process_id, record)
        )

    async def _carry_out(self, trigger: int, attempt: Callable[[], Awaitable[None]]) -> bool:
        """Run ``attempt`` until it is done; ``False`` when the handler
        failed (the manager stops there)."""
        tries = 0
        while True:
            try:
                await attempt()
            except (_Retry, StorageError, Unavailable) as exc:
                pause = _BACKOFF[min(tries, len(_BACKOFF) - 1)]
                tries += 1
                log.warning(
                    "process manager %s: the trigger at %d is tried again in %s s: %s",
                    self.name,
                    trigger,
                    pause,
                    exc,
                )
                self._instances.clear()
                await trio.sleep(pause)
                continue
            except _HandlerFailed as exc:
                self._stop(trigger, str(exc))
                return False
            except CodecError as exc:
                # An instance's own record does not decode: stop, as for an
                # unreadable trigger, instead of taking the engine down.
                self._stop(trigger, f"{type(exc).__name__}: {exc}")
                return False
            return True

    async def _handle_event(self, process_id: str, record: RecordedEvent) -> None:
        instance = await self._instance(process_id)
        if record.position <= instance.last_position:
            return  # handled before a restart; its commands ran then
        try:
            reaction = self.definition.react(instance.state, record.data, record)
        except Exception as exc:
            raise _HandlerFailed(
                f"{self.name}.react failed on {record.type} at {record.position}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if reaction is None:
            return
        correlation = record.metadata.correlation_id or str(record.position)

        def outcome(state: Any, commands: list[str], rejected: list[Rejection]) -> Any:
            return self._handled(
                position=record.position,
                event_type=record.type,
                state=state,
                commands=commands,
                rejected=rejected,
            )

        await self._react(process_id, instance, reaction, record.position, correlation, outcome)
        self.events_handled += 1

    async def _fire_due(self, horizon: float) -> None:
        """Fire every timer due by the clock and by ``horizon``."""
        while self.error is None:
            due = self.next_timer_at()
            if due is None or due > min(self._clock(), horizon):
                return
            _, position = self._heap[0]
            _, process_id = self._timers[position]
            if not await self._carry_out(position, partial(self._fire, process_id, position)):
                return

    async def _fire(self, process_id: str, position: int) -> None:
        instance = await self._instance(process_id)
        pending = next((p for p in instance.timers.values() if p.position == position), None)
        name = next((n for n, p in instance.timers.items() if p.position == position), "")
        if pending is None:
            # Fired or cancelled already: the index was behind the stream.
            self._timers.pop(position, None)
            return
        on_timer = self.definition.on_timer
        if on_timer is None:
            raise _HandlerFailed(f"process manager {self.name!r} has timers but no on_timer")
        try:
            reaction = on_timer(instance.state, name, pending.at)
        except Exception as exc:
            raise _HandlerFailed(
                f"{self.name}.on_timer failed on timer {name!r} of {process_id!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if reaction is None:
            reaction = Reaction(instance.state)
        correlation = pending.correlation_id or str(position)

        def outcome(state: Any, commands: list[str], rejected: list[Rejection]) -> Any:
            return self._fired(
                timer=position,
                name=name,
                at=pending.at,
                state=state,
                commands=commands,
                rejected=rejected,
            )

        await self._react(process_id, instance, reaction, position, correlation, outcome)
        self.timers_fired += 1

    async def _react(
        self,
        process_id: str,
        instance: _Instance,
        reaction: Reaction[Any],
        trigger: int,
        correlation: str,
        outcome: Callable[[Any, list[str], list[Rejection]], Any],
    ) -> None:
        """Send the reaction's commands, then record its outcome and timers."""
        if not isinstance(reaction, Reaction):
            raise _HandlerFailed(
                f"process manager {self.name!r} must return a Reaction or None, "
                f"got {type(reaction).__name__}"
            )
        if not isinstance(reaction.state, self.definition.state_type):
            raise _HandlerFailed(
                f"process manager {self.name!r} returned a state of type "
                f"{type(reaction.state).__name__}, not {self.definition.state_type.__name__}"
            )
        names = [timer.name for timer in reaction.timers]
        if len(set(names)) != len(names):
            raise _HandlerFailed(
                f"process manager {self.name!r} scheduled one timer name twice: {names}"
            )
        for timer in reaction.timers:
            if not isinstance(timer, Timer) or not math.isfinite(timer.at):
                raise _HandlerFailed(
                    f"process manager {self.name!r} must schedule Timers at a finite time, "
                    f"got {timer!r}"
                )
        if reaction.timers and self.definition.on_timer is None:
            raise _HandlerFailed(f"process manager {self.name!r} has timers but no on_timer")
        command_ids, rejected = await self._send_all(reaction.commands, trigger, correlation)
        head = outcome(reaction.state, command_ids, rejected)
        # What stays pending once the outcome is folded (a fired timer is not).
        pending = {n: p for n, p in instance.timers.items() if p.position != trigger}
        events: list[Any] = [head]
        for name in [*reaction.cancel, *names]:
            if name in pending:
                events.append(self._cancelled(timer=pending.pop(name).position, name=name))
        events.extend(self._scheduled(name=t.name, at=float(t.at)) for t in reaction.timers)
        await self._append(process_id, instance, events, correlation, str(trigger))

    async def _send_all(
        self, commands: Sequence[Any], trigger: int, correlation: str
    ) -> tuple[list[str], list[Rejection]]:
        command_ids: list[str] = []
        rejected: list[Rejection] = []
        for n, command in enumerate(commands):
            command_id = command_id_of(self.name, trigger, n)
            try:
                await self._send(
                    command,
                    command_id=command_id,
                    correlation_id=correlation,
                    causation_id=str(trigger),
                )
            except (Overloaded, Unavailable, StorageError) as exc:
                # Nothing says the command cannot run: the trigger goes again,
                # and the commands already done answer by their command ids.
                raise _Retry(f"{type(command).__name__} ({command_id}): {exc}") from exc
            except Exception as exc:
                # Refused for good (rejected, invalid, a bug in decide): recorded
                # in the outcome event, counted, logged; the process goes on.
                rejected.append(
                    Rejection(
                        command_id=command_id,
                        type=_type_name(command),
                        code=code_for(exc),
                        message=str(exc),
                    )
                )
                self.commands_rejected += 1
                log.warning(
                    "process manager %s: %s (%s) was refused: %s",
                    self.name,
                    _type_name(command),
                    command_id,
                    exc,
                )
            else:
                self.commands_sent += 1
            command_ids.append(command_id)
        return command_ids, rejected

    async def _append(
        self,
        process_id: str,
        instance: _Instance,
        events: list[Any],
        correlation: str,
        causation: str,
    ) -> None:
        encoded = [self._codec.encode_event(event) for event in events]
        request = CommandRequest(None)
        request.append = Append(
            self.definition.stream_of(process_id),
            instance.version,
            encoded,
            Metadata(None, correlation, causation),
            # Every writer node runs every manager: the expected version keeps
            # each record single, whichever node's lease the stream is under.
            fenced=False,
        )
        request.owner = self
        self._writer.submit(request)
        try:
            ack = await request.wait()
        except MotetError as exc:
            # A conflict (another writer node runs this manager too) or a
            # failed commit: reload the instance and carry the trigger out again.
            raise _Retry(f"recording the outcome failed: {exc}") from exc
        first = ack.position - len(events) + 1
        for offset, event in enumerate(events):
            self._apply(process_id, instance, event, first + offset, correlation)
        instance.version = ack.version

    def append_settled(self, ok: bool) -> None:
        """The writer settled one of this manager's appends (it waits on the
        request itself, so nothing to do)."""

    # -- instances and the timer index --------------------------------------

    async def _instance(self, process_id: str) -> _Instance:
        instances = self._instances
        instance = instances.get(process_id)
        if instance is not None:
            instances.move_to_end(process_id)
            return instance
        instance = _Instance(self.definition.initial)
        stored = await self._calls.run(
            self._store.read_stream, self.definition.stream_of(process_id), 0, None
        )
        for record in stored:
            event = self._codec.decode_event(record)
            self._apply(
                process_id, instance, event, record.position, record.metadata.correlation_id
            )
            instance.version = record.version
        instances[process_id] = instance
        if len(instances) > self._cache_size:
            instances.popitem(last=False)
        return instance

    def _apply(
        self,
        process_id: str,
        instance: _Instance,
        event: Any,
        position: int,
        correlation: str | None,
    ) -> None:
        """Fold one of the instance's own events, and keep the index in step."""
        kind = type(event)
        if kind is self._handled:
            instance.state = event.state
            instance.last_position = max(instance.last_position, event.position)
        elif kind is self._scheduled:
            instance.timers[event.name] = _Pending(position, event.at, correlation)
            self._index_add(position, event.at, process_id)
        elif kind is self._cancelled or kind is self._fired:
            if instance.timers.get(event.name, _NO_TIMER).position == event.timer:
                del instance.timers[event.name]
            self._timers.pop(event.timer, None)
            if kind is self._fired:
                instance.state = event.state

    def _index_own(self, stored: StoredEvent) -> None:
        """Keep the timer index in step with the manager's own events as the
        log passes them (they may have been written before a restart)."""
        if stored.type == tag_of(self._scheduled):
            at = self._codec.decode_event(stored).at
            self._index_add(stored.position, at, stored.stream.partition(SEPARATOR)[2])
        elif stored.type in (tag_of(self._cancelled), tag_of(self._fired)):
            self._timers.pop(self._codec.decode_event(stored).timer, None)

    def _index_add(self, position: int, at: float, process_id: str) -> None:
        # A timer seen again (the log passing a TimerScheduled written before
        # it fired) is checked against its instance's stream when it comes up.
        self._timers[position] = (at, process_id)
        heapq.heappush(self._heap, (at, position))

    def _stop(self, failed: int, error: str) -> None:
        self.error = error
        self.failed_position = failed
        log.error("process manager %s stopped at position %d: %s", self.name, failed, error)


_NO_TIMER = _Pending(0, 0.0, None)


def _type_name(command: Any) -> str:
    try:
        return tag_of(type(command))
    except TypeError:
        return type(command).__name__
