"""Test an application's domain: scenarios for aggregates and projections,
a clock the test controls, and a pytest plugin with an engine fixture.

Example::

    from motet.engine.testing import given

    def test_deposit():
        given(account, [Deposited(amount=5)]).when(
            Deposit(account_id="a1", amount=7)
        ).then([Deposited(amount=7)])

    def test_zero_is_refused():
        given(account).when(Deposit(account_id="a1", amount=0)).then_rejected(match="> 0")

The scenarios run ``decide``/``evolve``, the projection handlers and the
process managers' reactions directly, without trio. The plugin (loaded by
pytest through the ``pytest11`` entry point) adds the ``clock``,
``motet_app`` and ``motet_engine`` fixtures; see
:mod:`motet.engine.testing.plugin`. Each name below is imported when first
used (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unittest.mock import ANY

    from .clock import DEFAULT_START, Clock, now, use_clock
    from .processes import ProcessScenario, ReactionOutcome
    from .report import ScenarioFailed
    from .scenarios import (
        DEFAULT_STREAM,
        AggregateScenario,
        CommandOutcome,
        ProjectionScenario,
        QueryOutcome,
        given,
        recorded,
    )

# Each public name and the module that defines it.
_MODULES: dict[str, str] = {
    # Any value compares equal to it: a field (or an event) whose value the
    # test does not pin down, such as a random salt.
    "ANY": "unittest.mock",
    **dict.fromkeys(["DEFAULT_START", "Clock", "now", "use_clock"], "motet.engine.testing.clock"),
    **dict.fromkeys(["ProcessScenario", "ReactionOutcome"], "motet.engine.testing.processes"),
    "ScenarioFailed": "motet.engine.testing.report",
    **dict.fromkeys(
        [
            "DEFAULT_STREAM",
            "AggregateScenario",
            "CommandOutcome",
            "ProjectionScenario",
            "QueryOutcome",
            "given",
            "recorded",
        ],
        "motet.engine.testing.scenarios",
    ),
}

__all__ = [
    "ANY",
    "DEFAULT_START",
    "DEFAULT_STREAM",
    "AggregateScenario",
    "Clock",
    "CommandOutcome",
    "ProcessScenario",
    "ProjectionScenario",
    "QueryOutcome",
    "ReactionOutcome",
    "ScenarioFailed",
    "given",
    "now",
    "recorded",
    "use_clock",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
