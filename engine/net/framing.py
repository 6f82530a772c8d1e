"""Newline framing of the line protocol, shared by the server and the clients.

A connection carries one JSON object per line in each direction.
:class:`LineReader` cuts what a stream receives into lines without copying
more than once, and :func:`write_lines` sends the lines queued on a channel,
as many at a time as are waiting, so a busy connection costs few system calls.

The server bounds what connections make it hold, in bytes: a
:class:`ByteBudget` shared by every connection caps the unfinished lines held
by the readers (``partial``) and, another one, the reply lines waiting to be
sent; each connection's :class:`Outbox` also caps its own waiting replies and
is written by :func:`write_outbox`.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

import trio

from motet.storage.errors import RequestTooLarge

__all__ = [
    "MAX_BATCH",
    "RECEIVE_SIZE",
    "ByteBudget",
    "LineReader",
    "Outbox",
    "write_lines",
    "write_outbox",
]

RECEIVE_SIZE: Final = 65_536
"""Bytes asked of the stream per receive."""

MAX_BATCH: Final = 1 << 20
"""Bytes of waiting lines joined into one send, at most (one line may be more)."""


class ByteBudget:
    """Bytes that many holders may hold together, at most ``limit``.

    Holders :meth:`charge` and :meth:`release` what they hold; :meth:`wait_for_room`
    waits until the total is below the limit again.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a byte budget must be >= 1 byte, got {limit}")
        self.limit = limit
        self.used = 0
        self._room: trio.Event | None = None

    def __repr__(self) -> str:
        return f"<ByteBudget used={self.used} limit={self.limit}>"

    def has_room(self) -> bool:
        return self.used < self.limit

    def charge(self, size: int) -> None:
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        if self._room is not None and self.used < self.limit:
            self._room.set()
            self._room = None

    async def wait_for_room(self) -> None:
        """Return once the total is below the limit (at once if it is)."""
        while self.used >= self.limit:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()


class LineReader:
    """Reads the lines of ``stream`` one at a time, each at most ``max_line``
    bytes (its newline not counted).

    With ``budget``, the bytes of the unfinished line it holds are charged to
    it; a receive that takes the budget over its limit raises
    :class:`RequestTooLarge` (the stream must then be closed, as for a long
    line). :meth:`close` gives the bytes back. ``max_line`` may be changed
    between lines (the server allows longer lines once a peer authenticated).
    """

    def __init__(
        self, stream: trio.abc.ReceiveStream, max_line: int, budget: ByteBudget | None = None
    ) -> None:
        self._stream = stream
        self.max_line = max_line
        self._budget = budget
        self._charged = 0
        self._buffer = bytearray()
        self._start = 0  # where the current line starts in the buffer
        self._scanned = 0  # bytes of the buffer already searched for a newline
        self.rest = b""
        """After the end of the stream: what followed the last newline."""

    def __repr__(self) -> str:
        return f"<LineReader buffered={len(self._buffer) - self._start} max_line={self.max_line}>"

    def close(self) -> None:
        """Give back what is charged to the budget and drop the buffer."""
        self._buffer.clear()
        self._start = self._scanned = 0
        self._account()

    def _account(self) -> None:
        """Charge the budget with the bytes after the last complete line."""
        if self._budget is None:
            return
        held = len(self._buffer) - self._start
        if held != self._charged:
            self._budget.charge(held - self._charged)
            self._charged = held

    async def receive_line(self) -> bytes | None:
        """The next line without its newline, or ``None`` at the end of the
        stream (then :attr:`rest` holds an unterminated last line, if any).

        Raises :class:`RequestTooLarge` for a line over ``max_line`` bytes
        (the stream is then out of step: close it), and what the stream's
        ``receive_some`` raises (``trio.BrokenResourceError`` ...).
        """
        buffer = self._buffer
        max_line = self.max_line
        while True:
            end = buffer.find(b"\n", self._scanned)
            if end >= 0:
                if end - self._start > max_line:
                    raise RequestTooLarge(f"a line is longer than {max_line} bytes")
                line = bytes(buffer[self._start : end])
                self._start = self._scanned = end + 1
                if self._charged:
                    self._account()
                return line
            if len(buffer) - self._start > max_line:
                raise RequestTooLarge(f"a line is longer than {max_line} bytes")
            del buffer[: self._start]
            self._start = 0
            self._scanned = len(buffer)
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                self.rest = bytes(buffer)
                buffer.clear()
                self._scanned = 0
                self._account()
                return None
            buffer += data
            budget = self._budget
            if budget is not None and buffer.find(b"\n", self._scanned) < 0:
                self._account()
                if not budget.has_room():
                    raise RequestTooLarge(
                        f"the server holds {budget.limit} bytes of unfinished lines at most"
                    )


