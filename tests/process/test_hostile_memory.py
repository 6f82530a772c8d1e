"""A real ``motet serve`` process against clients that make it build large
replies and never read them: its resident memory (``VmRSS`` in
/proc/PID/status) stays bounded, other clients are answered meanwhile, and the
process stays up."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import trio

from tests.support.commands import create_user_request as create
from tests.support.peer import Peer
from tests.support.peer import open_peer as connect

# Growth of the server's RSS the attacks may cause, at most. Without byte
# limits on pending replies each of them took the server past 1 GB.
MAX_GROWTH = 200 << 20


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


async def never_reading(port: int) -> Peer:
    """A connection whose receive buffer is tiny and that reads nothing."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    return Peer(trio.SocketStream(sock))


async def pong(port: int) -> None:
    async with connect(port) as peer:
        reply = await peer.ask({"id": "p", "op": "ping"})
        assert reply == {"id": "p", "ok": True, "result": "pong"}


async def test_never_reading_clients_cannot_grow_the_server(motet_server: Any) -> None:
    server = motet_server("--durability", "none")
    pid = server.process.pid
    big = "x" * 100_000
    async with connect(server.port) as writer:
        # 100 users of ~100 kB: TopSpenders limit=1000 answers ~10 MB.
        await writer.write(*({"id": n, **create(f"u{n}", big)} for n in range(100)))
        for reply in await writer.read_many(100, timeout=60):
            assert reply["ok"] is True, reply
        # 40 updates of ~100 kB on one stream: a read answers ~4 MB.
        updates = (
            {
                "id": f"up{n}",
                "op": "command",
                "type": "UpdateUser",
                "data": {"user_id": "u0", "name": f"{n}{big}"},
            }
            for n in range(40)
        )
        await writer.write(*updates)
        for reply in await writer.read_many(40, timeout=60):
            assert reply["ok"] is True, reply
        await writer.ask(
            {
                "id": "caught-up",
                "op": "query",
                "type": "GetUserById",
                "data": {"user_id": "u0"},
                "after": 140,
            }
        )
    before = rss(pid)
    top = {"op": "query", "type": "TopSpenders", "data": {"limit": 1000}}
    attacks = [
        [{"id": n, **top} for n in range(100)],
        [{"id": n, "op": "read", "stream": "User-u0", "limit": 4000} for n in range(64)],
        [{"id": n, "op": "subscribe"} for n in range(100)],
        [{"id": n, "op": "subscribe", "from": 0} for n in range(3)]
        + [{"id": "y" * 100_000, "op": "subscribe"}],
    ]
    hogs = []
    peak = before
    peaks = []
    try:
        for requests in attacks:
            hog = await never_reading(server.port)
            hogs.append(hog)
            with trio.move_on_after(2):
                await hog.write(*requests)
            for _ in range(10):
                await trio.sleep(0.2)
                peak = max(peak, rss(pid))
            peaks.append(peak >> 20)
            await pong(server.port)
        assert server.process.poll() is None
        assert peak - before < MAX_GROWTH, (
            f"the server grew from {before >> 20} MB to {peak >> 20} MB "
            f"(MB after each attack: {peaks})"
        )
    finally:
        for hog in hogs:
            await hog.stream.aclose()
    await pong(server.port)
