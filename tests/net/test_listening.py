"""The accept loop's failures for want of resources: one log line per
interval at most, with the count of the ones not logged, and one line when
accepting works again (a real process out of descriptors is in
tests/process/test_descriptor_exhaustion.py)."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import trio

from motet.engine.net.listening import LOG_INTERVAL, RETRY_DELAY, AcceptFailures

_EMFILE = OSError(errno.EMFILE, os.strerror(errno.EMFILE))


async def test_failures_are_logged_once_per_interval_with_a_count(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("motet.test.listening")
    failures = AcceptFailures(log, "line protocol server")
    caplog.set_level(logging.INFO, logger=log.name)
    # 25 s of failed accepts, one every RETRY_DELAY, as the accept loop retries.
    for _ in range(round(2.5 * LOG_INTERVAL / RETRY_DELAY)):
        failures.failed(_EMFILE)
        await trio.sleep(RETRY_DELAY)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0] == (
        "cannot accept connections on the line protocol server: EMFILE (Too many open files); "
        "retrying every 0.1 s, new connections wait in the backlog (logged at most once per 10 s)"
    )
    for line in lines[1:]:
        assert "; 99 more failed since the last such line;" in line or (
            "; 100 more failed since the last such line;" in line
        ), line
    assert all(record.exc_info is None for record in caplog.records)
    assert failures.total == 250
    caplog.clear()
    failures.accepted()
    failures.accepted()
    assert [record.getMessage() for record in caplog.records] == [
        "accepting connections on the line protocol server again, after 250 failed accept(s)"
    ]
    # A new outage is reported at once once the interval has passed.
    await trio.sleep(LOG_INTERVAL)
    caplog.clear()
    failures.failed(OSError(errno.ENFILE, os.strerror(errno.ENFILE)))
    [line] = [record.getMessage() for record in caplog.records]
    assert "ENFILE (Too many open files in system)" in line
    assert "more failed" not in line
