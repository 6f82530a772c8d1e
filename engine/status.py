"""The engine's status and statistics: plain structs, no runtime.

:meth:`motet.engine.Engine.status` fills them in, and the clients decode the
protocol's ``status`` reply into them without loading the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from motet.storage.status import GroupStatus, ParkedStatus, ProcessManagerStatus, ProjectionStatus

__all__ = [
    "EngineStatistics",
    "EngineStatus",
    "GroupStatus",
    "NodeStatus",
    "ParkedStatus",
    "ProcessManagerStatus",
    "ProjectionStatus",
    "message_schemas",
]


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


class NodeStatus(msgspec.Struct, frozen=True):
    """One node of a partitioned store in ``status``: its id, role
    (``writer`` or ``reader``), the ``host:port`` it advertises for forwarded
    commands (``""`` for none) and the partitions it owns."""

    id: str
    role: str
    address: str = ""
    partitions: list[int] = []


class EngineStatus(msgspec.Struct, frozen=True):
    """What :meth:`Engine.status` reports: the log's head, each projection's
    position, lag and state, each process manager's position, lag and
    pending timers, the live actors per aggregate type, the command and
    query types the app handles (by tag), and each consumer group's members,
    lag and parked events."""

    head_position: int
    projections: list[ProjectionStatus]
    actors: int
    actors_by_aggregate: dict[str, int]
    durability: str
    commands: list[str] = []
    queries: list[str] = []
    schemas: dict[str, Any] = {}
    process_managers: list[ProcessManagerStatus] = []
    node: NodeStatus | None = None
    """This engine as a node (``None`` unless it runs with a node id)."""
    nodes: list[NodeStatus] = []
    """Every live node of the store, as of this node's last heartbeat."""
    groups: list[GroupStatus] = []


def message_schemas(*types_by_tag: Mapping[str, type]) -> dict[str, Any]:
    """The JSON Schemas of the app's messages, for clients that build requests
    (``motet client`` reads each field's type from them):
    ``{"messages": {tag: {"$ref": "#/$defs/Name"}}, "$defs": {Name: schema}}``
    as ``msgspec.json.schema_components`` makes them. Computed once per engine."""
    tags: list[str] = []
    types: list[type] = []
    for mapping in types_by_tag:
        for tag, cls in mapping.items():
            tags.append(tag)
            types.append(cls)
    refs, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    return {"messages": dict(zip(tags, refs, strict=True)), "$defs": components}
