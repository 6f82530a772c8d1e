"""A command waiting for its answer: the reply slot a mailbox message carries."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import Any, Protocol

import msgspec
import outcome
import trio

# trio's reschedule-wait trap: what trio.lowlevel.wait_task_rescheduled
# yields to the run loop (see _ParkedWait). trio is pinned below 1.0.
from trio._core._traps import WaitTaskRescheduled as _WaitTaskRescheduled

from motet.storage.idempotency import fingerprint_of
from motet.storage.records import Ack, Append, CommandFingerprint

__all__ = ["AppendOwner", "CommandRequest"]

log = logging.getLogger("motet.actors")


class AppendOwner(Protocol):
    """The actor side of an append: told when its append is settled."""

    def append_settled(self, ok: bool) -> None:
        """One of this owner's appends committed (``ok``) or failed."""


class _NoOwner:
    """The owner of a request that never reached the writer."""

    def append_settled(self, ok: bool) -> None:
        pass


_NO_OWNER: AppendOwner = _NoOwner()


class CommandRequest(msgspec.Struct, eq=False):
    """One command on its way through an actor and the writer.

    Whoever finishes it (the actor for a rejection, the writer once the commit
    is durable) calls :meth:`succeed` or :meth:`fail`; the sender awaits
    :meth:`wait` or :meth:`wait_done`.

    The first task to wait parks itself in the request (``trio.lowlevel``),
    and the answer reschedules it directly: no event, no wait coroutine and
    no abort closure per command (its abort callback is a small object the
    garbage collector does not track). Every tracked object saved per
    command in flight is garbage-collector work saved, as each outlives
    several young collections while its commit is under way. Further
    waiters (a retry with the same command id) wait on an event made for
    them.

    A struct rather than a class with ``__slots__``: one is made per
    command, and msgspec fills its defaults in C.
    """

    command: Any
    command_id: str | None = None
    expected_version: int | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    received_at: float = 0.0
    # When the writer answered it (trio time, one reading per commit);
    # 0.0 when answered by anyone else.
    answered_at: float = 0.0
    # Set when the store's command-id index is still to be asked (by the
    # actor, which may wait) whether this command already ran.
    lookup_command_id: bool = False
    # The command's fingerprint, computed once, by whoever needs it first
    # (only commands with a command id have one).
    fingerprint: CommandFingerprint | None = None
    ack: Ack | None = None
    # Set by the actor when the command produced an append for the writer.
    append: Append | None = None
    # The event objects ``decide`` returned for that append, in order:
    # projections caught up with the commit apply them as they are instead
    # of reading them back (see motet.actors.committed).
    decided: Sequence[Any] | None = None
    owner: AppendOwner = _NO_OWNER
    error: BaseException | None = None
    # Whether the request has its answer (read-only outside: set by succeed
    # and fail). An attribute, not a property: the command path reads it
    # twice per command.
    done: bool = False
    # The task parked in wait_done, rescheduled by the answer.
    _waiter: trio.lowlevel.Task | None = None
    # For the waiters after the first one.
    finished: trio.Event | None = None
    _callbacks: list[Callable[[CommandRequest], None]] | None = None

    def command_fingerprint(self) -> CommandFingerprint | None:
        """The fingerprint of the command under its command id (``None``
        without one), computed on the first call only."""
        if self.fingerprint is None and self.command_id is not None:
            self.fingerprint = fingerprint_of(self.command, self.command_id)
        return self.fingerprint

    def __repr__(self) -> str:
        state = "ok" if self.ack else f"failed: {self.error!r}" if self.error else "pending"
        return f"<CommandRequest {type(self.command).__name__} {state}>"

    def add_done_callback(self, callback: Callable[[CommandRequest], None]) -> None:
        """Call ``callback(request)`` once the request has its answer (right
        away if it has). Callbacks run in the task that answers the request,
        so they must not block or raise."""
        if self.done:
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def succeed(self, ack: Ack) -> None:
        """Answer with the Ack; ignored when already answered."""
        if not self.done:
            self.ack = ack
            self._finish()

    def fail(self, error: BaseException) -> None:
        """Answer with an error; ignored when already answered."""
        if not self.done:
            self.error = error
            self._finish()

    def _finish(self) -> None:
        self.done = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter, _RESUMED)
        if self.finished is not None:
            self.finished.set()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks is not None:
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:
                    # The answering task (often the writer) must go on answering
                    # everybody else; a broken callback is a bug to report.
                    log.exception("a done-callback of %r raised", self)

    def park(self, task: trio.lowlevel.Task) -> bool:
        """Make ``task`` the waiter the answer reschedules; it must then
        ``await request.parked()`` at once. Returns ``False``, parking
        nothing, when the request is answered or has a waiter already: use
        :meth:`wait_done` then. For the hottest waits (no coroutine of its
        own, unlike :meth:`wait_done`)."""
        if self.done or self._waiter is not None:
            return False
        self._waiter = task
        return True

    def parked(self) -> _ParkedWait:
        """What the task :meth:`park` parked awaits: it sleeps until the
        answer reschedules it, and raises ``trio.Cancelled`` if cancelled
        first (the command itself goes on)."""
        return _ParkedWait(self)

    async def wait_done(self) -> None:
        """Wait until the request has its answer (returns at once, without a
        checkpoint, when it has one)."""
        if self.done:
            return
        if self.park(trio.lowlevel.current_task()):
            await _ParkedWait(self)
            return
        if self.finished is None:
            self.finished = trio.Event()
        await self.finished.wait()

    async def wait(self) -> Ack:
        """Wait for the answer; return the Ack or raise the error.

        Cancelling the wait does not cancel the command: it may still commit.
        """
        await self.wait_done()
        if self.error is not None:
            raise self.error
        assert self.ack is not None
        return self.ack


