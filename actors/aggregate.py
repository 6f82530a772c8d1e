"""The aggregate actor: one live instance per aggregate id, one command at a time."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Iterable
from typing import Any, Generic, TypeVar

import msgspec
import trio

from motet.storage.codec import Codec
from motet.storage.errors import CodecError, Conflict, InvalidKey, StreamDeleted, Unavailable
from motet.storage.idempotency import retried_ack, stored_ack
from motet.storage.records import Append, Metadata, Snapshot, StoredEvent
from motet.storage.store import EventStore

from .definition import Aggregate
from .errors import CommandRejected, EngineClosed, InternalError, Overloaded
from .request import CommandRequest
from .store_calls import StoreCalls
from .writer import GroupCommitWriter

__all__ = ["AggregateActor"]

log = logging.getLogger("motet.actors")

S = TypeVar("S")


class AggregateActor(Generic[S]):
    """One aggregate: its state, its version and its bounded mailbox.

    Commands are decided strictly one at a time, in arrival order. Deciding,
    evolving and handing the append to the writer happen without a checkpoint
    in between, so a command is handled atomically with respect to every
    other task. The actor does not wait for the commit: the writer answers the
    command, and the next command is decided on the state the previous one
    produced.

    An idle actor is a plain object, not a task: a command that finds it
    loaded with an empty mailbox is decided at once in the sender's task,
    which is exactly what the actor would do next, minus a task switch. Only
    when the actor has to wait (loading its state from storage, or reloading
    it after a failure once its appends in flight have settled) do commands
    queue in its mailbox, and the registry runs :meth:`run` to work through
    them. Ten thousand idle aggregates thus cost ten thousand small objects,
    not ten thousand tasks and channels for the garbage collector to walk.
    For the same reason an actor keeps nothing else the collector tracks
    unless it needs it: its mailbox exists only while commands queue, and
    its few subjects are a tuple (which the collector stops tracking).
    """

    __slots__ = (
        "_calls",
        "_codec",
        "_mailbox",
        "_settled",
        "_stale",
        "_state_decoder",
        "_store",
        "_writer",
        "aggregate_id",
        "definition",
        "deleted",
        "last_used",
        "mailbox_size",
        "pending",
        "running",
        "state",
        "stopped",
        "stream",
        "subjects",
        "version",
    )

    def __init__(
        self,
        definition: Aggregate[S],
        aggregate_id: str,
        *,
        store: EventStore,
        codec: Codec,
        writer: GroupCommitWriter,
        state_decoder: msgspec.msgpack.Decoder[Any],
        mailbox_size: int,
        now: float,
        calls: StoreCalls | None = None,
    ) -> None:
        self.definition = definition
        self.aggregate_id = aggregate_id
        self.stream = definition.stream_of(aggregate_id)
        self._store = store
        self._calls = calls if calls is not None else StoreCalls(store)
        self._codec = codec
        self._writer = writer
        self._state_decoder = state_decoder
        self.mailbox_size = mailbox_size
        # Commands waiting for the actor task, including the one it is handling:
        # while there is one, new commands queue behind them. Made when a
        # command must queue and dropped once the actor task has emptied it,
        # so that an idle actor has no deque for the garbage collector to walk.
        self._mailbox: deque[CommandRequest] | None = None
        self.state: S = definition.initial
        self.version = 0
        self.pending = 0
        self.last_used = now
        self.stopped = False
        self.running = False
        # The stream was deleted: every command fails without being decided.
        self.deleted = False
        self._stale = True
        self._settled: trio.Event | None = None
        # Data subjects whose personal fields this stream's events carry: the
        # writer seals snapshots under their keys, and forgetting one of them
        # reloads this actor (see forget_subject). A tuple while there are
        # few (the garbage collector stops tracking a tuple of strings; the
        # usual stream holds one subject), a set beyond _SUBJECTS_AS_TUPLE.
        self.subjects: Collection[str] = ()

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "stale" if self._stale else "live"
        return (
            f"<AggregateActor {self.stream} {state} version={self.version} "
            f"mailbox={self.mailbox_used} pending={self.pending}>"
        )

    @property
    def mailbox_used(self) -> int:
        """Commands waiting in the mailbox."""
        mailbox = self._mailbox
        return 0 if mailbox is None else len(mailbox)

    @property
    def idle(self) -> bool:
        """True when nothing is queued or in flight, so stopping loses nothing."""
        return self.pending == 0 and not self._mailbox

    def tell(self, request: CommandRequest) -> bool:
        """Hand the actor a command: decide it now when the actor is loaded
        and its mailbox empty, else queue it.

        Returns whether the command was queued and the actor task is not
        running yet (the registry then starts :meth:`run`). Raises
        :class:`Overloaded` when the mailbox is full and
        :class:`EngineClosed` when the actor was stopped.
        """
        if self.stopped:
            raise EngineClosed(f"the actor of {self.stream} has stopped")
        mailbox = self._mailbox
        if mailbox is None:
            if not self._stale and not request.lookup_command_id:
                self._decide(request)
                return False
            mailbox = self._mailbox = deque()
        elif len(mailbox) >= self.mailbox_size:
            raise Overloaded(
                f"mailbox of {self.stream} is full ({self.mailbox_size} commands waiting)"
            )
        mailbox.append(request)
        if self.running:
            return False
        self.running = True
        return True

    def stop(self) -> None:
        """Refuse further commands (the registry stops only idle actors)."""
        self.stopped = True

    def append_settled(self, ok: bool) -> None:
        """The writer settled one of this actor's appends."""
        self.pending -= 1
        if not ok:
            self._stale = True
        if self.pending == 0 and self._settled is not None:
            self._settled.set()
            self._settled = None

    def forget_subject(self, subject: str) -> bool:
        """Drop the state when it may hold ``subject``'s personal data, so it
        is reloaded (with that data redacted) before the next command.
        Returns whether it did."""
        if subject not in self.subjects:
            return False
        self._stale = True
        self.state = self.definition.initial
        self.subjects = ()
        return True

    async def run(self) -> None:
        """Work through the mailbox (loading the state first when needed),
        then end; the registry starts it again when commands queue up."""
        mailbox = self._mailbox
        assert mailbox is not None  # tell() made it before asking for the task
        try:
            while mailbox:
                await self._handle(mailbox[0])
                mailbox.popleft()
        finally:
            self.running = False
            # No checkpoint since the loop found the mailbox empty (or was
            # cancelled): drop it, and let the next command that must queue
            # make a new one.
            self._mailbox = None
            # Only a cancelled actor (the engine is closing) can have commands left.
            error = EngineClosed(f"the engine closed before {self.stream} ran the command")
            while mailbox:
                mailbox.popleft().fail(error)

    async def _handle(self, request: CommandRequest) -> None:
        if request.lookup_command_id:
            # The engine could not look the command id up on the event loop's
            # thread (a blocking store); the actor can wait for it.
            command_id = request.command_id
            assert command_id is not None
            try:
                ack = await self._calls.run(stored_ack, self._store, command_id)
            except Unavailable as exc:  # e.g. its commit awaits a synchronous standby
                request.fail(exc)
                return
            except Exception as exc:
                log.exception("looking up command id %r failed", command_id)
                request.fail(InternalError(f"command id {command_id!r}: {exc}"))
                return
            if ack is not None:
                try:
                    fingerprint = request.command_fingerprint()
                    ack = retried_ack(command_id, ack, None, self.stream, fingerprint)
                except ValueError as exc:  # the command id names another command
                    request.fail(exc)
                    return
                request.succeed(ack)
                return
        if self._stale:
            try:
                await self._reload()
            except Exception as exc:
                log.exception("loading %s failed", self.stream)
                request.fail(InternalError(f"aggregate {self.stream} could not be loaded: {exc}"))
                return
        self._decide(request)

    async def _reload(self) -> None:
        while self.pending:
            self._settled = trio.Event()
            await self._settled.wait()
        state, version, replace, subjects, stored, deleted = await self._calls.run(
            self._read_history
        )
        self.state, self.version, replace_snapshot = self._load(
            state, version, replace, subjects, stored
        )
        self.deleted = deleted
        self._stale = False
        if replace_snapshot and not deleted:
            self._write_snapshot()

    def mark_deleted(self) -> None:
        """The stream was just deleted: refuse every later command."""
        self.deleted = True

    def _read_history(self) -> tuple[S, int, bool, list[str], list[StoredEvent], bool]:
        """The store reads of a load, in one call (one thread hop for a
        blocking store): the latest usable snapshot's state and version,
        whether the stored snapshot should be replaced, the subjects it was
        sealed for, the events after it (evolved by :meth:`_load`), and
        whether the stream was deleted."""
        deletion = self._store.stream_deletion(self.stream)
        deleted = deletion is not None and deletion.deleted
        definition = self.definition
        state, version = definition.initial, 0
        replace = False
        subjects: list[str] = []
        try:
            snapshot = self._store.load_snapshot(self.stream)
        except (CodecError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Snapshots are derived data: an unreadable one costs a replay, not the aggregate.
            log.warning("ignoring unreadable snapshot record of %s: %s", self.stream, exc)
            snapshot, replace = None, True
        if snapshot is not None:
            if snapshot.schema_version != definition.state_version:
                log.info(
                    "ignoring snapshot of %s: state schema %d, code has %d",
                    self.stream,
                    snapshot.schema_version,
                    definition.state_version,
                )
                replace = True
            else:
                opened = self._codec.open_sealed(self.stream, snapshot.state)
                if opened is None:
                    # Sealed under a key that is gone: a subject was forgotten.
                    log.info(
                        "ignoring snapshot of %s: a subject it holds was forgotten", self.stream
                    )
                    replace = True
                else:
                    try:
                        state = self._state_decoder.decode(opened[0])
                        version = snapshot.version
                        subjects = opened[1]
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        log.warning("ignoring unreadable snapshot of %s: %s", self.stream, exc)
                        replace = True
        if deletion is not None and not deletion.hard and deletion.removed_through > version:
            # Retention removed events no snapshot of this schema covers
            # (the state schema changed after it ran): replay what is left.
            log.warning(
                "%s: events up to version %d were removed and no usable snapshot covers "
                "them; the state is rebuilt from the events left",
                self.stream,
                deletion.removed_through,
            )
        events = self._store.read_stream(self.stream, after_version=version)
        if self._calls.blocking:
            self._codec.warm_keys(events)  # in the worker thread, not in _load
        return state, version, replace, subjects, events, deleted

    def _load(
        self,
        state: S,
        version: int,
        replace: bool,
        snapshot_subjects: list[str],
        stored_events: list[StoredEvent],
    ) -> tuple[S, int, bool]:
        """Evolve what :meth:`_read_history` read. Returns (state, version,
        whether the stored snapshot should be replaced)."""
        evolve = self.definition.evolve
        decode = self._codec.decode_event
        subjects_of = self._codec.subjects_of
        subjects = dict.fromkeys(snapshot_subjects)
        for stored in stored_events:
            event = decode(stored)
            for subject in subjects_of(event):
                subjects[subject] = None
            state = evolve(state, event)
            version = stored.version
        self.subjects = ()
        self._add_subjects(subjects)
        return state, version, replace and version > 0

    def _write_snapshot(self) -> None:
        snapshot = Snapshot(
            self.version, self.definition.state_version, self._codec.encode(self.state)
        )
        # Nobody waits for this one: the request only carries it through the writer.
        request = CommandRequest(None)
        request.append = Append(
            self.stream, self.version, [], snapshot=snapshot, subjects=tuple(self.subjects)
        )
        request.owner = self
        self.pending += 1
        self._writer.submit(request)

    def _decide(self, request: CommandRequest) -> None:
        if self.deleted:
            request.fail(StreamDeleted(self.stream))
            return
        definition = self.definition
        expected = self.version
        if request.expected_version is not None and request.expected_version != expected:
            request.fail(Conflict(self.stream, request.expected_version, expected))
            return
        try:
            events = definition.decide(self.state, request.command)
            if type(events) is not list and type(events) is not tuple:
                # A generator would be used up by evolve and leave nothing to
                # write: refuse anything that is not a materialised sequence.
                self._refuse_decision(
                    request,
                    f"{definition.name}.decide must return a list or tuple of events, "
                    f"got {type(events).__name__}",
                )
                return
            declared = definition.event_types
            evolve = definition.evolve
            state = self.state
            for event in events:
                if type(event) not in declared:
                    # Nothing is applied yet: self.state is still the old state.
                    self._refuse_decision(
                        request,
                        f"{definition.name}.decide returned a {type(event).__name__}, "
                        f"which is not an event of {definition.name} (its events: "
                        f"{', '.join(sorted(cls.__name__ for cls in declared))})",
                    )
                    return
                state = evolve(state, event)
            codec = self._codec
            subjects = codec.subjects_in(events)
            # Tuples, not lists: a tuple of untracked structs leaves the
            # garbage collector's lists at its first pass, while the append
            # and its events wait for the commit (which young collections
            # would otherwise promote, ~1,000 appends at a time).
            encoded = tuple(map(codec.encode_event, events))
        except (CommandRejected, InvalidKey) as exc:
            # InvalidKey: a personal field's subject field holds no usable
            # subject (e.g. empty); nothing was applied.
            request.fail(exc)
            return
        except Exception as exc:
            log.exception("handler of %s failed on %r", self.stream, request.command)
            request.fail(
                InternalError(
                    f"{definition.name} handler failed on {type(request.command).__name__}: "
                    f"{type(exc).__name__}: {exc}"
                )
            )
            self._stale = True
            return
        self.state = state
        if subjects:
            self._add_subjects(subjects)
        self.version = version = expected + len(encoded)
        every = definition.snapshot_every
        snapshot = None
        if version // every > expected // every:
            snapshot = Snapshot(version, definition.state_version, self._codec.encode(state))
        metadata = (
            Metadata(request.command_id, request.correlation_id, request.causation_id)
            if request.command_id or request.correlation_id or request.causation_id
            else _NO_METADATA
        )
        fingerprint = request.command_fingerprint() if request.command_id else None
        request.append = Append(
            self.stream,
            expected,
            encoded,
            metadata,
            snapshot,
            fingerprint,
            tuple(self.subjects) if snapshot is not None and self.subjects else (),
        )
        request.decided = events if type(events) is tuple else tuple(events)
        request.owner = self
        self.pending += 1
        self._writer.submit(request)

    def _add_subjects(self, subjects: Iterable[str]) -> None:
        """Note that the state holds personal data of ``subjects`` too."""
        known = self.subjects
        for subject in subjects:
            if subject in known:
                continue
            if type(known) is tuple:
                if len(known) < _SUBJECTS_AS_TUPLE:
                    known = (*known, subject)
                    continue
                # Many subjects: a set keeps each command's check O(1).
                known = set(known)
            assert isinstance(known, set)
            known.add(subject)
        self.subjects = known

    def _refuse_decision(self, request: CommandRequest, problem: str) -> None:
        """Fail a command whose ``decide`` returned something unusable (a bug
        in the application); nothing was applied, so the state stays."""
        log.error("%s on %r", problem, request.command)
        request.fail(InternalError(problem))


_NO_METADATA = Metadata()

_SUBJECTS_AS_TUPLE = 16
"""The most subjects an actor keeps in a tuple: checking and adding one
costs O(n) there, so more go into a set."""
