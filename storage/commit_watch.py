"""Bounding a COMMIT that waits for a synchronous standby.

PostgreSQL makes a COMMIT wait until every synchronous standby named in
``synchronous_standby_names`` has flushed it, for as long as it takes:
``statement_timeout`` does not cover that wait (the server disarms it
before committing), so a standby that is down would stall the writer, and
every command behind it, for ever. Only a cancel request ends the wait;
PostgreSQL then answers COMMIT with a WARNING that the transaction is
committed locally but maybe not replicated, which the store refuses to
acknowledge (:class:`~motet.storage.errors.StandbyUnavailable`).

:class:`CommitWatch` is one thread per store that sends that cancel request
for a watched call still running past its deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["CommitWatch"]


class CommitWatch:
    """Calls a watched call's ``cancel`` once it has run ``timeout``
    seconds; see the module docstring.

    The thread starts with the first watched call and ends with
    :meth:`close`. ``cancel`` runs in that thread, under the watch's lock,
    so it never runs once the watched call has returned (a cancel request
    already on its way may still reach the server after that: the next
    statement on the connection then fails, and nothing is lost). It must
    not raise. Each watched call costs two lock round trips.
    """

    def __init__(self, timeout: float, name: str = "motet-commit-watch") -> None:
        if not timeout > 0:
            raise ValueError(f"commit_timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = timeout
        self._name = name
        self._lock = threading.Condition(threading.Lock())
        self._pending: dict[int, tuple[float, Callable[[], None]]] = {}
        self._serial = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self.cancelled = 0
        """How many watched calls were cancelled so far."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"watching={len(self._pending)}"
        return f"<CommitWatch timeout={self.timeout:g}s {state} cancelled={self.cancelled}>"

    @contextmanager
    def watching(self, cancel: Callable[[], None]) -> Iterator[None]:
        """Run the body of the ``with`` block under the watch: ``cancel`` is
        called if it is still running ``timeout`` seconds from now."""
        with self._lock:
            self._serial += 1
            serial = self._serial
            self._pending[serial] = (time.monotonic() + self.timeout, cancel)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._lock.notify()
        try:
            yield
        finally:
            with self._lock:
                self._pending.pop(serial, None)

    def _serve(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                for serial, (deadline, cancel) in list(self._pending.items()):
                    if deadline <= now:
                        del self._pending[serial]
                        self.cancelled += 1
                        cancel()
                wait = min((d for d, _ in self._pending.values()), default=now + 3600.0) - now
                self._lock.wait(max(wait, 0.0))

    def close(self) -> None:
        """Stop the thread (watched calls still running are no longer cancelled)."""
        with self._lock:
            self._closed = True
            self._pending.clear()
            self._lock.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
