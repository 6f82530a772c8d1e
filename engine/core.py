"""The engine: storage, writer, actors and mediator wired together."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal

import trio

from motet.actors.consumer_group import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PREFETCH,
    EventFilter,
    Groups,
    Member,
)
from motet.actors.errors import EngineClosed, QueryTimeout, Unavailable, UnknownMessageType
from motet.actors.head_watch import HeadWatch, serve_commit_watch
from motet.actors.process_manager import ProcessManagerActor
from motet.actors.projection import ProjectionActor, Query
from motet.actors.registry import Registry
from motet.actors.request import CommandRequest
from motet.actors.store_calls import StoreCalls
from motet.actors.writer import GroupCommitWriter
from motet.storage.codec import Codec
from motet.storage.errors import StorageError
from motet.storage.idempotency import retried_ack, stored_ack
from motet.storage.memory_store import MemoryStore
from motet.storage.personal import Forgotten
from motet.storage.records import Ack, RecordedEvent, StoredEvent, StreamDeletion
from motet.storage.retention import RetentionResult, retain_stream
from motet.storage.store import (
    Durability,
    EventStore,
    check_aggregate_id,
    check_command_id,
    check_stream_id,
)
from motet.storage.streams import category_of

from .app import App
from .mediator import Mediator
from .metrics import DEFAULT_METRICS_MAX_CONNECTIONS, EngineMetrics, outcome_of
from .node import LOCAL, WAIT, Node
from .status import EngineStatistics, EngineStatus, message_schemas
from .testing.clock import now

__all__ = [
    "ROLES",
    "Ack",
    "Engine",
    "EngineStatistics",
    "EngineStatus",
    "Forgotten",
    "Role",
    "open_engine",
]

log = logging.getLogger("motet.engine")

_READ_BATCH = 1000
_SCAN_LIMIT = 100_000  # log records one filtered read looks at, at most

Role = Literal["writer", "reader"]
"""What an engine does with its store: a ``writer`` takes commands and appends;
a ``reader`` follows a log another process writes and serves reads only."""

ROLES: tuple[Role, ...] = ("writer", "reader")


def _check_role(role: object) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")


class Engine:
    """A running Motet engine; get one from :func:`open_engine`."""

    def __init__(
        self,
        store: EventStore,
        app: App,
        *,
        mailbox_size: int,
        max_actors: int,
        passivate_after: float,
        metrics: bool = True,
        max_batch: int = 10_000,
        role: Role = "writer",
        node_id: str | None = None,
        advertise: str = "",
        lease_ttl: float = 10.0,
        peer_token: str | None = None,
        peer_ssl_context: Any = None,
        group_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        _check_role(role)
        # The run's clock, read once per command: trio.current_time() would
        # look the clock up through two more calls each time.
        self._now = trio.lowlevel.current_clock().current_time
        self.app = app
        self.store = store
        self.role: Role = role
        self.codec: Codec = app.codec(keys=store)
        self.mediator = Mediator(app, self.send)
        self._calls = calls = StoreCalls(store)
        self.writer = GroupCommitWriter(
            store, watch=HeadWatch(store.head_position), max_batch=max_batch, codec=self.codec
        )
        self.registry = Registry(
            store=store,
            codec=self.codec,
            writer=self.writer,
            mailbox_size=mailbox_size,
            max_actors=max_actors,
            passivate_after=passivate_after,
            calls=calls,
        )
        self.projections: dict[str, ProjectionActor[Any]] = {
            projection.name: ProjectionActor(
                projection,
                store=store,
                codec=self.codec,
                writer=self.writer,
                calls=calls,
                checkpoints=role == "writer",
            )
            for projection in app.projections
        }
        # A reader sends no commands, so it runs no process managers: the
        # writer of its store does. Their timers are due on the clock that
        # ``decide`` reads (:func:`~.testing.clock.now`), which tests control.
        self.process_managers: dict[str, ProcessManagerActor[Any]] = (
            {
                manager.name: ProcessManagerActor(
                    manager,
                    store=store,
                    codec=self.codec,
                    writer=self.writer,
                    send=self.send,
                    clock=now,
                    calls=calls,
                )
                for manager in app.process_managers
            }
            if role == "writer"
            else {}
        )
        self.node: Node | None = None
        """This engine as a node of a partitioned store (with ``node_id``)."""
        if node_id is not None:
            if not callable(getattr(store, "heartbeat", None)):
                raise ValueError(
                    f"node_id needs a store shared by nodes (a postgresql:// URL), got {store!r}"
                )
            self.node = Node(
                store,  # type: ignore[arg-type]
                node_id,
                role=role,
                advertise=advertise,
                lease_ttl=lease_ttl,
                peer_token=peer_token,
                peer_ssl_context=peer_ssl_context,
                stop_actors=self.registry.stop_matching,
            )
        elif advertise:
            raise ValueError("advertise needs a node_id")
        self.groups = Groups(
            store,
            codec=self.codec,
            calls=calls,
            watch=self.writer.watch,
            write_limiter=self.writer.limiter,
            max_attempts=group_max_attempts,
        )
        self._queries: dict[type, Query[Any, Any]] = {query.type: query for query in app.queries}
        self._command_types = app.command_types()
        self._command_tags = {command: tag for tag, command in self._command_types.items()}
        self._command_names = sorted(self._command_types)
        self._query_names = sorted(app.query_types())
        self._schemas: dict[str, Any] | None = None
        self.metrics = EngineMetrics(self) if metrics else None
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self._closing = False
        # Set once the engine's tasks stop: reads, queries and subscriptions
        # are refused from then on, and the waiting ones end (their scopes).
        self._closed = False
        self._waits: set[trio.CancelScope] = set()
        self._outstanding = 0
        self._quiet = trio.Event()
        self._quiet.set()
        self._by_command_id: dict[str, CommandRequest] = {}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else "running"
        if self.role != "writer":
            state += f" {self.role}"
        return f"<Engine {state} head={self.writer.head_position} store={self.store!r}>"

    @property
    def head_position(self) -> int:
        """Position of the last committed event this engine knows of (on a
        shared store, including those other processes committed)."""
        return self.writer.head_position

    def statistics(self) -> EngineStatistics:
        """Counters of the writer and the registry, as a frozen snapshot."""
        writer = self.writer.statistics()
        registry = self.registry.statistics()
        return EngineStatistics(
            head_position=writer.head_position,
            commits=writer.commits,
            commands_committed=writer.appends_committed,
            events_appended=writer.events_appended,
            failed_commits=writer.failed_commits,
            snapshots=writer.snapshots,
            actors=registry.actors,
            actors_started=registry.started,
            actors_passivated=registry.passivated,
            actors_evicted=registry.evicted,
            mailbox_max=registry.mailbox_max,
        )

    def status(self) -> EngineStatus:
        """The head position, every projection's position, lag (events and
        seconds) and state (``running``/``paused``/``failed``/``rebuilding`` with the
        error), and the live actors."""
        # O(aggregate types + projections): never walks the live actors, so a
        # flood of status requests cannot stall the event loop.
        return EngineStatus(
            head_position=self.writer.head_position,
            projections=[actor.status() for actor in self.projections.values()],
            process_managers=[actor.status() for actor in self.process_managers.values()],
            actors=self.registry.actors,
            actors_by_aggregate=self.registry.live_by_aggregate(),
            durability=self.store.durability,
            commands=list(self._command_names),
            queries=list(self._query_names),
            schemas=self._message_schemas(),
            node=None if self.node is None else self.node.status(),
            nodes=[] if self.node is None else self.node.nodes(),
            groups=self.groups.status(),
        )

    def _message_schemas(self) -> dict[str, Any]:
        # Built on the first status request: most engines are never asked.
        if self._schemas is None:
            self._schemas = message_schemas(self._command_types, self.app.query_types())
        return self._schemas

    def projection(self, name: str) -> ProjectionActor[Any]:
        """The projection called ``name``, to pause, resume, retry, skip or
        rebuild it. Raises ``KeyError`` naming the known projections."""
        try:
            return self.projections[name]
        except KeyError:
            raise KeyError(
                f"no projection {name!r}; known: {', '.join(sorted(self.projections)) or 'none'}"
            ) from None

    def process_manager(self, name: str) -> ProcessManagerActor[Any]:
        """The process manager called ``name`` (its status, :meth:`wake
        <motet.actors.process_manager.ProcessManagerActor.wake>`, ``retry``).
        Raises ``KeyError`` naming the known ones (none in a reader)."""
        try:
            return self.process_managers[name]
        except KeyError:
            known = ", ".join(sorted(self.process_managers)) or "none"
            raise KeyError(f"no process manager {name!r}; known: {known}") from None

    async def ask(self, query: Any, *, after: int | None = None, timeout: float = 5.0) -> Any:
        """Answer ``query`` from the read model of the projection serving it.

        With ``after=position`` (e.g. an Ack's ``position``) it first waits,
        up to ``timeout`` seconds, until that projection has applied the
        position, so the answer includes that write. Raises
        :class:`QueryTimeout` past the timeout, :class:`ProjectionFailed` when
        the projection is stopped before the position, :class:`NotFound` for
        a missing entity, :class:`UnknownMessageType` for an unregistered
        query type, ``ValueError`` for invalid arguments and
        :class:`EngineClosed` once the engine has closed (also while waiting).
        """
        self._check_open()
        entry = self._queries.get(type(query))
        if entry is None:
            raise UnknownMessageType(
                f"no query handler for messages of type {type(query).__qualname__}"
            )
        projection = self.projections[entry.projection]
        if after is not None:
            if not isinstance(after, int) or after < 0:
                raise ValueError(f"after must be a position >= 0, got {after!r}")
            if not timeout >= 0:
                raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
            if projection.position < after:
                with trio.move_on_after(timeout) as scope:
                    self._waits.add(scope)
                    try:
                        await projection.wait_for(after)
                    finally:
                        self._waits.discard(scope)
                self._check_open()
                if projection.position < after:
                    raise QueryTimeout(
                        f"projection {projection.name!r} did not reach position {after} "
                        f"within {timeout} s (it is at {projection.position}, "
                        f"the log's head is {self.writer.head_position})"
                    )
        return entry.handler(projection.model, query)

    async def wait_for(self, position: int, *, timeout: float = 5.0) -> None:
        """Wait until every projection has applied ``position`` (e.g. an Ack's
        ``position``), up to ``timeout`` seconds in all. Raises
        :class:`QueryTimeout` naming the projection still behind,
        :class:`ProjectionFailed` when one is stopped before the position, and
        ``ValueError`` for invalid arguments.
        """
        if not isinstance(position, int) or position < 0:
            raise ValueError(f"position must be >= 0, got {position!r}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
        with trio.move_on_after(timeout):
            for projection in self.projections.values():
                await projection.wait_for(position)
        for projection in self.projections.values():
            if projection.position < position:
                raise QueryTimeout(
                    f"projection {projection.name!r} did not reach position {position} "
                    f"within {timeout} s (it is at {projection.position}, "
                    f"the log's head is {self.writer.head_position})"
                )

    async def send(
        self,
        command: Any,
        *,
        command_id: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Ack:
        """Run ``command`` on its aggregate and return the :class:`Ack` once its
        events are committed (durably, in ``sync`` mode).

        A retry with the same ``command_id`` returns the first attempt's Ack
        and appends nothing. ``expected_version`` makes the command fail with
        :class:`Conflict` unless the aggregate is at that version.
        ``correlation_id`` and ``causation_id`` (strings) are stored in the
        metadata of the events the command produces, and come back in
        :meth:`read_stream` and :meth:`subscribe`.

        Raises :class:`CommandRejected` (the domain refused it),
        :class:`Conflict`, :class:`Overloaded` (mailbox full: nothing ran),
        :class:`UnknownMessageType`, ``ValueError`` (bad id or arguments),
        :class:`InternalError` (a handler bug) or :class:`StorageError`.
        Cancelling the call does not cancel the command: it may still commit;
        retry with the same ``command_id`` to find out.
        """
        waiting = self._accept(command, command_id, expected_version, correlation_id, causation_id)
        if isinstance(waiting, Ack):
            return waiting
        try:
            # Parked here rather than through waiting.wait_done(): no
            # coroutine of its own per command (see CommandRequest.parked).
            if waiting.park(trio.lowlevel.current_task()):
                await waiting.parked()
            else:
                await waiting.wait_done()
        finally:
            self._complete(waiting, command)
        if waiting.error is not None:
            raise waiting.error
        return waiting.ack  # type: ignore[return-value]

    def submit(
        self,
        command: Any,
        on_done: Callable[[Ack | None, BaseException | None], None],
        *,
        command_id: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> None:
        """Hand ``command`` to its aggregate without waiting for it; once it
        finishes, ``on_done(ack, None)`` or ``on_done(None, error)`` is called
        with what :meth:`send` would return or raise.

        For servers that answer many pipelined commands without a task each.
        ``on_done`` runs in the task that finishes the command (possibly this
        one, before ``submit`` returns), so it must neither block nor raise.
        Raises at once what stops the command from being accepted
        (:class:`Overloaded`, :class:`UnknownMessageType`, ``ValueError``,
        :class:`EngineClosed`); ``on_done`` is then not called.
        """
        waiting = self._accept(command, command_id, expected_version, correlation_id, causation_id)
        if isinstance(waiting, Ack):
            on_done(waiting, None)
            return

        def finished(request: CommandRequest) -> None:
            self._complete(request, command)
            on_done(request.ack, request.error)

        waiting.add_done_callback(finished)

    async def forget(self, subject: str, *, timeout: float = 10.0) -> Forgotten:
        """Erase the personal data of ``subject`` by crypto-shredding: delete
        its key and append :class:`~motet.storage.personal.SubjectForgotten`
        to stream ``Subject-<subject>``, in one durable transaction. From
        then on its personal fields decode as their redacted value
        everywhere; every other field, and the log's positions, stay.

        Live actors holding the subject's data reload; snapshots holding it
        become unreadable (and are rebuilt); once the projections have
        applied the event (waiting at most ``timeout`` seconds), saved read
        models are sealed under a new key. Forgetting a subject again is
        harmless (the result says ``already_forgotten``).

        Raises ``ValueError`` (:class:`~motet.storage.errors.InvalidKey`)
        for a subject that cannot be one, :class:`Unavailable` on a reader,
        :class:`EngineClosed` once closing, and :class:`StorageError`.
        Cancelling it does not cancel the erasure: it may still commit.
        """
        from .forgetting import forget  # imported here: most engines never forget

        return await forget(self, subject, timeout=timeout)

    def count_refused(self, command_type: str, error: BaseException) -> None:
        """Count, in ``motet_commands_total``, a command refused before it
        could be built (e.g. its data did not decode). Type names the app
        does not know are counted as ``unknown``, so garbage from clients
        cannot create label values without bound."""
        if self.metrics is not None:
            known = command_type if command_type in self._command_types else "unknown"
            self.metrics.command_done(known, outcome_of(error), None)

    # -- the one command path: accept, then complete ------------------------

    def _accept(
        self,
        command: Any,
        command_id: str | None,
        expected_version: int | None,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> CommandRequest | Ack:
        """Validate and route a command and hand it to its actor, for
        :meth:`send` and :meth:`submit` alike. Returns the request to wait
        for (counted as outstanding until :meth:`_complete`), or the Ack of
        an earlier run of the same command id (counted here). A refusal is
        counted here and raised."""
        started = self._now()
        try:
            waiting = self._route(
                command, command_id, expected_version, correlation_id, causation_id, started
            )
        except BaseException as exc:
            self._count(command, exc, started)
            raise
        if isinstance(waiting, Ack):
            self._count(command, None, started)
            return waiting
        if self._outstanding == 0:
            self._quiet = trio.Event()
        self._outstanding += 1
        return waiting

    def _complete(self, request: CommandRequest, command: Any) -> None:
        """The sender of an accepted ``request`` stops waiting: count its
        outcome if it has one (a sender cancelled before the answer counts
        nothing) and settle it."""
        if request.done:
            self._count(command, request.error, request.received_at, request.answered_at)
        self._settle(request)

    def _count(
        self,
        command: Any,
        error: BaseException | None,
        started: float,
        answered_at: float = 0.0,
    ) -> None:
        """The one place commands are counted in the metrics: the duration
        runs from ``started`` to ``answered_at`` (the commit that answered
        it, read once per commit by the writer) or, without one, to now."""
        if self.metrics is None:
            return
        seconds = (answered_at or self._now()) - started
        if error is None:
            self.metrics.command_ok(self._command_type(command), seconds)
        else:
            self.metrics.command_done(self._command_type(command), outcome_of(error), seconds)

    def _command_type(self, command: Any) -> str:
        return self._command_tags.get(type(command)) or type(command).__name__

    def _route(
        self,
        command: Any,
        command_id: str | None,
        expected_version: int | None,
        correlation_id: str | None,
        causation_id: str | None,
        started: float,
    ) -> CommandRequest | Ack:
        if self._closing:
            raise EngineClosed("the engine is closing and takes no more commands")
        if self.role == "reader":
            raise Unavailable(
                f"this engine has the role 'reader' and takes no commands, got "
                f"{self._command_type(command)}: send commands to the 'writer' of its store"
            )
        aggregate, aggregate_id = self.mediator.route(command)
        if expected_version is not None and (
            type(expected_version) is not int or expected_version < 0
        ):
            raise ValueError(f"expected_version must be an int >= 0, got {expected_version!r}")
        if correlation_id is not None and type(correlation_id) is not str:
            raise ValueError(f"correlation_id must be a string or None, got {correlation_id!r}")
        if causation_id is not None and type(causation_id) is not str:
            raise ValueError(f"causation_id must be a string or None, got {causation_id!r}")
        request = CommandRequest(
            command, command_id, expected_version, correlation_id, causation_id, started
        )
        node = self.node
        where = LOCAL
        if node is not None:
            # Checked here, before a hop to another node, like the owner would.
            check_aggregate_id(aggregate.name, aggregate_id)
            partition, where = node.route(aggregate.stream_of(aggregate_id))
        if command_id is not None:
            check_command_id(command_id)
            stream = aggregate.stream_of(aggregate_id)
            fingerprint = request.command_fingerprint()
            earlier = self._by_command_id.get(command_id)
            if earlier is not None:
                first, first_id = self.mediator.route(earlier.command)
                first_ack = Ack(first.stream_of(first_id), 0, 0)
                first_print = earlier.command_fingerprint()
                retried_ack(command_id, first_ack, first_print, stream, fingerprint)
                return earlier
            if self._calls.blocking:
                # Not on the event loop's thread: the actor asks the store.
                request.lookup_command_id = True
            else:
                ack = stored_ack(self.store, command_id)
                if ack is not None:
                    return retried_ack(command_id, ack, None, stream, fingerprint)
        if node is None:
            self.registry.tell(aggregate, aggregate_id, request, started)
        elif where == LOCAL:
            self.registry.tell(aggregate, aggregate_id, request, started)
            node.track(partition, request)
        elif where == WAIT:

            def run_here() -> None:
                self.registry.tell(aggregate, aggregate_id, request)
                node.track(partition, request)

            node.park(partition, aggregate.stream_of(aggregate_id), request, run_here)
        else:
            node.forward(where, request)
        if command_id is not None:
            self._by_command_id[command_id] = request
        return request

    def _settle(self, request: CommandRequest) -> None:
        """Forget a request whose sender stopped waiting; the engine drains
        the outstanding ones before it closes."""
        if request.done:
            if request.command_id is not None:
                self._forget_command_id(request)
        else:
            # The sender was cancelled but the command may still commit: until
            # it is answered, a retry with its command id must wait for it, not
            # run it a second time (afterwards the store has its Ack).
            request.add_done_callback(self._forget_command_id)
        self._outstanding -= 1
        if self._outstanding == 0:
            self._quiet.set()

    def _forget_command_id(self, request: CommandRequest) -> None:
        command_id = request.command_id
        if command_id is not None and self._by_command_id.get(command_id) is request:
            del self._by_command_id[command_id]

    async def read_stream(
        self, stream: str, from_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        """The events of ``stream`` with a version greater than ``from_version``
        (0: the whole stream), oldest first, at most ``limit`` of them (to read
        a long stream page by page); an unknown stream gives ``[]``. Raises
        :class:`EngineClosed` once the engine has closed."""
        self._check_open()
        check_stream_id(stream)
        stored = await self._calls.run(
            self.codec.read_warm, self.store.read_stream, stream, from_version, limit, offload=True
        )
        decode = self.codec.decode_record
        return [decode(event) for event in stored]

    async def stream_deletion(self, stream: str) -> StreamDeletion | None:
        """What was deleted or removed of ``stream`` (``None``: nothing), e.g.
        to tell a deleted stream from an empty one. Raises
        :class:`EngineClosed` once the engine has closed."""
        self._check_open()
        check_stream_id(stream)
        return await self._calls.run(self.store.stream_deletion, stream)

    async def delete_stream(self, stream: str, *, hard: bool = False) -> StreamDeletion:
        """Delete ``stream`` and return its deletion record.

        The tombstone is written in one transaction: from then on every
        command to the stream fails with :class:`StreamDeleted` (``rejected``
        on the wire), and reads show it as deleted. With ``hard=True`` its
        events, index rows and snapshot are removed as well; every other
        event keeps its position, and readers skip the removed ones (see
        docs/design.md, "Deleting streams and retention"). Read models that
        already applied its events keep them until rebuilt.

        Raises :class:`NotFound` for a stream that never had an event,
        :class:`Unavailable` on a reader, ``ValueError`` for a bad stream id
        and :class:`StorageError`. Cancelling it waits for a deletion already
        running in the writer's thread: it happens or not as a whole.
        """
        self._check_open()
        self._check_writer("delete a stream")
        check_stream_id(stream)
        if not isinstance(hard, bool):
            raise ValueError(f"hard must be true or false, got {hard!r}")
        # The writer's limiter: one write transaction at a time, off the event loop.
        record = await trio.to_thread.run_sync(
            partial(self.store.delete_stream, stream, hard=hard, timestamp=time.time()),
            limiter=self.writer.limiter,
        )
        actor = self.registry.live(stream)
        if actor is not None:
            # Appends it already handed over are refused by the store; later
            # commands are refused before they are decided.
            actor.mark_deleted()
        return record

    async def apply_retention(self) -> RetentionResult:
        """Apply every aggregate's :class:`~motet.storage.retention.Retention`
        (declared in its definition) to the streams of its category now, in
        the writer's worker thread, one stream's transaction at a time (the
        writer commits between them).
        Returns what was removed. Raises :class:`Unavailable` on a reader
        and :class:`StorageError`."""
        self._check_open()
        self._check_writer("apply retention")
        policies = {
            aggregate.name: (aggregate.retention, aggregate.state_version)
            for aggregate in self.app.aggregates
            if aggregate.retention is not None
        }
        result = RetentionResult()
        if not policies:
            return result
        now = time.time()
        streams = await self._calls.run(self.store.streams, offload=True)
        for stream, _ in streams:
            policy = policies.get(category_of(stream))
            if policy is None:
                continue
            # One stream per hop holding the writer's limiter: commits go on
            # between streams, however many there are.
            removed = await trio.to_thread.run_sync(
                retain_stream, self.store, stream, *policy, now, limiter=self.writer.limiter
            )
            result.add(stream, removed)
        return result

    async def serve_retention(
        self, every: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply retention every ``every`` seconds, forever (see
        :meth:`apply_retention`). A failed run is logged and tried again
        next time: the store may come back."""
        if not every > 0:
            raise ValueError(f"the retention interval must be > 0 seconds, got {every!r}")
        task_status.started()
        while True:
            await trio.sleep(every)
            try:
                result = await self.apply_retention()
            except StorageError as exc:
                log.warning("applying retention failed, trying again in %s s: %s", every, exc)
                continue
            if result.removed:
                log.info(
                    "retention removed %d events from %d streams", result.removed, result.truncated
                )

    def _check_writer(self, doing: str) -> None:
        if self.role != "writer":
            raise Unavailable(
                f"cannot {doing} on a {self.role}: only the writer process changes the log"
            )

    async def subscribe(
        self,
        from_position: int = 0,
        *,
        batch_size: int = _READ_BATCH,
        on_caught_up: Callable[[], None] | None = None,
        category: str | None = None,
        types: list[str] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield every event with a position greater than ``from_position`` in
        log order: first those already committed (catch-up), then each new
        one as it is committed (live), by this engine or, on a shared store,
        by another process. Positions removed on purpose (hard deletes,
        retention) are skipped. ``on_caught_up`` is called each time the
        subscription has read everything up to the head and waits for new
        commits (the last event delivered may be below the head when the
        newest events were removed). Ends only with :class:`EngineClosed`
        when the engine closes; stop iterating (or cancel) to unsubscribe.
        With ``category`` and/or ``types``, only the events that pass (see
        :meth:`read_filtered`): a category is read through the store's
        category index, types are filtered before decoding."""
        self._check_open()
        event_filter = EventFilter.of(category, types)
        select = None if event_filter.everything else event_filter.matches
        if from_position < 0:
            raise ValueError(f"from_position must be >= 0, got {from_position}")
        position = from_position
        decode = self.codec.decode_record
        read_all = self.store.read_all
        read_category = self.store.read_category
        run = self._calls.run
        watch = self.writer.watch
        while True:
            if watch.head_position <= position:
                if on_caught_up is not None:
                    on_caught_up()
                with trio.CancelScope() as scope:
                    self._waits.add(scope)
                    try:
                        await watch.wait_beyond(position)
                    finally:
                        self._waits.discard(scope)
            self._check_open()
            # Far behind: decode off the event loop; near the head, inline.
            head = watch.head_position
            far = head - position > batch_size
            if category is None:
                read: Callable[..., list[StoredEvent]] = read_all
                args: tuple[Any, ...] = (position, batch_size)
            else:
                read, args = read_category, (category, position, batch_size)
            if far or self._calls.blocking:
                # Keys are looked up in the worker thread too, not by decode below.
                stored = await run(self.codec.read_warm, read, *args, offload=far)
            else:
                stored = read(*args)
            if not stored:
                # Everything up to the (committed) head was removed on purpose,
                # or holds nothing of the category.
                position = max(position, head)
                continue
            for event in stored:
                position = event.position
                if select is None or select(event.stream, event.type):
                    yield decode(event)
            if category is not None and len(stored) < batch_size:
                # The category index holds nothing more up to the head seen before.
                position = max(position, head)

    async def read_filtered(
        self,
        from_position: int = 0,
        limit: int = _READ_BATCH,
        *,
        category: str | None = None,
        types: list[str] | None = None,
        scan_limit: int = _SCAN_LIMIT,
    ) -> tuple[list[RecordedEvent], int]:
        """Events with a position greater than ``from_position`` that pass
        the filter (``category``: the part of the stream id before its first
        ``-``; ``types``: event type names), in log order, at most ``limit``
        of them; and the last position looked at, to pass as the next
        ``from_position``. A category is read through the store's category
        index (its own events only); types alone filter the log. One call
        looks at no more than ``scan_limit`` records, so a rare type costs
        bounded work per call (a page may then hold fewer than ``limit``
        events, even none, before the head). Raises ``ValueError`` for a bad argument and
        :class:`EngineClosed` once the engine has closed."""
        self._check_open()
        event_filter = EventFilter.of(category, types)
        if not isinstance(from_position, int) or from_position < 0:
            raise ValueError(f"from_position must be >= 0, got {from_position!r}")
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        position = from_position
        found: list[RecordedEvent] = []
        decode = self.codec.decode_record
        scanned = 0
        head = self.writer.head_position
        category = event_filter.category
        while len(found) < limit and scanned < scan_limit and position < head:
            batch = min(_READ_BATCH * 10, scan_limit - scanned)
            if category is None:
                stored = await self._calls.run(self.store.read_all, position, batch, offload=True)
            else:
                stored = await self._calls.run(
                    self.store.read_category, category, position, batch, offload=True
                )
            scanned += len(stored)
            for record in stored:
                position = record.position
                if event_filter.matches(record.stream, record.type):
                    found.append(decode(record))
                    if len(found) >= limit:
                        break
            if len(stored) < batch:
                if category is not None and len(found) < limit:
                    # The category holds nothing more up to the head seen before.
                    position = max(position, head)
                break
        return found, position

    @asynccontextmanager
    async def consume(
        self,
        group: str,
        *,
        category: str | None = None,
        types: list[str] | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> AsyncIterator[Member]:
        """Be a member of consumer group ``group`` for the block: iterate the
        member for deliveries and settle each with ``await delivery.ack()``
        (or ``nack``). Delivery is at least once: a delivery's ``position``
        is the idempotency key. Events of one stream come in version order,
        to one member at a time. ``category`` and ``types`` filter the events
        (every member of a group passes the same); ``prefetch`` caps the
        unacked deliveries this member holds. Raises ``ValueError``
        (:class:`~motet.storage.errors.InvalidMessage`) for bad arguments,
        :class:`Unavailable` on a reader and :class:`EngineClosed` once the
        engine has closed (the iteration then ends)."""
        self._check_open()
        if self.role != "writer":
            raise Unavailable("consumer groups are served by the writer; this engine is a reader")
        async with self.groups.consume(
            group, category=category, types=types, prefetch=prefetch
        ) as member:
            yield member

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("the engine is closed")

    def _close(self) -> None:
        """The engine's tasks stop: refuse everything from now on and end
        the queries and subscriptions still waiting."""
        self._closing = self._closed = True
        for scope in list(self._waits):
            scope.cancel()

    async def _drain(self) -> None:
        """Refuse new commands, then wait for the accepted ones to finish."""
        self._closing = True
        await self._quiet.wait()
        await self.writer.wait_idle()

    async def _leave(self) -> None:
        """Hand this node's partitions over (its commands are drained)."""
        if self.node is not None:
            try:
                await self.node.leave()
            except Exception:
                log.exception("node %s could not hand its partitions over", self.node.id)

    async def _save_projections(self) -> None:
        for projection in self.projections.values():
            try:
                await projection.save()
            except Exception:
                log.exception("could not save projection %s", projection.name)
        for manager in self.process_managers.values():
            try:
                await manager.save()
            except Exception:
                log.exception("could not save process manager %s", manager.name)


def _with_snapshot_every(app: App, snapshot_every: int | Mapping[str, int] | None) -> App:
    if snapshot_every is None:
        return app
    aggregates = []
    for aggregate in app.aggregates:
        every = (
            snapshot_every
            if isinstance(snapshot_every, int)
            else snapshot_every.get(aggregate.name, aggregate.snapshot_every)
        )
        aggregates.append(dataclasses.replace(aggregate, snapshot_every=every))
    return dataclasses.replace(app, aggregates=tuple(aggregates))


def _open_store(
    where: str | os.PathLike[str] | None,
    durability: Durability | None,
    store_options: Mapping[str, Any] | None,
    role: Role = "writer",
) -> EventStore:
    """The store named by a path or URL (see :func:`open_engine`)."""
    if where is None or where == "memory:":
        if role == "reader":
            raise ValueError("a reader follows another process' log; an in-memory store has none")
        if store_options:
            raise ValueError(f"an in-memory store takes no store_options, got {store_options!r}")
        return MemoryStore()
    if isinstance(where, str) and "://" in where:
        scheme = where.partition("://")[0]
        if scheme in ("postgresql", "postgres"):
            # Imported here: psycopg is an optional dependency (motet[postgres]).
            try:
                from motet.storage.postgres_store import PostgresStore
            except ImportError as exc:
                raise ValueError(
                    f"cannot open {where!r}: the PostgreSQL store needs psycopg "
                    f"(pip install 'motet[postgres]'): {exc}"
                ) from None
            return PostgresStore(where, durability=durability or "sync", **(store_options or {}))
        raise ValueError(
            f"unknown store URL scheme {scheme!r} in {where!r}; "
            "give a directory path (LMDB), 'memory:' or None"
        )
    if not isinstance(where, (str, os.PathLike)):
        raise TypeError(f"open_engine needs a path, a URL or a store, got {where!r}")
    # Imported here: an engine on another store never loads lmdb.
    from motet.storage.lmdb_store import LmdbStore

    if role == "reader":
        # Read-only beside the writer process, which holds the store's lock.
        return LmdbStore(where, readonly=True, **(store_options or {}))
    return LmdbStore(where, durability=durability or "sync", **(store_options or {}))


@asynccontextmanager
async def open_engine(
    path_or_store: str | os.PathLike[str] | EventStore | None = None,
    app: App | None = None,
    *,
    store: EventStore | None = None,
    durability: Durability | None = None,
    store_options: Mapping[str, Any] | None = None,
    mailbox_size: int = 64,
    max_actors: int = 100_000,
    passivate_after: float = 300.0,
    snapshot_every: int | Mapping[str, int] | None = None,
    shutdown_timeout: float = 10.0,
    metrics: bool = True,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_token: str | None = None,
    metrics_max_connections: int = DEFAULT_METRICS_MAX_CONNECTIONS,
    http_port: int | None = None,
    http_host: str = "127.0.0.1",
    http_token: str | None = None,
    max_batch: int = 10_000,
    role: Role = "writer",
    retention_every: float | None = None,
    node_id: str | None = None,
    advertise: str = "",
    lease_ttl: float = 10.0,
    peer_token: str | None = None,
    peer_ssl_context: Any = None,
    group_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> AsyncIterator[Engine]:
    """Open the store, start the engine's tasks for ``app``, and yield the
    :class:`Engine`.

    The store is given as ``path_or_store`` or ``store=``: a directory path
    (``str`` or ``Path``; an LMDB store, created when missing), ``None`` or
    ``"memory:"`` (in memory), a ``postgresql://`` URL (a
    :class:`~motet.storage.postgres_store.PostgresStore`; needs the
    ``postgres`` extra), or a store object implementing
    :class:`~motet.storage.store.EventStore` (e.g. ``LmdbStore(path,
    map_size=...)``). ``durability`` (``"sync"``, the default, or ``"none"``)
    and ``store_options`` (keyword arguments of
    :class:`~motet.storage.lmdb_store.LmdbStore`, e.g. ``{"map_size": ...}``)
    apply to a store opened from a path; a store object comes with its own,
    so they are refused with it. The engine closes a store it opened, never
    one it was given. A store whose log others append to as well
    (``store.shared``) is watched for their commits, so projections and
    subscribers see them too.

    On exit, new commands are refused, accepted ones are committed (for at
    most ``shutdown_timeout`` seconds), the tasks stop and the store closes.
    ``snapshot_every`` overrides the aggregates' snapshot interval (one
    number, or per aggregate name). ``metrics=False`` turns off metric
    collection (``engine.metrics`` is then ``None``). ``max_batch`` caps the
    commands in one write transaction. With ``metrics_port`` (0 picks a free
    port, then in ``engine.metrics_port``) the engine serves Prometheus
    metrics at ``http://metrics_host:port/metrics`` while it runs, to at most
    ``metrics_max_connections`` connections at once (a connection beyond
    answers 429). That endpoint is open unless ``http_token`` or
    ``metrics_token`` is given; then a scrape needs ``Authorization: Bearer``
    with one of them (else 401). With
    ``http_port`` (0 picks a free port, then in ``engine.http_port``) it also
    serves the HTTP API and the admin page on ``http_host`` (requests need
    ``Authorization: Bearer <http_token>`` when a token is given, and its
    ``/metrics`` also takes ``metrics_token``); that
    server stops taking requests before the engine drains.
    With ``retention_every`` (seconds) a writer applies the aggregates'
    retention (see :meth:`Engine.apply_retention`) that often while it runs.
    ``role="reader"`` follows a log another process writes: a directory is
    opened read-only beside its writer (``LmdbStore(path, readonly=True)``, a
    ``shared`` store), commands are refused with
    :class:`~motet.storage.errors.Unavailable`, and projections keep their
    models in memory only (no checkpoint is saved); queries (with
    ``after=``), reads, subscriptions and status work as on the writer.
    ``node_id`` makes the engine a node of a store shared by several
    (PostgreSQL): a writer node owns the partitions whose leases it holds
    (renewed every ``lease_ttl * 0.3`` seconds; others take them over once
    ``lease_ttl`` seconds pass without renewal), forwards commands for the
    others to their owners at the address they ``advertise`` (``host:port``
    of their line server; with ``peer_token`` as token, and over TLS with
    ``peer_ssl_context``, an ``ssl.SSLContext`` trusting their certificates), answers
    :class:`~motet.storage.errors.Unavailable` for a partition with no live
    owner, and hands its partitions over when it closes.
    ``group_max_attempts`` is how many failed deliveries park an event of a
    consumer group (see :meth:`Engine.consume`). Raises
    :class:`~motet.storage.errors.StoreFormatError` when the path is not a
    Motet store, ``OSError`` when a port cannot be bound,
    ``TypeError`` without an app and ``ValueError`` for invalid options.
    """
    if app is None:
        raise TypeError("open_engine needs the app to run: open_engine(path, app)")
    if metrics_max_connections < 1:
        raise ValueError(f"metrics_max_connections must be >= 1, got {metrics_max_connections!r}")
    _check_role(role)
    if (
        store is None
        and path_or_store is not None
        and not isinstance(path_or_store, (str, os.PathLike))
    ):
        store, path_or_store = path_or_store, None
    owned = store is None
    if store is None:
        store = _open_store(path_or_store, durability, store_options, role)  # type: ignore[arg-type]
    elif path_or_store is not None:
        raise ValueError(f"give a path or a store, not both (got {path_or_store!r} and {store!r})")
    elif durability is not None or store_options:
        raise ValueError(
            "durability and store_options apply to a store opened from a path; "
            f"set them when opening {store!r}"
        )
    elif role == "writer" and getattr(store, "readonly", False):
        raise ValueError(f"{store!r} is read-only: open the engine with role='reader'")
    app = _with_snapshot_every(app, snapshot_every)
    # What the body raised: the nursery wraps it in an ExceptionGroup, but the
    # caller's ``except CommandRejected`` around the block must still see it.
    raised: list[BaseException] = []
    try:
        engine = Engine(
            store,
            app,
            mailbox_size=mailbox_size,
            max_actors=max_actors,
            passivate_after=passivate_after,
            metrics=metrics,
            max_batch=max_batch,
            role=role,
            node_id=node_id,
            advertise=advertise,
            lease_ttl=lease_ttl,
            peer_token=peer_token,
            peer_ssl_context=peer_ssl_context,
            group_max_attempts=group_max_attempts,
        )
        if metrics_port is not None and engine.metrics is None:
            raise ValueError("metrics_port needs metrics=True")
        try:
            async with trio.open_nursery() as nursery:
                if getattr(store, "shared", False):
                    await nursery.start(serve_commit_watch, store, engine.writer.watch)
                await nursery.start(engine.writer.serve)
                await nursery.start(engine.registry.serve)
                if engine.node is not None:
                    await nursery.start(engine.node.serve)
                if role == "writer":
                    await nursery.start(engine.groups.serve)
                for projection in engine.projections.values():
                    await nursery.start(projection.run)
                if retention_every is not None:
                    engine._check_writer("apply retention")
                    await nursery.start(engine.serve_retention, retention_every)
                for manager in engine.process_managers.values():
                    await nursery.start(manager.run)
                http = None
                if metrics_port is not None or http_port is not None:
                    # Imported here: an engine without ports loads no HTTP code.
                    from .net.http import serve_http
                if metrics_port is not None and engine.metrics is not None:
                    metrics_server = await nursery.start(
                        partial(
                            serve_http,
                            engine,
                            host=metrics_host,
                            port=metrics_port,
                            metrics_only=True,
                            token=http_token,
                            metrics_token=metrics_token,
                            max_connections=metrics_max_connections,
                        )
                    )
                    engine.metrics_port = metrics_server.port
                if http_port is not None:
                    http = await nursery.start(
                        partial(
                            serve_http,
                            engine,
                            host=http_host,
                            port=http_port,
                            token=http_token,
                            metrics_token=metrics_token,
                        )
                    )
                    engine.http_port = http.port
                try:
                    yield engine
                except BaseException as exc:
                    raised.append(exc)
                    raise
                finally:
                    if http is not None:
                        http.stop()
                    # They send commands: stopped before the drain waits for
                    # the last ones (what they had begun runs after a restart).
                    for manager in engine.process_managers.values():
                        manager.stop()
                    with trio.move_on_after(shutdown_timeout) as scope:
                        scope.shield = True
                        await engine._drain()
                        await engine._leave()
                        await engine._save_projections()
                    if scope.cancelled_caught:
                        log.warning("engine closed with commands still in flight")
                    engine._close()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if not (raised and len(group.exceptions) == 1 and group.exceptions[0] is raised[0]):
                raise
        else:
            raised.clear()
        engine._close()
        engine.writer.fail_all(EngineClosed("the engine closed before the command committed"))
        if raised:
            # Raised outside the except clause, so its context stays its own.
            raise raised[0]
    finally:
        if owned:
            await _close_store(store)


async def _close_store(store: EventStore) -> None:
    """Close a store the engine opened: in a worker thread for a blocking
    one, shielded and time-limited because the engine is on its way out."""
    if not getattr(store, "blocking", False):
        store.close()
        return
    with trio.move_on_after(10.0) as scope:
        scope.shield = True
        await trio.to_thread.run_sync(store.close)
