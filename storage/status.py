"""Status reports that pass up through every layer to the clients.

Plain structs that import nothing of Motet, so that the runtime can fill them
in and a client can decode them without loading the runtime.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
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
