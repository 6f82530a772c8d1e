"""Deleting streams and removing old events: the rules every store shares.

A *soft* delete writes a tombstone (a :class:`StreamDeletion` with
``deleted``): the stream refuses appends, its events stay. A *hard* delete
also removes the stream's events, its stream-index rows and its snapshot. A
*truncation* (retention) removes the oldest events of a live stream, up to a
version. In every case the other events keep their positions: positions
stay unique and increasing, and the log has gaps exactly where events were
removed on purpose. Each store records the removed positions as runs
(``first``, ``last``), so a check of the log (``motet verify``) can tell a
removal from damage, and the head never moves back even when the newest
events are removed.

Command-id Acks are kept: a retried command that was committed before the
deletion gets its original Ack instead of running against a deleted stream.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import NotFound
from .records import StreamDeletion

__all__ = ["deletion_after", "position_runs", "truncation_after"]


def position_runs(positions: Iterable[int]) -> list[tuple[int, int]]:
    """The sorted ``positions`` as runs of consecutive positions
    ``(first, last)``, e.g. ``[1, 2, 3, 7]`` → ``[(1, 3), (7, 7)]``."""
    runs: list[tuple[int, int]] = []
    for position in sorted(positions):
        if runs and runs[-1][1] == position - 1:
            runs[-1] = (runs[-1][0], position)
        else:
            runs.append((position, position))
    return runs


def deletion_after(
    stream: str,
    record: StreamDeletion | None,
    version: int,
    removed: int,
    *,
    hard: bool,
    timestamp: float,
) -> StreamDeletion:
    """The record of ``stream`` once it is deleted (``removed`` of its events
    removed now; ``version`` its version). Raises :class:`NotFound` for a
    stream that never had an event. Deleting again keeps the first time of
    deletion; a hard delete after a soft one removes the events."""
    if version == 0 and record is None:
        raise NotFound(f"stream {stream!r} has no events: there is nothing to delete")
    earlier = record or StreamDeletion(version)
    return StreamDeletion(
        version=max(version, earlier.version),
        deleted=True,
        hard=hard or earlier.hard,
        removed_through=version if hard else earlier.removed_through,
        removed=earlier.removed + removed,
        deleted_at=earlier.deleted_at if earlier.deleted_at is not None else timestamp,
    )


def truncation_after(
    record: StreamDeletion | None, version: int, through: int, removed: int
) -> StreamDeletion:
    """The record of a stream at ``version`` once its events up to version
    ``through`` are removed (``removed`` of them now)."""
    earlier = record or StreamDeletion(version)
    return StreamDeletion(
        version=max(version, earlier.version),
        deleted=earlier.deleted,
        hard=earlier.hard,
        removed_through=max(through, earlier.removed_through),
        removed=earlier.removed + removed,
        deleted_at=earlier.deleted_at,
    )
