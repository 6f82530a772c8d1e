"""A raw protocol connection: JSON lines out, JSON replies in, nothing of the
client library between the test and the bytes."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

__all__ = ["Peer", "open_peer"]


class Peer:
    """One raw protocol connection over ``stream`` (TCP or TLS)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    def __repr__(self) -> str:
        return f"<Peer buffered={len(self._buffer)}>"

    async def write(self, *requests: dict[str, Any] | bytes) -> None:
        """Send each request as a JSON line; bytes go as they are."""
        lines = [r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in requests]
        await self.stream.send_all(b"".join(lines))

    async def line(self) -> bytes | None:
        """The next line, or None at EOF (a reset connection counts as EOF)."""
        while (end := self._buffer.find(b"\n")) < 0:
            try:
                data = await self.stream.receive_some(65_536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return None
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    async def read(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next reply; EOFError if the server closes the connection first."""
        with trio.fail_after(timeout):
            line = await self.line()
        if line is None:
            raise EOFError(f"the server closed the connection; unread: {bytes(self._buffer)!r}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def read_many(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next ``count`` replies, all within ``timeout`` seconds."""
        with trio.fail_after(timeout):
            return [await self.read() for _ in range(count)]

    async def ask(self, request: dict[str, Any] | bytes) -> dict[str, Any]:
        """Send one request and return the next reply."""
        await self.write(request)
        return await self.read()

    async def eof(self, timeout: float = 10.0) -> bool:
        """Whether the server closes the connection before sending another line."""
        with trio.fail_after(timeout):
            return await self.line() is None

    async def wait_closed(self, timeout: float = 10.0) -> bytes:
        """Read until the server closes the connection; return what came."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        with trio.fail_after(timeout):
            while data := await self.stream.receive_some(65_536):
                rest += data
        return rest


@asynccontextmanager
async def open_peer(port: int, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Peer]:
    """A :class:`Peer` on a connection to ``port`` of 127.0.0.1, TLS with
    ``ssl_context``; closed on exit."""
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname="127.0.0.1")
    async with stream:
        yield Peer(stream)
