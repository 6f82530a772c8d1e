"""Status reports that pass up through every layer to the clients.

Plain structs that import nothing of Motet, so that the runtime can fill them
in and a client can decode them without loading the runtime.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["ProjectionState", "ProjectionStatus"]

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
