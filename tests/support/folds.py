"""The example's user state, folded from events by hand: what a test compares
the engine's live and reloaded states with."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from motet.engine.example import UserState, evolve, user

__all__ = ["fold_user"]


def fold_user(events: Iterable[Any]) -> UserState:
    """The state after ``events``, folded from the user aggregate's initial state."""
    state = user.initial
    for event in events:
        state = evolve(state, event)
    return state
