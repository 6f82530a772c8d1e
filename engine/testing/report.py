"""Readable failure messages: events shown as their fields, the first
difference between what was expected and what happened pointed out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

__all__ = ["ScenarioFailed", "describe", "describe_all", "first_difference"]


class ScenarioFailed(AssertionError):
    """A scenario's expectation did not hold. The message lists the expected
    and the actual outcome and points at the first difference."""


def _fields(value: Any) -> dict[str, Any] | None:
    names = getattr(type(value), "__struct_fields__", None)
    if names is not None:
        return {name: getattr(value, name) for name in names}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


def describe(value: Any) -> str:
    """``Type(field=value, ...)`` with every field, whatever the type's repr
    hides or leaves out; other values as their repr."""
    fields = _fields(value)
    if fields is None:
        return repr(value)
    inner = ", ".join(f"{name}={field!r}" for name, field in fields.items())
    return f"{type(value).__qualname__}({inner})"


def describe_all(values: Sequence[Any], indent: str = "    ") -> str:
    """One line per value, numbered from 0; ``(none)`` for an empty list."""
    if not values:
        return f"{indent}(none)"
    return "\n".join(f"{indent}[{i}] {describe(value)}" for i, value in enumerate(values))


def first_difference(expected: Sequence[Any], actual: Sequence[Any]) -> str | None:
    """Where two lists of events first differ, as a sentence; ``None`` when
    every expected value equals the actual one (compared ``expected == actual``,
    so a sentinel such as ``ANY`` in an expected field matches anything)."""
    for i, (want, got) in enumerate(zip(expected, actual, strict=False)):
        difference = _value_difference(want, got)
        if difference is not None:
            return f"event [{i}]: {difference}"
    if len(expected) > len(actual):
        return f"event [{len(actual)}] {describe(expected[len(actual)])} is missing"
    if len(actual) > len(expected):
        return f"event [{len(expected)}] {describe(actual[len(expected)])} was not expected"
    return None


def _value_difference(want: Any, got: Any) -> str | None:
    if type(want) is not type(got):
        if want == got:  # a sentinel standing for a whole event
            return None
        return f"expected a {type(want).__qualname__}, got a {type(got).__qualname__}"
    want_fields, got_fields = _fields(want), _fields(got)
    if want_fields is None or got_fields is None:
        return None if want == got else f"expected {want!r}, got {got!r}"
    for name, value in want_fields.items():
        if value != got_fields[name]:
            return (
                f"{type(want).__qualname__} field {name!r}: "
                f"expected {value!r}, got {got_fields[name]!r}"
            )
    return None