async def write_lines(
    stream: trio.abc.SendStream,
    lines: trio.MemoryReceiveChannel[bytes],
    *,
    timeout: float = math.inf,
) -> None:
    """Send every line received from ``lines`` (each ends with its newline)
    until the channel is closed, joining those already waiting into one
    ``send_all``.

    Raises ``trio.TooSlowError`` when one send takes longer than ``timeout``
    seconds (the peer does not read), and what ``send_all`` raises.
    """
    async for line in lines:
        batch = [line]
        size = len(line)
        while size < MAX_BATCH:
            try:
                more = lines.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            batch.append(more)
            size += len(more)
        with trio.fail_after(timeout):
            await stream.send_all(b"".join(batch) if len(batch) > 1 else line)


class Outbox:
    """The reply lines of one connection waiting to be sent, bounded in bytes.

    :meth:`put` always queues (a reply already made is not dropped); producers
    call :meth:`wait_for_room` first, which waits while this outbox holds
    ``limit`` bytes or more, or the ``shared`` budget of all outboxes is full.
    So one connection holds at most ``limit`` bytes plus the replies its
    producers made at once. :func:`write_outbox` sends the lines.
    """

    def __init__(self, limit: int, shared: ByteBudget | None = None) -> None:
        if limit < 1:
            raise ValueError(f"an outbox must hold >= 1 byte, got {limit}")
        self.limit = limit
        self.pending = 0
        """Bytes queued and not yet sent."""
        self._shared = shared
        self._lines: deque[bytes] = deque()
        self._changed = trio.Event()
        self._waiting = 0  # tasks waiting on _changed: only they need a wake-up
        self._closed = False

    def __repr__(self) -> str:
        return f"<Outbox pending={self.pending} lines={len(self._lines)} limit={self.limit}>"

    def __len__(self) -> int:
        """Lines queued and not yet taken by the writer."""
        return len(self._lines)

    def has_room(self) -> bool:
        """Whether a producer may add a reply now."""
        if self._closed:
            return True  # producers go on and find it closed
        return self.pending < self.limit and (self._shared is None or self._shared.has_room())

    def put(self, line: bytes) -> None:
        """Queue ``line`` (ending with its newline). Raises
        ``trio.ClosedResourceError`` once closed."""
        if self._closed:
            raise trio.ClosedResourceError("the outbox is closed")
        self._lines.append(line)
        self.pending += len(line)
        if self._shared is not None:
            self._shared.charge(len(line))
        self._wake()

    async def wait_for_room(self) -> None:
        """Return once :meth:`has_room` (at once if it does; no checkpoint then)."""
        while not self.has_room():
            if self.pending >= self.limit or self._shared is None:
                await self._wait()
            else:
                await self._shared.wait_for_room()

    def close(self) -> None:
        """No more lines; the writer ends once the queued ones are sent.
        Waiting producers return."""
        self._closed = True
        self._wake()

    def discard(self) -> None:
        """Close and drop what was not sent (the peer is gone)."""
        self.close()
        self._lines.clear()
        self._sent(self.pending)

    async def _wait(self) -> None:
        self._waiting += 1
        try:
            await self._changed.wait()
        finally:
            self._waiting -= 1

    def _wake(self) -> None:
        if self._waiting:
            self._changed.set()
            self._changed = trio.Event()

    def _sent(self, size: int) -> None:
        self.pending -= size
        if self._shared is not None:
            self._shared.release(size)
        self._wake()

    async def _take(self) -> list[bytes] | None:
        """The waiting lines, up to ``MAX_BATCH`` bytes (at least one line);
        ``None`` once closed and empty. They stay counted until :meth:`_sent`."""
        while not self._lines:
            if self._closed:
                return None
            await self._wait()
        lines = self._lines
        batch = [lines.popleft()]
        size = len(batch[0])
        while lines and size < MAX_BATCH:
            size += len(lines[0])
            batch.append(lines.popleft())
        return batch


async def write_outbox(stream: trio.abc.SendStream, outbox: Outbox, *, timeout: float) -> None:
    """Send the lines of ``outbox`` until it is closed and empty, as many at a
    time as are waiting; what is sent stops counting against its limits.

    Raises ``trio.TooSlowError`` when one send takes longer than ``timeout``
    seconds (the peer does not read), and what ``send_all`` raises.
    """
    while (batch := await outbox._take()) is not None:
        data = b"".join(batch) if len(batch) > 1 else batch[0]
        try:
            with trio.fail_after(timeout):
                await stream.send_all(data)
        finally:
            outbox._sent(len(data))
