"""The writer's last commit, as projections that are caught up apply it.

A projection at the head would otherwise read the events it was just woken
for back from the store, check and decode every record and decrypt its
personal fields, only to rebuild the very objects the aggregates' ``decide``
returned a moment ago. The writer keeps its last commit instead: the
requests, their Acks and the commit's time. A projection whose position is
right before that commit's first event takes the decided objects as they
are (:meth:`CommittedBatch.records_after`); any other projection, and any
commit holding an append without decided objects (a process manager's
record, a forget), reads from the store as before.

The records are the ones a read would give: same positions, versions, type
tags, schema versions, metadata and commit time; the payload is the object
``decide`` returned, which the aggregate already evolved with (an app whose
events do not survive their own encoding unchanged sees the decoded form
after a restart, in projections as in aggregates).
"""

from __future__ import annotations

from collections.abc import Sequence

from motet.storage.records import RecordedEvent

from .request import CommandRequest

__all__ = ["CommittedBatch"]


class CommittedBatch:
    """One commit's appends that succeeded, in commit order; their events
    hold positions ``first`` to ``last`` (``first > last``: no events)."""

    __slots__ = ("_records", "_requests", "first", "last", "timestamp")

    def __init__(self, requests: list[CommandRequest], events: int, timestamp: float) -> None:
        self._requests = requests
        self._records: list[RecordedEvent] | None = None
        self.timestamp = timestamp
        last = 0
        for request in reversed(requests):
            ack = request.ack
            if ack is not None and request.append is not None and request.append.events:
                last = ack.position
                break
        self.last = last
        self.first = last - events + 1

    def __repr__(self) -> str:
        return f"<CommittedBatch {self.first}..{self.last}>"

    def records_after(self, position: int) -> Sequence[RecordedEvent] | None:
        """The commit's events, decoded, when ``position`` is right before the
        first; ``None`` when the caller must read from the store instead."""
        if position + 1 != self.first or self.last < self.first:
            return None
        records = self._records
        if records is None:
            records = self._records = self._build()
            self._requests = []  # built once; the requests can go
        return records or None

    def _build(self) -> list[RecordedEvent]:
        """The records, or an empty list when some append carries no decided
        objects to build them from."""
        records: list[RecordedEvent] = []
        add = records.append
        timestamp = self.timestamp
        for request in self._requests:
            append = request.append
            ack = request.ack
            if append is None or not append.events or ack is None:
                continue
            decided = request.decided
            encoded = append.events
            if decided is None or len(decided) != len(encoded):
                return []
            stream = append.stream
            metadata = append.metadata
            count = len(encoded)
            position = ack.position - count
            version = ack.version - count
            for event, new in zip(decided, encoded, strict=True):
                position += 1
                version += 1
                add(
                    RecordedEvent(
                        position,
                        stream,
                        version,
                        new.type,
                        new.event_version,
                        timestamp,
                        metadata,
                        event,
                    )
                )
        if not records or records[0].position != self.first or position != self.last:
            return []  # not the contiguous run of positions the commit took
        return records
