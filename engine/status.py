"""The engine's status and statistics: plain structs, no runtime.

:meth:`motet.engine.Engine.status` fills them in, and the clients decode the
protocol's ``status`` reply into them without loading the runtime.
"""

from __future__ import annotations

import msgspec

from motet.storage.status import ProjectionStatus

__all__ = ["EngineStatistics", "EngineStatus", "ProjectionStatus"]


class EngineStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the engine's counters (see :meth:`Engine.statistics`)."""

    head_position: int
    commits: int
    commands_committed: int
    events_appended: int
    failed_commits: int
    snapshots: int
    actors: int
    actors_started: int
    actors_passivated: int
    actors_evicted: int
    mailbox_max: int

    @property
    def mean_batch_size(self) -> float:
        """Commands per write transaction, on average."""
        return self.commands_committed / self.commits if self.commits else 0.0


class EngineStatus(msgspec.Struct, frozen=True):
    """What :meth:`Engine.status` reports: the log's head, each projection's
    position, lag and state, the live actors per aggregate type, and the
    command and query types the app handles (by tag)."""

    head_position: int
    projections: list[ProjectionStatus]
    actors: int
    actors_by_aggregate: dict[str, int]
    durability: str
    commands: list[str] = []
    queries: list[str] = []
