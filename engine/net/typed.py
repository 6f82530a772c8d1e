"""Typed decoding for the clients: the embedded API's types over the wire.

The wire carries JSON. Given the app, a client decodes a query's result into
the type its handler declares it returns (as :meth:`engine.Engine.ask` returns
it) and an event's ``data`` into the app's event type of that tag (as the
embedded ``read_stream`` and ``subscribe`` give it). Without the app, or for a
query whose handler declares no return type, or an event tag the app does
not know, the plain JSON value stays as it is.

This module only reads the app object it is given: it imports neither the
runtime nor the stores, so the clients stay light.
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec

from motet.storage.codec import tag_of

from .protocol import WireEvent

__all__ = ["AppTypes", "result_type"]


def result_type(handler: Any) -> Any:
    """A query handler's declared return type, or ``Any`` when it has none
    (or it cannot be resolved)."""
    try:
        hints = typing.get_type_hints(handler)
    except Exception:
        return Any
    return hints.get("return", Any)


class AppTypes:
    """The result type of each of an app's queries and the event type of
    each tag, read once from the app (a :class:`motet.engine.App`)."""

    __slots__ = ("_events", "_results")

    def __init__(self, app: Any) -> None:
        self._results: dict[type, Any] = {}
        for query in app.queries:
            declared = result_type(query.handler)
            if declared is not Any:
                self._results[query.type] = declared
        self._events: dict[str, type] = {tag_of(cls): cls for cls in app.codec().event_types}

    def __repr__(self) -> str:
        return f"<AppTypes queries={len(self._results)} events={len(self._events)}>"

    def result_of(self, query_type: type) -> Any:
        """The type ``query_type``'s handler returns, or None when it declares none."""
        return self._results.get(query_type)

    def event(self, event: WireEvent) -> WireEvent:
        """``event`` with its ``data`` as the app's event type of its tag (the
        dict as it came when the app has no such type)."""
        cls = self._events.get(event.type)
        if cls is None or not isinstance(event.data, dict):
            return event
        return msgspec.structs.replace(event, data=msgspec.convert(event.data, cls))
