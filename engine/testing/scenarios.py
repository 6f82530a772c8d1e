"""Given/when/then scenarios for an application's pure parts, without trio.

An aggregate scenario folds the given events with the aggregate's
``evolve``, runs ``decide`` on one command, and checks the events it
returns or its refusal::

    given(account, [Deposited(amount=5)]).when(Deposit(account_id="a1", amount=7)).then(
        [Deposited(amount=7)]
    )
    given(account).when(Deposit(account_id="a1", amount=0)).then_rejected(match="> 0")

A projection scenario applies the given events to a fresh read model, as the
engine would (each wrapped in a :class:`~motet.storage.records.RecordedEvent`
with made-up positions from 1), and answers a query from it::

    given(balances, [("Account-a1", Deposited(amount=5))], queries=bank.queries).query(
        GetBalance(account_id="a1")
    ).then(5)

A failed expectation raises :class:`~.report.ScenarioFailed` (an
``AssertionError``) listing the expected and the actual outcome, field by
field, with the first difference pointed out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from motet.actors.definition import Aggregate
from motet.actors.process_manager import ProcessManager
from motet.actors.projection import Projection, Query
from motet.storage.codec import event_version_of, tag_of
from motet.storage.errors import CommandRejected, MotetError
from motet.storage.records import Metadata, RecordedEvent

from .clock import DEFAULT_START
from .report import ScenarioFailed, describe, describe_all, first_difference

if TYPE_CHECKING:
    from .processes import ProcessScenario

__all__ = [
    "DEFAULT_STREAM",
    "AggregateScenario",
    "CommandOutcome",
    "ProjectionScenario",
    "QueryOutcome",
    "given",
    "recorded",
]

S = TypeVar("S")
M = TypeVar("M")

DEFAULT_STREAM = "Test-1"
"""The stream of a given projection event that names none."""


@overload
def given(subject: Aggregate[S], events: Iterable[Any] = ()) -> AggregateScenario[S]: ...
@overload
def given(
    subject: Projection[M],
    events: Iterable[Any] = (),
    *,
    queries: Iterable[Query[Any, Any]] = (),
) -> ProjectionScenario[M]: ...
@overload
def given(subject: ProcessManager[S], events: Iterable[Any] = ()) -> ProcessScenario[S]: ...
def given(
    subject: Aggregate[Any] | Projection[Any] | ProcessManager[Any],
    events: Iterable[Any] = (),
    *,
    queries: Iterable[Query[Any, Any]] = (),
) -> AggregateScenario[Any] | ProjectionScenario[Any] | ProcessScenario[Any]:
    """Start a scenario for an :class:`~motet.engine.Aggregate` (whose state
    is folded from ``events``), a :class:`~motet.engine.Projection` (whose
    model has applied ``events``; ``queries`` are the application's
    :class:`~motet.engine.Query` entries it may be asked) or a
    :class:`~motet.engine.ProcessManager` (one instance that has reacted to
    ``events``; see :mod:`.processes`).

    Raises ``TypeError`` for anything else, or for ``queries`` with an
    aggregate or a process manager.
    """
    if isinstance(subject, Aggregate):
        if queries:
            raise TypeError("queries are answered by a projection, not an aggregate")
        return AggregateScenario(subject, list(events))
    if isinstance(subject, Projection):
        return ProjectionScenario(subject, list(events), list(queries))
    if isinstance(subject, ProcessManager):
        if queries:
            raise TypeError("queries are answered by a projection, not a process manager")
        from .processes import ProcessScenario

        return ProcessScenario(subject, events)
    raise TypeError(
        f"given() takes an Aggregate, a Projection or a ProcessManager, got {subject!r}"
    )


# --- Aggregates -----------------------------------------------------------------


class AggregateScenario(Generic[S]):
    """An aggregate whose history is the given events; see :func:`given`."""

    def __init__(self, aggregate: Aggregate[S], history: list[Any]) -> None:
        self.aggregate = aggregate
        self.history = history
        state = aggregate.initial
        for event in history:
            state = aggregate.evolve(state, event)
        self.state: S = state
        """The state folded from the history."""

    def __repr__(self) -> str:
        return f"<AggregateScenario {self.aggregate.name} history={len(self.history)}>"

    def when(self, command: Any) -> CommandOutcome[S]:
        """Run ``decide(state, command)``. A :class:`CommandRejected` is kept
        for :meth:`CommandOutcome.then_rejected`; any other exception (a bug
        in ``decide``) propagates."""
        if type(command) not in self.aggregate.commands:
            handled = ", ".join(sorted(c.__qualname__ for c in self.aggregate.commands))
            raise TypeError(
                f"the {self.aggregate.name} aggregate does not handle "
                f"{type(command).__qualname__}; it handles {handled}"
            )
        try:
            events = list(self.aggregate.decide(self.state, command))
        except CommandRejected as refusal:
            return CommandOutcome(self, command, None, refusal)
        return CommandOutcome(self, command, events, None)


class CommandOutcome(Generic[S]):
    """What ``decide`` did with one command: the events it returned
    (``events``) or its refusal (``rejection``)."""

    def __init__(
        self,
        scenario: AggregateScenario[S],
        command: Any,
        events: list[Any] | None,
        rejection: CommandRejected | None,
    ) -> None:
        self.scenario = scenario
        self.command = command
        self.events = events
        self.rejection = rejection

    def __repr__(self) -> str:
        outcome = "rejected" if self.events is None else f"events={len(self.events)}"
        return f"<CommandOutcome {type(self.command).__qualname__} {outcome}>"

    @property
    def state(self) -> S:
        """The state after the new events (the given state when rejected)."""
        state = self.scenario.state
        for event in self.events or ():
            state = self.scenario.aggregate.evolve(state, event)
        return state

    def _heading(self) -> str:
        name = self.scenario.aggregate.name
        return f"{name}: given {len(self.scenario.history)} event(s), when {describe(self.command)}"

    def then(self, expected: Sequence[Any]) -> CommandOutcome[S]:
        """Check that ``decide`` returned exactly ``expected`` (in order;
        ``ANY`` stands for any field value or event) and that ``evolve``
        accepts them. Raises :class:`ScenarioFailed` otherwise; returns
        ``self`` (e.g. to check :attr:`state`)."""
        __tracebackhide__ = True
        expected = list(expected)
        if self.events is None:
            raise ScenarioFailed(
                f"{self._heading()}\n"
                f"  expected events:\n{describe_all(expected)}\n"
                f"  but the command was rejected: {self.rejection}"
            )
        foreign = [e for e in self.events if type(e) not in self.scenario.aggregate.event_types]
        if foreign:
            raise ScenarioFailed(
                f"{self._heading()}\n"
                f"  decide returned {describe(foreign[0])}, which is not one of the "
                f"{self.scenario.aggregate.name} aggregate's events"
            )
        difference = first_difference(expected, self.events)
        if difference is not None:
            raise ScenarioFailed(
                f"{self._heading()}\n"
                f"  expected {len(expected)} event(s):\n{describe_all(expected)}\n"
                f"  actual {len(self.events)} event(s):\n{describe_all(self.events)}\n"
                f"  first difference: {difference}"
            )
        self.state  # noqa: B018  evolve must accept what decide returned
        return self

    def then_rejected(self, match: str | None = None) -> CommandOutcome[S]:
        """Check that ``decide`` raised :class:`CommandRejected` whose message
        contains a match of the regular expression ``match`` (``re.search``).
        Raises :class:`ScenarioFailed` otherwise; returns ``self``."""
        __tracebackhide__ = True
        wanted = "rejected" if match is None else f"rejected with a message matching {match!r}"
        if self.rejection is None:
            raise ScenarioFailed(
                f"{self._heading()}\n"
                f"  expected the command to be {wanted}\n"
                f"  but decide returned {len(self.events or ())} event(s):\n"
                f"{describe_all(self.events or [])}"
            )
        if match is not None and re.search(match, str(self.rejection)) is None:
            raise ScenarioFailed(
                f"{self._heading()}\n"
                f"  expected the command to be {wanted}\n"
                f"  but it was rejected with: {self.rejection}"
            )
        return self


# --- Projections ----------------------------------------------------------------


def recorded(
    event: Any,
    *,
    position: int,
    stream: str = DEFAULT_STREAM,
    version: int = 1,
    timestamp: float | None = None,
    metadata: Metadata | None = None,
) -> RecordedEvent:
    """Wrap ``event`` in a :class:`~motet.storage.records.RecordedEvent` as
    the engine hands it to projection handlers; the timestamp defaults to
    ``DEFAULT_START + position`` seconds."""
    return RecordedEvent(
        position=position,
        stream=stream,
        version=version,
        type=tag_of(type(event)),
        event_version=event_version_of(type(event)),
        timestamp=DEFAULT_START + position if timestamp is None else timestamp,
        metadata=Metadata() if metadata is None else metadata,
        data=event,
    )


def _records(events: Sequence[Any]) -> list[RecordedEvent]:
    """Number the given events: positions from 1, versions from 1 per stream.
    An item is an event, a ``(stream, event)`` pair or a ready RecordedEvent."""
    records: list[RecordedEvent] = []
    versions: dict[str, int] = {}
    for item in events:
        if isinstance(item, RecordedEvent):
            record = item
        else:
            stream, event = item if isinstance(item, tuple) else (DEFAULT_STREAM, item)
            version = versions.get(stream, 0) + 1
            record = recorded(event, position=len(records) + 1, stream=stream, version=version)
        versions[record.stream] = record.version
        records.append(record)
    return records


class ProjectionScenario(Generic[M]):
    """A fresh read model that has applied the given events; see :func:`given`.

    Events the projection has no handler for are skipped, as the engine
    skips them. A handler's exception propagates (it is a bug to fix).
    """

    def __init__(
        self, projection: Projection[M], events: list[Any], queries: list[Query[Any, Any]]
    ) -> None:
        self.projection = projection
        self.records = _records(events)
        self._queries = {q.type: q for q in queries if q.projection == projection.name}
        model = projection.initial()
        for record in self.records:
            handler = projection.handlers.get(type(record.data))
            if handler is not None:
                handler(model, record.data, record)
        self.model: M = model
        """The read model after the given events."""

    def __repr__(self) -> str:
        return f"<ProjectionScenario {self.projection.name} events={len(self.records)}>"

    def query(self, query: Any) -> QueryOutcome:
        """Answer ``query`` from the model with the handler of its
        :class:`~motet.engine.Query` entry. A :class:`~motet.engine.MotetError`
        (e.g. ``NotFound``) is kept for :meth:`QueryOutcome.then_raises`.
        Raises ``TypeError`` when no given query entry serves its type here."""
        entry = self._queries.get(type(query))
        if entry is None:
            known = ", ".join(sorted(t.__qualname__ for t in self._queries)) or "none"
            raise TypeError(
                f"no query entry for {type(query).__qualname__} on projection "
                f"{self.projection.name!r} (pass queries= to given(); known: {known})"
            )
        try:
            return QueryOutcome(self, query, entry.handler(self.model, query), None)
        except MotetError as error:
            return QueryOutcome(self, query, None, error)


class QueryOutcome:
    """A query's answer (``answer``) or the error it raised (``error``)."""

    def __init__(
        self, scenario: ProjectionScenario[Any], query: Any, answer: Any, error: Exception | None
    ) -> None:
        self.scenario = scenario
        self.query = query
        self.answer = answer
        self.error = error

    def __repr__(self) -> str:
        outcome = "error" if self.error is not None else "answered"
        return f"<QueryOutcome {type(self.query).__qualname__} {outcome}>"

    def _heading(self) -> str:
        return (
            f"{self.scenario.projection.name}: given {len(self.scenario.records)} event(s), "
            f"query {describe(self.query)}"
        )

    def then(self, expected: Any) -> QueryOutcome:
        """Check that the answer equals ``expected`` (``expected == answer``).
        Raises :class:`ScenarioFailed` otherwise; returns ``self``."""
        __tracebackhide__ = True
        if self.error is not None:
            raise ScenarioFailed(
                f"{self._heading()}\n  expected the answer {describe(expected)}\n"
                f"  but the query raised {type(self.error).__name__}: {self.error}"
            )
        if expected != self.answer:
            want = expected if isinstance(expected, list) else [expected]
            got = self.answer if isinstance(self.answer, list) else [self.answer]
            difference = first_difference(want, got)
            raise ScenarioFailed(
                f"{self._heading()}\n"
                f"  expected:\n{describe_all(want)}\n"
                f"  actual:\n{describe_all(got)}\n"
                f"  first difference: {difference or 'the answers differ as a whole'}"
            )
        return self

    def then_raises(self, error: type[Exception], match: str | None = None) -> QueryOutcome:
        """Check that the query raised ``error`` whose message contains a
        match of ``match`` (``re.search``). Raises :class:`ScenarioFailed`
        otherwise; returns ``self``."""
        __tracebackhide__ = True
        wanted = error.__name__ + ("" if match is None else f" matching {match!r}")
        if self.error is None:
            raise ScenarioFailed(
                f"{self._heading()}\n  expected {wanted}\n  but it answered {describe(self.answer)}"
            )
        if not isinstance(self.error, error) or (
            match is not None and re.search(match, str(self.error)) is None
        ):
            raise ScenarioFailed(
                f"{self._heading()}\n  expected {wanted}\n"
                f"  but it raised {type(self.error).__name__}: {self.error}"
            )
        return self
