"""The group-commit writer: the only task that writes to the store.

Actors hand it appends without waiting; it commits everything queued while
the previous commit ran in ONE write transaction in a worker thread, then
answers each command directly (one task switch per command, no hop back
through the actor). In ``sync`` durability the store fsyncs before returning,
so nothing is acknowledged before it is durable.

Actors evolve their state as soon as they hand over an append, so a later
command can be decided before the earlier one is committed. If a commit
fails, every command decided on top of it is failed as well and the actors
involved reload their state from storage before deciding again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import msgspec
import trio

from motet.storage.codec import Codec
from motet.storage.errors import MotetError, StorageError
from motet.storage.records import Ack, Append
from motet.storage.store import AppendError, EventStore
from motet.storage.streams import category_of

from .committed import CommittedBatch
from .errors import InternalError
from .head_watch import HeadWatch
from .loop_waker import LoopWaker
from .request import AppendOwner, CommandRequest

__all__ = ["AppendOwner", "GroupCommitWriter", "WriterStatistics"]

log = logging.getLogger("motet.writer")


class WriterStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the writer's counters (see :meth:`GroupCommitWriter.statistics`)."""

    appends_committed: int
    commits: int
    events_appended: int
    failed_commits: int
    head_position: int
    queued: int
    snapshots: int


CommitListener = Callable[[int, int, float, int], None]
"""Called after each commit with (appends, events, seconds, head position)."""


