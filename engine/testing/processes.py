"""Given/when/then scenarios for a process manager's pure reactions.

The given events are folded with ``react`` (their commands are not sent;
their timers are kept as pending, cancels drop them) to make the instance's
state; then one more event, or a pending timer firing, is checked::

    given(fulfilment, [submitted]).when(paid).then(cancel=["payment"])
    given(fulfilment, [submitted]).when_timer("payment").then(
        commands=[CancelOrder(order_id="o1", reason="not paid in time")]
    )
    given(fulfilment, [submitted, paid]).when_timer("payment").then_nothing()

Each given event is wrapped in a :class:`~motet.storage.records.RecordedEvent`
numbered from position 1, as :func:`~.scenarios.recorded` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

from motet.actors.process_manager import ProcessManager, Reaction
from motet.storage.records import RecordedEvent

from .report import ScenarioFailed, describe, describe_all, first_difference
from .scenarios import DEFAULT_STREAM, recorded

__all__ = ["ProcessScenario", "ReactionOutcome"]

S = TypeVar("S")

_UNSET: Any = object()


class ProcessScenario(Generic[S]):
    """One process instance that has reacted to the given events; see the
    module docstring."""

    def __init__(self, manager: ProcessManager[S], history: Iterable[Any]) -> None:
        self.manager = manager
        self.history = list(history)
        self.state: S = manager.initial
        """The state after the given events."""
        self.timers: dict[str, float] = {}
        """The pending timers after the given events: name → due time."""
        for position, item in enumerate(self.history, start=1):
            record = _record(item, position)
            self._fold(manager.react(self.state, record.data, record))

    def __repr__(self) -> str:
        return f"<ProcessScenario {self.manager.name} history={len(self.history)}>"

    def _fold(self, reaction: Reaction[S] | None) -> None:
        if reaction is None:
            return
        self.state = reaction.state
        for name in reaction.cancel:
            self.timers.pop(name, None)
        for timer in reaction.timers:
            self.timers[timer.name] = timer.at

    def when(self, event: Any, *, stream: str = DEFAULT_STREAM) -> ReactionOutcome[S]:
        """Run ``react`` on ``event`` (the next position of ``stream``)."""
        record = recorded(event, position=len(self.history) + 1, stream=stream)
        reaction = self.manager.react(self.state, event, record)
        return ReactionOutcome(self, f"when {describe(event)}", reaction)

    def when_timer(self, name: str) -> ReactionOutcome[S]:
        """Run ``on_timer`` for the pending timer ``name`` at its due time.

        Raises :class:`ScenarioFailed` when no such timer is pending, and
        ``TypeError`` when the manager has no ``on_timer``."""
        __tracebackhide__ = True
        on_timer = self.manager.on_timer
        if on_timer is None:
            raise TypeError(f"process manager {self.manager.name!r} has no on_timer")
        if name not in self.timers:
            pending = ", ".join(sorted(self.timers)) or "none"
            raise ScenarioFailed(
                f"{self.manager.name}: given {len(self.history)} event(s), "
                f"no timer {name!r} is pending (pending: {pending})"
            )
        reaction = on_timer(self.state, name, self.timers[name])
        return ReactionOutcome(self, f"when timer {name!r} fires", reaction)


def _record(item: Any, position: int) -> RecordedEvent:
    """A given item (an event, a ``(stream, event)`` pair or a RecordedEvent)
    as the record handed to ``react``."""
    if isinstance(item, RecordedEvent):
        return item
    stream, event = item if isinstance(item, tuple) else (DEFAULT_STREAM, item)
    return recorded(event, position=position, stream=stream)


class ReactionOutcome(Generic[S]):
    """What ``react`` or ``on_timer`` returned (``reaction``, ``None`` for
    nothing to do)."""

    def __init__(
        self, scenario: ProcessScenario[S], trigger: str, reaction: Reaction[S] | None
    ) -> None:
        self.scenario = scenario
        self.trigger = trigger
        self.reaction = reaction

    def __repr__(self) -> str:
        return f"<ReactionOutcome {self.trigger} {'nothing' if self.reaction is None else 'done'}>"

    def _heading(self) -> str:
        name = self.scenario.manager.name
        return f"{name}: given {len(self.scenario.history)} event(s), {self.trigger}"

    def then(
        self,
        *,
        commands: Sequence[Any] = _UNSET,
        timers: Sequence[Any] = _UNSET,
        cancel: Sequence[str] = _UNSET,
        state: Any = _UNSET,
    ) -> ReactionOutcome[S]:
        """Check the reaction's ``commands`` (in order), ``timers``,
        ``cancel`` and ``state``; a part not given is not checked, except that
        ``commands`` defaults to none. Raises :class:`ScenarioFailed`
        otherwise; returns ``self``."""
        __tracebackhide__ = True
        if self.reaction is None:
            raise ScenarioFailed(f"{self._heading()}\n  expected a reaction but it returned None")
        expected = {
            "commands": [] if commands is _UNSET else list(commands),
            "timers": None if timers is _UNSET else list(timers),
            "cancel": None if cancel is _UNSET else list(cancel),
            "state": None if state is _UNSET else [state],
        }
        actual = {
            "commands": list(self.reaction.commands),
            "timers": list(self.reaction.timers),
            "cancel": list(self.reaction.cancel),
            "state": [self.reaction.state],
        }
        for part, want in expected.items():
            if want is None:
                continue
            difference = first_difference(want, actual[part])
            if difference is not None:
                raise ScenarioFailed(
                    f"{self._heading()}\n"
                    f"  expected {part}:\n{describe_all(want)}\n"
                    f"  actual {part}:\n{describe_all(actual[part])}\n"
                    f"  first difference: {difference}"
                )
        return self

    def then_nothing(self) -> ReactionOutcome[S]:
        """Check that it returned ``None`` (nothing to do, nothing recorded)."""
        __tracebackhide__ = True
        if self.reaction is not None:
            raise ScenarioFailed(
                f"{self._heading()}\n  expected nothing to be done, but it returned "
                f"{len(self.reaction.commands)} command(s):\n"
                f"{describe_all(list(self.reaction.commands))}\n"
                f"  and the state {describe(self.reaction.state)}"
            )
        return self
