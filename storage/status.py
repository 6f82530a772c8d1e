"""Status reports that pass up through every layer to the clients.

Plain structs that import nothing of Motet, so that the runtime can fill them
in and a client can decode them without loading the runtime.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["ProjectionStatus"]


class ProjectionStatus(msgspec.Struct, frozen=True):
    """Where a projection stands (see ``ProjectionActor.status``)."""

    name: str
    state: Literal["running", "failed", "rebuilding"]
    position: int
    lag_events: int
    lag_seconds: float
    error: str | None = None
    failed_position: int | None = None