class GroupCommitWriter:
    """Commits queued appends in batches; see the module docstring."""

    def __init__(
        self,
        store: EventStore,
        *,
        watch: HeadWatch | None = None,
        max_batch: int = 10_000,
        codec: Codec | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._store = store
        # Encrypts personal fields in the commit's worker thread (see
        # Codec.seal_appends); None writes the appends as they are.
        self._codec = codec if codec is not None and codec.has_personal else None
        # Told of every commit; projections and subscribers wait on it.
        self.watch = watch if watch is not None else HeadWatch(store.head_position)
        self._max_batch = max_batch
        # Requests whose ``append`` and ``owner`` are set (see :meth:`submit`).
        self._queue: list[CommandRequest] = []
        self._inflight: list[CommandRequest] = []
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        self.listeners: list[CommitListener] = []
        self._commits = 0
        self._failed_commits = 0
        self._appends_committed = 0
        self._events_appended = 0
        self._snapshots: dict[str, int] = {}
        # The last commit, for projections caught up with it.
        self.committed = CommittedBatch([], 0, 0.0)
        # Set while no commit is being prepared: the one in flight (if any)
        # has written its batch and only makes it durable (the store's
        # before_commit), or has ended. See yield_to_commit.
        self._prepared = trio.Event()
        self._prepared.set()
        self._waker: LoopWaker | None = None

    def __repr__(self) -> str:
        return (
            f"<GroupCommitWriter head={self.head_position} queued={len(self._queue)} "
            f"inflight={len(self._inflight)} commits={self._commits}>"
        )

    @property
    def head_position(self) -> int:
        """Position of the last committed event this process knows of."""
        return self.watch.head_position

    @property
    def limiter(self) -> trio.CapacityLimiter:
        """The limiter every write to the store must hold (one writer at a time)."""
        return self._limiter

    def statistics(self) -> WriterStatistics:
        """Counters since the writer started."""
        return WriterStatistics(
            appends_committed=self._appends_committed,
            commits=self._commits,
            events_appended=self._events_appended,
            failed_commits=self._failed_commits,
            head_position=self.head_position,
            queued=len(self._queue) + len(self._inflight),
            snapshots=sum(self._snapshots.values()),
        )

    def snapshots_by_stream_prefix(self) -> dict[str, int]:
        """Snapshots written, per aggregate type name."""
        return dict(self._snapshots)

    def submit(self, request: CommandRequest) -> None:
        """Queue ``request.append`` for the next commit (never blocks); once it
        is durable, ``request`` is answered and ``request.owner`` told.
        """
        if self._closed:
            request.fail(InternalError("the writer has stopped; the command was not committed"))
            request.owner.append_settled(False)
            return
        queue = self._queue
        queue.append(request)
        if len(queue) == 1:
            # The first of the next batch; the rest find the writer woken.
            if self._idle.is_set():
                self._idle = trio.Event()
            self._wakeup.set()

    async def wait_idle(self) -> None:
        """Wait until everything submitted so far is committed or failed."""
        while self._queue or self._inflight:
            await self._idle.wait()

    async def wait_head_beyond(self, position: int) -> None:
        """Wait until the log's head is past ``position`` (see :class:`HeadWatch`)."""
        await self.watch.wait_beyond(position)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit batches forever. Cancelling it leaves queued appends
        unanswered: call :meth:`wait_idle` first, :meth:`fail_all` after."""
        if hasattr(self._store, "before_commit"):
            self._waker = LoopWaker(trio.lowlevel.current_trio_token())
            self._store.before_commit = self._before_commit
        try:
            task_status.started()
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._queue:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                    self._inflight = batch
                    await self._commit(batch)
                    self._inflight = []
                self._idle.set()
        finally:
            if self._waker is not None:
                self._waker.close()

    async def yield_to_commit(self, timeout: float) -> None:
        """Give way to the commit being prepared: return once the writer has
        no batch waiting to start, and the commit in flight (if any) has
        written its batch and only makes it durable, or after ``timeout``
        seconds.

        For work on the event loop's thread that need not come before the
        next commit (a projection applying the previous one): done while
        the store flushes, it costs no time the commit would not take
        anyway, instead of delaying the commit that 1,000 senders wait for.
        """
        for _ in range(2):
            # A batch is queued but the writer task has not started it yet:
            # it runs in the scheduler's next turn.
            if not self._queue or self._inflight:
                break
            await trio.lowlevel.checkpoint()
        if self._inflight and not self._prepared.is_set():
            with trio.move_on_after(timeout):
                await self._prepared.wait()

    def _before_commit(self) -> None:
        """The store's ``before_commit``, in the commit's worker thread: it
        queues the wake-up and goes on into the flush (see LoopWaker)."""
        waker = self._waker
        if waker is not None:
            waker.call_soon(self._prepared.set)

    async def _commit(self, batch: list[CommandRequest]) -> None:
        started = time.perf_counter()
        timestamp = time.time()
        self._prepared = prepared = trio.Event()
        try:
            results = await trio.to_thread.run_sync(
                self._write,
                cast("list[Append]", [request.append for request in batch]),
                timestamp,
                limiter=self._limiter,
            )
        except Exception as exc:
            prepared.set()
            self._failed_commits += 1
            log.error("commit of %d appends failed: %s", len(batch), exc)
            if not isinstance(exc, MotetError):
                exc = StorageError(f"commit failed unexpectedly: {exc!r}")
            self._fail_batch(batch, exc)
            return
        prepared.set()
        seconds = time.perf_counter() - started
        answered_at = trio.current_time()
        events = 0
        appends = 0
        committed: list[CommandRequest] = []
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):  # this append alone was refused
                request.fail(result)
                request.owner.append_settled(False)
                continue
            append = request.append
            assert append is not None
            committed.append(request)
            appends += 1
            events += len(append.events)
            if append.snapshot is not None:
                kind = category_of(append.stream)
                self._snapshots[kind] = self._snapshots.get(kind, 0) + 1
            request.answered_at = answered_at
            request.succeed(result)
            request.owner.append_settled(True)
        self._commits += 1
        self._appends_committed += appends
        self._events_appended += events
        if self._store.blocking:
            # No store call on the event loop's thread: the batch's Acks say
            # which positions are committed (commits of other processes reach
            # the watch through serve_commit_watch).
            head = max(
                (r.position for r in results if isinstance(r, Ack)),
                default=self.watch.head_position,
            )
        else:
            head = self._store.head_position
        self.committed = CommittedBatch(committed, events, timestamp)
        self.watch.advance(head, timestamp)
        for listener in self.listeners:
            listener(len(batch), events, seconds, head)

    def _write(self, appends: list[Append], timestamp: float) -> list[Ack | AppendError]:
        """One commit, in the worker thread: encrypt, then append with the
        keys that encryption made or a forget deletes, in one transaction."""
        codec = self._codec
        if codec is None:
            return self._store.append_batch(appends, timestamp)
        sealed, keys = codec.seal_appends(appends)
        if not keys:
            return self._store.append_batch(sealed, timestamp)
        results = self._store.append_batch(sealed, timestamp, keys)
        # Only now: a key is used for later batches once it is durable.
        codec.keyring.committed(keys)
        return results

    def _fail_batch(self, batch: list[CommandRequest], error: BaseException) -> None:
        """Fail a batch, and every queued append decided on top of it."""
        owners = {id(request.owner) for request in batch}
        dependent = [r for r in self._queue if id(r.owner) in owners]
        self._queue = [r for r in self._queue if id(r.owner) not in owners]
        for request in batch + dependent:
            request.fail(error)
            request.owner.append_settled(False)

    def fail_all(self, error: BaseException) -> None:
        """Stop taking appends and fail every one not yet committed."""
        self._closed = True
        pending, self._queue = self._inflight + self._queue, []
        self._inflight = []
        for request in pending:
            request.fail(error)
            request.owner.append_settled(False)
        self._idle.set()
