"""The whole event log of a store, read page by page."""

from __future__ import annotations

from typing import Any

from motet.storage import StoredEvent

__all__ = ["read_everything"]


def read_everything(store: Any, page: int = 1000) -> list[StoredEvent]:
    """The whole log of ``store`` (any event store), read in pages of ``page`` events."""
    log: list[StoredEvent] = []
    while True:
        chunk = store.read_all(after_position=log[-1].position if log else 0, limit=page)
        if not chunk:
            return log
        log.extend(chunk)
