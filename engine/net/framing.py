"""Newline framing of the line protocol, shared by the server and the clients.

A connection carries one JSON object per line in each direction.
:class:`LineReader` cuts what a stream receives into lines without copying
more than once, and :func:`write_lines` sends the lines queued on a channel,
as many at a time as are waiting, so a busy connection costs few system calls.
"""

from __future__ import annotations

import math
from typing import Final

import trio

from motet.storage.errors import RequestTooLarge

__all__ = ["MAX_BATCH", "RECEIVE_SIZE", "LineReader", "write_lines"]

RECEIVE_SIZE: Final = 65_536
"""Bytes asked of the stream per receive."""

MAX_BATCH: Final = 1 << 20
"""Bytes of waiting lines joined into one send, at most (one line may be more)."""


class LineReader:
    """Reads the lines of ``stream`` one at a time, each at most ``max_line``
    bytes (its newline not counted)."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_line: int) -> None:
        self._stream = stream
        self._max_line = max_line
        self._buffer = bytearray()
        self._start = 0  # where the current line starts in the buffer
        self._scanned = 0  # bytes of the buffer already searched for a newline
        self.rest = b""
        """After the end of the stream: what followed the last newline."""

    def __repr__(self) -> str:
        return f"<LineReader buffered={len(self._buffer) - self._start} max_line={self._max_line}>"

    async def receive_line(self) -> bytes | None:
        """The next line without its newline, or ``None`` at the end of the
        stream (then :attr:`rest` holds an unterminated last line, if any).

        Raises :class:`RequestTooLarge` for a line over ``max_line`` bytes
        (the stream is then out of step: close it), and what the stream's
        ``receive_some`` raises (``trio.BrokenResourceError`` ...).
        """
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scanned)
            if end >= 0:
                if end - self._start > self._max_line:
                    raise RequestTooLarge(f"a line is longer than {self._max_line} bytes")
                line = bytes(buffer[self._start : end])
                self._start = self._scanned = end + 1
                return line
            if len(buffer) - self._start > self._max_line:
                raise RequestTooLarge(f"a line is longer than {self._max_line} bytes")
            del buffer[: self._start]
            self._start = 0
            self._scanned = len(buffer)
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                self.rest = bytes(buffer)
                buffer.clear()
                self._scanned = 0
                return None
            buffer += data


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
