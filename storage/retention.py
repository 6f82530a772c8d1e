"""Retention: how many old events each stream of a category keeps.

A :class:`Retention` is declared per aggregate type (the category of its
streams, see :mod:`motet.storage.streams`) in the application's definition.
:func:`apply_retention` runs it over a store, synchronously (the engine runs
it in the writer's worker thread, one stream's transaction at a time).

Retention never removes an event that the aggregate still needs to rebuild
its state: only events at or below the version of the stream's latest
snapshot (one written with the aggregate's current state schema) can go.
Among those, ``compact`` removes them all (replay then starts from the
snapshot), ``max_events`` removes all but the newest ``max_events`` of the
stream, and ``max_age`` those older than ``max_age`` seconds. A stream
without a usable snapshot keeps every event. Projections rebuilt from
position 0 afterwards see only the events left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .store import EventStore
from .streams import category_of

__all__ = ["Retention", "RetentionResult", "apply_retention", "retain_stream", "retention_cut"]


@dataclass(frozen=True)
class Retention:
    """What each stream of one category keeps (see the module docstring).

    ``max_age``: seconds an event is kept (``None``: no limit by age);
    ``max_events``: events kept per stream (``None``: no limit by count);
    ``compact``: remove every event the latest snapshot covers. Raises
    ``ValueError`` for a limit that is not positive, or when nothing is set.
    """

    max_age: float | None = None
    max_events: int | None = None
    compact: bool = False

    def __post_init__(self) -> None:
        if self.max_age is not None and not self.max_age > 0:
            raise ValueError(f"retention max_age must be > 0 seconds, got {self.max_age!r}")
        if self.max_events is not None and (
            not isinstance(self.max_events, int) or self.max_events < 1
        ):
            raise ValueError(f"retention max_events must be >= 1, got {self.max_events!r}")
        if self.max_age is None and self.max_events is None and not self.compact:
            raise ValueError("a retention needs max_age, max_events or compact=True")


@dataclass
class RetentionResult:
    """What one run of :func:`apply_retention` did."""

    streams: int = 0
    """Streams of the categories with a retention that were looked at."""
    truncated: int = 0
    """Streams that had events removed."""
    removed: int = 0
    """Events removed in all."""
    by_category: dict[str, int] = field(default_factory=dict)
    """Events removed per category."""

    def add(self, stream: str, removed: int) -> None:
        """Count one stream looked at, and the events removed from it."""
        self.streams += 1
        if removed:
            category = category_of(stream)
            self.truncated += 1
            self.removed += removed
            self.by_category[category] = self.by_category.get(category, 0) + removed


def retention_cut(
    store: EventStore, stream: str, retention: Retention, state_version: int, now: float
) -> int:
    """The highest version of ``stream`` that ``retention`` removes (0: none)."""
    snapshot = store.load_snapshot(stream)
    if snapshot is None or snapshot.schema_version != state_version:
        return 0
    ceiling = snapshot.version
    version = store.stream_version(stream)
    cut = ceiling if retention.compact else 0
    if retention.max_events is not None:
        cut = max(cut, version - retention.max_events)
    if retention.max_age is not None and cut < ceiling:
        oldest_kept = now - retention.max_age
        after = cut
        while after < ceiling:
            page = store.read_stream(stream, after, min(ceiling - after, 1000))
            if not page:
                break
            for event in page:
                if event.version > ceiling or event.timestamp >= oldest_kept:
                    return min(cut, ceiling)
                cut = event.version
            after = page[-1].version
    return min(cut, ceiling)


def retain_stream(
    store: EventStore, stream: str, retention: Retention, state_version: int, now: float
) -> int:
    """Apply ``retention`` to one stream, in one transaction; return how many
    events were removed."""
    deletion = store.stream_deletion(stream)
    done = 0 if deletion is None else deletion.removed_through
    cut = retention_cut(store, stream, retention, state_version, now)
    if cut <= done:
        return 0
    return store.truncate_stream(stream, cut)


def apply_retention(
    store: EventStore, policies: Mapping[str, tuple[Retention, int]], now: float
) -> RetentionResult:
    """Apply each category's retention to every stream of it in ``store``.

    ``policies`` maps a category to its :class:`Retention` and its
    aggregate's current state schema version (a snapshot of another schema
    cannot replace the events, so it protects nothing). Each stream is
    truncated in its own transaction; ``now`` is the wall clock for ``max_age``.
    """
    result = RetentionResult()
    if not policies:
        return result
    for stream, _ in store.streams():
        policy = policies.get(category_of(stream))
        if policy is not None:
            result.add(stream, retain_stream(store, stream, *policy, now))
    return result
