"""The aggregate actor: one live instance per aggregate id, one command at a time."""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

import msgspec
import trio

from storage.codec import Codec
from storage.errors import CodecError, Conflict, MotetError
from storage.records import Append, Metadata, Snapshot
from storage.store import EventStore

from .definition import Aggregate
from .errors import CommandRejected, EngineClosed, InternalError, Overloaded
from .request import CommandRequest
from .writer import GroupCommitWriter

__all__ = ["AggregateActor"]

log = logging.getLogger("motet.actors")

S = TypeVar("S")


class AggregateActor(Generic[S]):
    """Runs one aggregate: loads it (latest snapshot + later events), then
    decides the commands of its bounded mailbox in arrival order.

    Deciding, evolving and handing the append to the writer happen without a
    checkpoint in between, so a command is handled atomically with respect to
    every other task. The actor does not wait for the commit: the writer
    answers the command, and the actor goes on with its next command on the
    state the previous one produced. When an append fails, or a handler
    raises unexpectedly, the actor reloads from storage (once its appends in
    flight have settled) before it decides again.
    """

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
    ) -> None:
        self.definition = definition
        self.aggregate_id = aggregate_id
        self.stream = definition.stream_of(aggregate_id)
        self._store = store
        self._codec = codec
        self._writer = writer
        self._state_decoder = state_decoder
        self._send, self._receive = trio.open_memory_channel[CommandRequest](mailbox_size)
        self.state: S = definition.initial
        self.version = 0
        self.pending = 0
        self.last_used = now
        self.stopped = False
        self._stale = True
        self._settled: trio.Event | None = None
        # Commands in the mailbox or being handled by the actor task; while it
        # is non-zero, new commands queue behind them to keep arrival order.
        self._queued = 0

    def __repr__(self) -> str:
        queued = self._send.statistics().current_buffer_used
        state = "stopped" if self.stopped else "stale" if self._stale else "live"
        return (
            f"<AggregateActor {self.stream} {state} version={self.version} "
            f"mailbox={queued} pending={self.pending}>"
        )

    @property
    def mailbox_used(self) -> int:
        """Commands waiting in the mailbox."""
        return self._send.statistics().current_buffer_used

    @property
    def idle(self) -> bool:
        """True when nothing is queued or in flight, so stopping loses nothing."""
        return self.pending == 0 and self._queued == 0

    def tell(self, request: CommandRequest) -> None:
        """Hand the actor a command; raise :class:`Overloaded` when its mailbox is full.

        When the actor is loaded and its mailbox is empty, the command is
        decided right here, in the sender's task: deciding never awaits, so
        this is exactly what the actor task would do next, minus a task
        switch. Otherwise it is queued behind the commands already waiting.
        """
        if self._queued == 0 and not self._stale and not self.stopped:
            self._decide(request)
            return
        try:
            self._send.send_nowait(request)
            self._queued += 1
        except trio.WouldBlock:
            raise Overloaded(
                f"mailbox of {self.stream} is full "
                f"({self._send.statistics().max_buffer_size} commands waiting)"
            ) from None

    def stop(self) -> None:
        """Let the actor finish: queued commands are still handled, then it ends."""
        self.stopped = True
        self._send.close()

    def append_settled(self, ok: bool) -> None:
        """The writer settled one of this actor's appends."""
        self.pending -= 1
        if not ok:
            self._stale = True
        if self.pending == 0 and self._settled is not None:
            self._settled.set()
            self._settled = None

    async def run(self) -> None:
        """Handle the mailbox until :meth:`stop`; then end."""
        receive = self._receive
        try:
            async for request in receive:
                await self._handle(request)
                self._queued -= 1
                # Drain what is already queued without a scheduler round trip each.
                while self._queued:
                    await self._handle(receive.receive_nowait())
                    self._queued -= 1
        finally:
            self.stopped = True
            # Only a cancelled actor (the engine is closing) can have commands left.
            self._fail_queued(EngineClosed(f"the engine closed before {self.stream} ran it"))
            self._receive.close()

    def _fail_queued(self, error: MotetError) -> None:
        while True:
            try:
                request = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            request.fail(error)

    async def _handle(self, request: CommandRequest) -> None:
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
        self.state, self.version, replace_snapshot = self._load()
        self._stale = False
        if replace_snapshot:
            self._write_snapshot()

    def _load(self) -> tuple[S, int, bool]:
        """Latest usable snapshot plus later events. Returns (state, version,
        whether the stored snapshot should be replaced)."""
        definition = self.definition
        state, version = definition.initial, 0
        replace = False
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
                try:
                    state = self._state_decoder.decode(snapshot.state)
                    version = snapshot.version
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("ignoring unreadable snapshot of %s: %s", self.stream, exc)
                    replace = True
        evolve = definition.evolve
        decode = self._codec.decode_event
        for stored in self._store.read_stream(self.stream, after_version=version):
            state = evolve(state, decode(stored))
            version = stored.version
        return state, version, replace and version > 0

    def _write_snapshot(self) -> None:
        snapshot = Snapshot(
            self.version, self.definition.state_version, self._codec.encode(self.state)
        )
        self.pending += 1
        self._writer.submit(Append(self.stream, self.version, [], snapshot=snapshot), None, self)

    def _decide(self, request: CommandRequest) -> None:
        definition = self.definition
        expected = self.version
        if request.expected_version is not None and request.expected_version != expected:
            request.fail(Conflict(self.stream, request.expected_version, expected))
            return
        try:
            events = definition.decide(self.state, request.command)
            state = self.state
            for event in events:
                state = definition.evolve(state, event)
            encoded = [self._codec.encode_event(event) for event in events]
        except CommandRejected as exc:
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
        self.pending += 1
        self._writer.submit(
            Append(self.stream, expected, encoded, metadata, snapshot), request, self
        )


_NO_METADATA = Metadata()
