"""Projections: actors that fold the log into in-memory read models.

A projection starts from its saved read-model snapshot (or from nothing),
catches up by reading the log in batches, then follows each commit as the
writer announces it. Events are applied strictly in position order, each
exactly once. A handler that raises stops the projection at that position:
it keeps answering queries from its last state, reports the failure, and
waits for :meth:`ProjectionActor.retry` or :meth:`ProjectionActor.skip`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import trio

from motet.storage.codec import Codec, tag_of
from motet.storage.errors import CodecError, MotetError
from motet.storage.records import Checkpoint, RecordedEvent, StoredEvent
from motet.storage.status import ProjectionState, ProjectionStatus
from motet.storage.store import EventStore

from .store_calls import StoreCalls
from .writer import GroupCommitWriter

__all__ = [
    "Projection",
    "ProjectionActor",
    "ProjectionFailed",
    "ProjectionStatus",
    "Query",
]

log = logging.getLogger("motet.projections")

_GIVE_WAY_SECONDS = 0.05
"""How long a projection near the head waits at most for the writer's next
commit to reach its durable step before applying (see
:meth:`GroupCommitWriter.yield_to_commit`): bounds the lag it adds when a
commit is slow to prepare (e.g. waiting for another node's lock)."""

M = TypeVar("M")
Q = TypeVar("Q")

Handler = Callable[[Any, Any, RecordedEvent], None]
"""``handler(model, event, record)``: apply one decoded event to the model;
``record`` is the :class:`~motet.storage.records.RecordedEvent` (its
position, stream, version, timestamp and metadata; ``record.data`` is
``event``)."""


class ProjectionFailed(MotetError):
    """The projection serving a request stopped on an event its handler could
    not apply. The application's fault: fix the handler, then retry or skip."""


@dataclass(frozen=True)
class Projection(Generic[M]):
    """A named read model and the handlers that keep it up to date.

    ``initial()`` makes an empty model; ``handlers`` map event types to
    ``handler(model, event, record)``. With ``dump`` and ``load`` the model
    is saved with its position every ``snapshot_every`` events (and when the
    engine closes) as ``snapshot_type``, so a restart resumes there instead of
    replaying the whole log. Bump ``schema_version`` when the model's shape
    changes: older snapshots are then ignored and the model is rebuilt.
    """

    name: str
    initial: Callable[[], M]
    handlers: Mapping[type, Handler]
    schema_version: int = 1
    snapshot_type: Any = None
    dump: Callable[[M], Any] | None = None
    load: Callable[[Any], M] | None = None
    snapshot_every: int = 100_000

    def __post_init__(self) -> None:
        if not self.name or "\x00" in self.name:
            raise ValueError(f"projection name must be non-empty without NUL, got {self.name!r}")
        if (self.dump is None) != (self.load is None) or (
            self.dump is not None and self.snapshot_type is None
        ):
            raise ValueError(
                f"projection {self.name!r}: give dump, load and snapshot_type together, or none"
            )


@dataclass(frozen=True)
class Query(Generic[M, Q]):
    """A query type answered by ``handler(model, query)`` from one projection's
    model. The handler raises :class:`~motet.actors.errors.NotFound` for a missing
    entity and must not change the model."""

    type: type[Q]
    projection: str
    handler: Callable[[M, Q], Any]


class ProjectionActor(Generic[M]):
    """Runs one :class:`Projection`; see the module docstring."""

    def __init__(
        self,
        definition: Projection[M],
        *,
        store: EventStore,
        codec: Codec,
        writer: GroupCommitWriter,
        calls: StoreCalls | None = None,
        batch_size: int = 2_000,
        checkpoints: bool = True,
    ) -> None:
        self.definition = definition
        # False in a reader process: the store is the writer's, read-only here,
        # so the model lives in memory only.
        self.checkpoints = checkpoints
        self.name = definition.name
        self._store = store
        self._calls = calls if calls is not None else StoreCalls(store)
        self._codec = codec
        self._writer = writer
        self._batch_size = batch_size
        self._handlers: dict[str, Handler] = {
            tag_of(event): handler for event, handler in definition.handlers.items()
        }
        self._snapshot_decoder: msgspec.msgpack.Decoder[Any] | None = (
            msgspec.msgpack.Decoder(definition.snapshot_type)
            if definition.snapshot_type is not None
            else None
        )
        self.model: M = definition.initial()
        self.position = 0
        self.saved_position = 0
        self.error: str | None = None
        self.failed_position: int | None = None
        self.rebuilding = False
        self.events_applied = 0
        self._paused = False
        self._advanced = trio.Event()
        self._resume = trio.Event()

    def __repr__(self) -> str:
        state = "failed" if self.error else "paused" if self._paused else "running"
        return (
            f"<ProjectionActor {self.name} {state} position={self.position} "
            f"head={self._writer.head_position}>"
        )

    # -- state --------------------------------------------------------------

    def lag(self, now: float | None = None) -> tuple[int, float]:
        """(events, seconds) behind the log's head. Seconds is the age of the
        oldest committed event not applied yet, 0.0 when caught up."""
        behind = self._writer.head_position - self.position
        if behind <= 0:
            return 0, 0.0
        now = time.time() if now is None else now
        if self._calls.blocking:
            # No store read on the event loop's thread: the head watch knows
            # when the commit holding the next position was seen.
            seen = self._writer.watch.committed_at(self.position + 1)
            return behind, 0.0 if seen is None else max(0.0, now - seen)
        try:
            oldest = self._store.read_all(self.position, 1)
        except CodecError:
            # The next record is unreadable (the projection has stopped on it
            # and says so in its status): its age is unknown.
            return behind, 0.0
        if not oldest:
            return behind, 0.0
        return behind, max(0.0, now - oldest[0].timestamp)

    def status(self) -> ProjectionStatus:
        """A snapshot of the projection's state and lag."""
        events, seconds = self.lag()
        state: ProjectionState = (
            "failed"
            if self.error
            else "rebuilding"
            if self.rebuilding
            else "paused"
            if self._paused
            else "running"
        )
        return ProjectionStatus(
            name=self.name,
            state=state,
            position=self.position,
            lag_events=events,
            lag_seconds=seconds,
            error=self.error,
            failed_position=self.failed_position,
        )

    async def wait_for(self, position: int) -> None:
        """Wait until the projection has applied ``position``.

        Raises :class:`ProjectionFailed` when it is stopped on an earlier event.
        """
        while self.position < position:
            if self.error is not None:
                raise ProjectionFailed(
                    f"projection {self.name!r} stopped at position {self.failed_position}: "
                    f"{self.error}"
                )
            await self._advanced.wait()

    # -- control ------------------------------------------------------------

    def pause(self) -> None:
        """Stop applying events until :meth:`resume` (for maintenance and tests)."""
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._paused = False
        self._wake()

    def retry(self) -> None:
        """Try the failed event again (after the handler was fixed)."""
        self.error = None
        self.failed_position = None
        self._wake()

    def skip(self) -> None:
        """Give up on the failed event: mark it applied and go on after it."""
        if self.failed_position is not None:
            self.position = self.failed_position
        self.retry()

    def _wake(self) -> None:
        self._resume.set()
        self._resume = trio.Event()
        self._advanced.set()
        self._advanced = trio.Event()

    # -- running ------------------------------------------------------------

    async def restore(self) -> None:
        """Load the saved read-model snapshot, if it is usable (else start empty)."""
        definition = self.definition
        try:
            checkpoint, opened = await self._calls.run(self._read_checkpoint)
        except CodecError as exc:
            # A checkpoint is derived data: an unreadable one costs a replay.
            log.warning("projection %s: %s; rebuilding from the log", self.name, exc)
            return
        if checkpoint is None or checkpoint.model is None or self._snapshot_decoder is None:
            return
        assert definition.load is not None
        if checkpoint.schema_version != definition.schema_version:
            log.warning(
                "projection %s: snapshot has schema %d, code has %d; rebuilding from the log",
                self.name,
                checkpoint.schema_version,
                definition.schema_version,
            )
            return
        if checkpoint.position > self._writer.head_position:
            log.warning(
                "projection %s: snapshot at position %d is past the log's head %d; rebuilding",
                self.name,
                checkpoint.position,
                self._writer.head_position,
            )
            return
        if opened is None:
            log.warning(
                "projection %s: snapshot sealed under a key replaced since (a subject was "
                "forgotten); rebuilding from the log",
                self.name,
            )
            return
        try:
            model = definition.load(self._snapshot_decoder.decode(opened[0]))
        except Exception as exc:
            log.warning("projection %s: unreadable snapshot (%s); rebuilding", self.name, exc)
            return
        self.model = model
        self.position = self.saved_position = checkpoint.position

    def _read_checkpoint(self) -> tuple[Checkpoint | None, tuple[bytes, list[str]] | None]:
        """The saved checkpoint and its model unsealed (``None`` when its key
        is gone), in one call: unsealing may ask the store for the key."""
        checkpoint = self._store.get_checkpoint(self.name)
        if checkpoint is None or checkpoint.model is None:
            return checkpoint, None
        return checkpoint, self._codec.open_sealed(self.name, checkpoint.model)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Restore, then apply the log forever (until cancelled)."""
        await self.restore()
        task_status.started()
        writer = self._writer
        read_all = self._store.read_all
        calls = self._calls
        blocking = calls.blocking
        while True:
            if self._paused or self.error is not None:
                await self._resume.wait()
                continue
            head = writer.head_position
            if self.position >= head:
                await writer.wait_head_beyond(self.position)
                continue
            events: Sequence[StoredEvent] | Sequence[RecordedEvent]
            records: Sequence[RecordedEvent] | None = None
            near = head - self.position <= self._batch_size
            if near:
                # Applied while the next commit flushes rather than before it
                # starts; then, right behind the last commit, as decided.
                await writer.yield_to_commit(_GIVE_WAY_SECONDS)
                if self._paused or self.error is not None:
                    continue
                records = writer.committed.records_after(self.position)
            try:
                if records is not None:
                    events = records
                elif blocking or not near:
                    # Far behind: decode the envelopes off the event loop
                    # (and a blocking store is never called on it).
                    events = await calls.run(
                        self._codec.read_warm,
                        read_all,
                        self.position,
                        self._batch_size,
                        offload=True,
                    )
                    if self._paused or self.error is not None:
                        continue
                else:
                    # Close to the head: read and apply without yielding.
                    events = read_all(self.position, self._batch_size)
            except CodecError as exc:
                # The store returns every event before an unreadable record and
                # raises on the call that starts with it: stop right there, as
                # for a failing handler, instead of taking the engine down.
                failed = exc.position if exc.position is not None else self.position + 1
                self._stop(failed, f"{type(exc).__name__}: {exc}")
                continue
            if not events:
                # Every position up to the head seen before the read was
                # removed on purpose (a hard delete, retention): the head is
                # committed, so nothing up to it can still appear.
                self.position = max(self.position, head)
                self._advanced.set()
                self._advanced = trio.Event()
                continue
            self._apply(events, decoded=events is records)
            if (
                self.definition.dump is not None
                and self.position - self.saved_position >= self.definition.snapshot_every
            ):
                await self.save()

    def _apply(
        self, events: Sequence[StoredEvent] | Sequence[RecordedEvent], *, decoded: bool = False
    ) -> None:
        before = self.position
        position, error, failed = self._fold(self.model, events, before, decoded=decoded)
        # Counted by event, not by position: positions may jump over removed events.
        if events[0].position > before and events[-1].position <= position:
            self.events_applied += len(events)  # the usual case: every one applied
        else:
            self.events_applied += sum(1 for e in events if before < e.position <= position)
        self.position = position
        if failed is not None:
            assert error is not None
            self._stop(failed, error)
            return
        self._advanced.set()
        self._advanced = trio.Event()

    def _stop(self, failed: int, error: str) -> None:
        """Stop before position ``failed`` until retried or skipped."""
        self.error = error
        self.failed_position = failed
        log.error("projection %s stopped at position %d: %s", self.name, failed, error)
        self._advanced.set()
        self._advanced = trio.Event()

    def _fold(
        self,
        model: M,
        events: Sequence[StoredEvent] | Sequence[RecordedEvent],
        after: int,
        *,
        decoded: bool = False,
    ) -> tuple[int, str | None, int | None]:
        """Apply ``events`` (records read from the store, or ``decoded``
        ones) past ``after`` to ``model``. Returns the last position
        applied and, on a failure, the error and the failing position."""
        handlers = self._handlers
        decode = None if decoded else self._codec.decode_record
        position = after
        for stored in events:
            if stored.position <= position:
                continue
            handler = handlers.get(stored.type)
            if handler is not None:
                try:
                    # No cast() calls here: this runs once per event applied.
                    record: RecordedEvent = stored if decode is None else decode(stored)  # type: ignore[assignment,arg-type]
                    handler(model, record.data, record)
                except Exception as exc:
                    return position, f"{type(exc).__name__}: {exc}", stored.position
            position = stored.position
        return position, None, None

    async def save(self, *, force: bool = False) -> None:
        """Save the model and its position now (a no-op without ``dump``, and
        for a projection made with ``checkpoints=False``); ``force`` saves it
        even when nothing changed since the last save.

        When the app declares personal data the model is sealed (see
        :meth:`~motet.storage.codec.Codec.seal_model`), and a model from
        before the last erasure is not saved at all."""
        dump = self.definition.dump
        if dump is None or not self.checkpoints:
            return
        if self.position == self.saved_position and not force:
            return
        position = self.position
        data = self._codec.encode(dump(self.model))
        saved = await trio.to_thread.run_sync(
            self._put_checkpoint, position, data, limiter=self._writer.limiter
        )
        if saved:
            self.saved_position = position

    def _put_checkpoint(self, position: int, data: bytes) -> bool:
        """Seal and store one checkpoint, in a worker thread; False when the
        model may still hold a forgotten subject's data and was not saved."""
        sealed = self._codec.seal_model(self.name, data, position)
        if sealed is None:
            return False
        checkpoint = Checkpoint(position, self.definition.schema_version, sealed)
        self._store.put_checkpoint(self.name, checkpoint)
        return True

    async def rebuild(self) -> None:
        """Fold a new model from position 0 while the current one keeps
        answering queries; swap it in once it has caught up.

        Raises :class:`ProjectionFailed` (keeping the current model) when a
        handler fails during the rebuild.
        """
        model = self.definition.initial()
        position = 0
        self.rebuilding = True
        try:
            while position < max(self.position, self._writer.head_position if self.error else 0):
                events = await self._calls.run(
                    self._codec.read_warm,
                    self._store.read_all,
                    position,
                    self._batch_size,
                    offload=True,
                )
                if not events:
                    break
                position, error, failed = self._fold(model, events, position)
                if failed is not None:
                    raise ProjectionFailed(
                        f"rebuilding projection {self.name!r} failed at position {failed}: {error}"
                    )
        finally:
            self.rebuilding = False
        self.model = model
        self.position = max(position, self.position)
        self.error = None
        self.failed_position = None
        self._wake()
