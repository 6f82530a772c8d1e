"""A ``motet serve`` process out of file descriptors: its accept loop logs
one line (not a traceback every 0.1 s) and serves again once descriptors
are free. The process's RLIMIT_NOFILE is lowered while it runs
(``resource.prlimit``, as ``prlimit --pid`` does)."""

from __future__ import annotations

import os
import resource
import socket
import time
from typing import Any

from motet.engine.net.blocking import connect

FAILED = "cannot accept connections on the line protocol server: EMFILE (Too many open files)"


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_out_of_descriptors_logs_one_line_and_serves_again(motet_server: Any) -> None:
    server = motet_server()
    pid = server.process.pid
    spare = 3
    limit = _open_descriptors(pid) + spare
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    held: list[socket.socket] = []
    try:
        # The first few are accepted; the others wait in the backlog while
        # every accept fails with EMFILE.
        for _ in range(spare + 12):
            held.append(socket.create_connection((server.host, server.port), timeout=10))
        deadline = time.monotonic() + 10
        while FAILED not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        time.sleep(1.5)  # trio's own loop would log 15 tracebacks meanwhile
        log = server.log()
        assert log.count(FAILED) == 1, log
        assert "Traceback" not in log
        assert "retrying every 0.1 s" in log
    finally:
        for sock in held:
            sock.close()
    # Descriptors are free again: the waiting connections are accepted and
    # closed, and a new client is served.
    deadline = time.monotonic() + 10
    while "accepting connections on the line protocol server again" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    with connect(server.host, server.port) as client:
        assert client.ping() is not None
    log = server.log()
    assert log.count(FAILED) == 1, log
    assert "Traceback" not in log
    assert server.terminate() == 0
