"""The application definition handed to :func:`engine.open_engine`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from motet.actors.definition import Aggregate
from motet.actors.process_manager import ProcessManager
from motet.actors.projection import Projection, Query
from motet.storage.codec import Codec, Upcaster, tag_of
from motet.storage.keyring import KeySource
from motet.storage.personal import SUBJECT_CATEGORY

__all__ = ["App"]


@dataclass(frozen=True)
class App:
    """Everything the engine runs for one application: its aggregates (with
    their commands and events), its projections (read models) and the queries
    they answer, its process managers (reactions to events, with timers; see
    :mod:`motet.actors.process_manager`), and the upcasters of old event
    versions.

    Raises ``TypeError`` at construction when two aggregates claim the same
    command type, two messages share a tag, a query names an unknown
    projection, a process manager shares its name with an aggregate (or
    another manager) or correlates an event or category the app does not
    have, an upcaster is missing, or a ``Personal`` declaration is bad (see
    :mod:`motet.storage.personal`).
    """

    aggregates: Sequence[Aggregate[Any]]
    projections: Sequence[Projection[Any]] = ()
    queries: Sequence[Query[Any, Any]] = ()
    upcasters: Mapping[tuple[str, int], Upcaster] = field(default_factory=dict)
    personal_data: bool = True
    """Whether fields declared ``Personal`` are encrypted (see
    :mod:`motet.storage.personal`); ``False`` stores them in clear, as
    if undeclared (to measure what encryption costs)."""
    process_managers: Sequence[ProcessManager[Any]] = ()

    def __post_init__(self) -> None:
        seen: dict[type, str] = {}
        names: set[str] = set()
        for aggregate in self.aggregates:
            if aggregate.name in names:
                raise TypeError(f"two aggregates are named {aggregate.name!r}")
            if aggregate.name == SUBJECT_CATEGORY:
                raise TypeError(
                    f"no aggregate may be named {SUBJECT_CATEGORY!r}: its streams record "
                    "forgotten data subjects"
                )
            names.add(aggregate.name)
            for command in aggregate.commands:
                if command in seen:
                    raise TypeError(
                        f"{command.__qualname__} is handled by both {seen[command]!r} "
                        f"and {aggregate.name!r}"
                    )
                seen[command] = aggregate.name
        projections = {p.name for p in self.projections}
        if len(projections) != len(self.projections):
            raise TypeError("two projections have the same name")
        queries: set[type] = set()
        for query in self.queries:
            if query.projection not in projections:
                raise TypeError(
                    f"query {query.type.__qualname__} reads unknown projection {query.projection!r}"
                )
            if query.type in queries:
                raise TypeError(f"query {query.type.__qualname__} is registered twice")
            queries.add(query.type)
        tags: dict[str, type] = {}
        for command in [*seen, *queries]:
            tag = tag_of(command)
            if tag in tags:
                raise TypeError(
                    f"message tag {tag!r} is used by both {tags[tag].__qualname__} "
                    f"and {command.__qualname__}"
                )
            tags[tag] = command
        self._check_process_managers(names)
        self.codec()  # validates event tags, versions and upcasters now

    def _check_process_managers(self, aggregates: set[str]) -> None:
        events = {event for aggregate in self.aggregates for event in aggregate.events}
        managers: set[str] = set()
        for manager in self.process_managers:
            if manager.name in aggregates or manager.name in managers:
                raise TypeError(
                    f"process manager {manager.name!r} shares its name (its stream "
                    "category) with another aggregate or process manager"
                )
            if manager.name == SUBJECT_CATEGORY:
                raise TypeError(
                    f"no process manager may be named {SUBJECT_CATEGORY!r}: its streams "
                    "record forgotten data subjects"
                )
            managers.add(manager.name)
            for key in manager.correlate:
                if isinstance(key, str):
                    if key not in aggregates:
                        raise TypeError(
                            f"process manager {manager.name!r} correlates category {key!r}, "
                            f"which is no aggregate of the app (aggregates: "
                            f"{', '.join(sorted(aggregates))})"
                        )
                elif key not in events:
                    raise TypeError(
                        f"process manager {manager.name!r} correlates {key.__qualname__}, "
                        "which is no event of the app's aggregates"
                    )

    def codec(self, keys: KeySource | None = None) -> Codec:
        """A codec for every event type of every aggregate and process manager
        (and :class:`~motet.storage.personal.SubjectForgotten`). Give it the
        store as ``keys`` to decrypt personal fields: without it, a codec
        decodes events without personal data only (and raises
        :class:`~motet.storage.errors.CodecError` for encrypted fields).

        Raises ``TypeError`` for a bad declaration (see :class:`App`)."""
        events = [event for aggregate in self.aggregates for event in aggregate.events]
        events += [event for manager in self.process_managers for event in manager.events]
        return Codec(events, self.upcasters, personal=self.personal_data, keys=keys)

    def command_types(self) -> dict[str, type]:
        """Command types by tag (what the TCP protocol's ``type`` names)."""
        return {tag_of(c): c for aggregate in self.aggregates for c in aggregate.commands}

    def query_types(self) -> dict[str, type]:
        """Query types by tag."""
        return {tag_of(q.type): q.type for q in self.queries}
