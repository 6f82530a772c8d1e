"""How an application describes one aggregate type to the runtime."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from motet.storage.codec import tag_of
from motet.storage.retention import Retention
from motet.storage.streams import SEPARATOR, stream_id

__all__ = ["Aggregate"]

S = TypeVar("S")


@dataclass(frozen=True)
class Aggregate(Generic[S]):
    """An aggregate type: its pure domain functions and the messages it handles.

    ``decide(state, command)`` returns the events a command produces (a
    list or tuple of instances of ``events``), or
    raises :class:`~motet.actors.errors.CommandRejected` with a message for the
    caller; ``evolve(state, event)`` returns the next state and never fails.
    ``commands`` maps each command type to the name of its field holding the
    aggregate id; the aggregate's stream is ``f"{name}-{id}"`` (see
    :mod:`motet.storage.streams`). A snapshot is
    written every ``snapshot_every`` events; bump ``state_version`` whenever
    the state's shape changes, so old snapshots are ignored and rebuilt.
    ``retention`` limits the old events each of its streams keeps (see
    :mod:`motet.storage.retention`; ``None``: all are kept).
    """

    name: str
    state_type: type[S]
    initial: S
    decide: Callable[[S, Any], Sequence[Any]]
    evolve: Callable[[S, Any], S]
    commands: Mapping[type, str]
    events: Sequence[type]
    snapshot_every: int = 100
    state_version: int = 1
    retention: Retention | None = None
    tags: Mapping[str, type] = field(init=False, repr=False, compare=False)
    event_types: frozenset[type] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or SEPARATOR in self.name or "\x00" in self.name:
            raise ValueError(
                f"aggregate name must be non-empty without '-' or NUL, got {self.name!r}"
            )
        if self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {self.snapshot_every}")
        for command, id_field in self.commands.items():
            fields = getattr(command, "__struct_fields__", ())
            if id_field not in fields:
                raise ValueError(f"{command.__qualname__} has no field {id_field!r} to route it by")
        tags = {tag_of(cls): cls for cls in self.commands}
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "event_types", frozenset(self.events))

    def stream_of(self, aggregate_id: str) -> str:
        """The stream id of one aggregate of this type."""
        return stream_id(self.name, aggregate_id)