class _ParkedWait(msgspec.Struct, gc=False):
    """The sleep of a parked waiter (see :meth:`CommandRequest.parked`):
    ``trio.lowlevel.wait_task_rescheduled(abort)``, with itself as the abort
    callback, done without that function's coroutine and generator.

    Awaiting it yields trio's reschedule-wait trap straight to the run loop
    (the message wait_task_rescheduled yields), and the loop's answer comes
    back through :meth:`send`. Each command in flight so holds three
    garbage-collector-tracked objects fewer (the coroutine, the generator
    and the message), which young collections would walk and promote while
    its commit is under way. The message is built only to be yielded: trio
    keeps its abort callback and drops it.

    It refers to its request, whose parked task refers (through trio's
    wait) back to it, but only while the task is parked: the answer or the
    abort clears the request's waiter, which ends that loop, so no garbage
    cycle can run through this untracked object.
    """

    request: CommandRequest

    def __call__(self, raise_cancel: object) -> trio.lowlevel.Abort:
        """The abort callback: a cancelled waiter is not rescheduled by the answer."""
        self.request._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def __await__(self) -> Generator[Any, Any, None]:
        return self  # type: ignore[return-value]  # an iterator with send/throw

    def __next__(self) -> Any:
        return _WaitTaskRescheduled(self)

    def send(self, result: outcome.Outcome[None]) -> None:
        """The run loop resumes the task with ``result``: raise what it
        holds (a cancellation), else end the wait."""
        result.unwrap()
        raise StopIteration

    def throw(self, kind: Any, value: Any = None, traceback: Any = None) -> None:
        """Raise into the waiter what the run loop throws (CPython hands it
        over as an exception, or as its type and value)."""
        raise kind if value is None else value

    def close(self) -> None:
        """Nothing to release: the request's waiter is cleared by whoever
        ends the wait."""


class _Resumed(outcome.Outcome[None]):
    """``outcome.Value(None)`` that may be unwrapped any number of times.

    What a parked sender is rescheduled with: trio unwraps it once per
    wake-up, so one shared instance serves every wake-up, where
    ``reschedule(task)`` would build a ``Value`` per woken sender.
    """

    __slots__ = ()

    def unwrap(self) -> None:
        return None

    def send(self, gen: Generator[Any, None, object]) -> Any:
        return gen.send(None)

    async def asend(self, agen: AsyncGenerator[Any, None]) -> Any:
        return await agen.asend(None)


_RESUMED = _Resumed()
