"""The stream-id convention: ``"<category>-<aggregate id>"``.

An aggregate's stream is named after its type (the category) and its id,
joined by the first ``-``; category names contain no ``-``, ids may. The
writer counts snapshots per category, and consumer groups and
subscriptions filter by it, so the convention lives here, once.
"""

from __future__ import annotations

__all__ = ["SEPARATOR", "category_of", "stream_id"]

SEPARATOR = "-"
"""Between the category and the aggregate id; never part of a category."""


def stream_id(category: str, aggregate_id: str) -> str:
    """The stream of aggregate ``aggregate_id`` of type ``category``."""
    return f"{category}{SEPARATOR}{aggregate_id}"


def category_of(stream: str) -> str:
    """The category of ``stream``: what precedes its first ``-`` (the whole
    id when it has none)."""
    return stream.partition(SEPARATOR)[0]
