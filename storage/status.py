"""Status reports that pass up through every layer to the clients.

Plain structs that import nothing of Motet, so that the runtime can fill them
in and a client can decode them without loading the runtime.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "GroupStatus",
    "ParkedStatus",
    "ProcessManagerState",
    "ProcessManagerStatus",
    "ProjectionState",
    "ProjectionStatus",
]

ProjectionState = Literal["running", "paused", "failed", "rebuilding"]
"""What a projection is doing: following the log (``running``), stopped by
``pause`` until ``resume`` (``paused``), stopped on a failing handler
(``failed``, which wins over the others), or folding a fresh model while the
old one answers (``rebuilding``)."""


class ProjectionStatus(msgspec.Struct, frozen=True):
    """Where a projection stands (see ``ProjectionActor.status``)."""

    name: str
    state: ProjectionState
    position: int
    lag_events: int
    lag_seconds: float
    error: str | None = None
    failed_position: int | None = None


ProcessManagerState = Literal["running", "failed"]
"""What a process manager is doing: following the log and firing timers
(``running``), or stopped on a trigger its handler could not take
(``failed``, until retried)."""


class ProcessManagerStatus(msgspec.Struct, frozen=True):
    """Where a process manager stands (see ``ProcessManagerActor.status``):
    its position and lag like a projection's, its pending timers and when
    the next is due (Unix seconds), and its counters since the engine
    started."""

    name: str
    state: ProcessManagerState
    position: int
    lag_events: int
    lag_seconds: float
    pending_timers: int = 0
    next_timer_at: float | None = None
    events_handled: int = 0
    timers_fired: int = 0
    commands_sent: int = 0
    commands_rejected: int = 0
    error: str | None = None
    failed_position: int | None = None


class ParkedStatus(msgspec.Struct, frozen=True):
    """An event a consumer group parked: where it is, how often it failed,
    the last error, and whether a replay of it is in flight."""

    position: int
    stream: str
    attempts: int
    error: str
    parked_at: float
    replaying: bool = False


class GroupStatus(msgspec.Struct, frozen=True):
    """Where a consumer group stands (see ``ConsumerGroup.status``):
    ``position`` is the last position up to which every matching event is
    done; ``lag_events`` the head minus it; ``lag_seconds`` the age of the
    oldest event not done yet (0 when caught up)."""

    name: str
    category: str | None
    types: list[str] | None
    members: list[str]
    position: int
    lag_events: int
    lag_seconds: float
    in_flight: int
    delivered: int
    acked: int
    redelivered: int
    parked: list[ParkedStatus] = []
