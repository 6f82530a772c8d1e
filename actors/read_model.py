"""In-memory read-model tables: a primary key, secondary indexes (unique and
non-unique) and sorted orders for "top N" queries.

Rows are mutable ``msgspec.Struct`` instances owned by the table: change them
only through :meth:`Table.update`, which keeps the indexes right. Sorted
orders are maintained lazily: an update only marks the row dirty, and the
next :meth:`Table.top` re-sorts just the dirty rows (or everything, when most
rows changed), so a catch-up over millions of events pays nothing for an
order until somebody reads it.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Generic, TypeAlias, TypeVar, cast

import msgspec

__all__ = ["Order", "Table"]

R = TypeVar("R", bound=msgspec.Struct)


class Order:
    """A sorted order over a table's rows: ``key(row)`` gives the sort key
    (smallest first; negate numbers for "largest first", and end the key with
    the primary key to break ties deterministically)."""

    __slots__ = ("_dirty", "_entries", "_keys", "key", "name")

    def __init__(self, name: str, key: Callable[[Any], Any]) -> None:
        self.name = name
        self.key = key
        self._entries: list[tuple[Any, Hashable]] = []
        self._keys: dict[Hashable, Any] = {}
        self._dirty: set[Hashable] = set()

    def __repr__(self) -> str:
        return f"<Order {self.name} rows={len(self._keys)} dirty={len(self._dirty)}>"

    def mark(self, pk: Hashable) -> None:
        """Note that the row ``pk`` was inserted, changed or deleted."""
        self._dirty.add(pk)

    def clear(self) -> None:
        """Forget every entry (the table was emptied)."""
        self._entries.clear()
        self._keys.clear()
        self._dirty.clear()

    def refresh(self, rows: dict[Hashable, Any]) -> None:
        """Bring the sorted entries up to date with ``rows``."""
        dirty = self._dirty
        if not dirty:
            return
        if len(dirty) * 8 > len(self._keys) + 8:
            self._keys = {pk: self.key(row) for pk, row in rows.items()}
            self._entries = sorted((k, pk) for pk, k in self._keys.items())
        else:
            entries = self._entries
            for pk in dirty:
                old = self._keys.pop(pk, _MISSING)
                if old is not _MISSING:
                    del entries[bisect.bisect_left(entries, (old, pk))]
                row = rows.get(pk)
                if row is not None:
                    new = self._keys[pk] = self.key(row)
                    bisect.insort(entries, (new, pk))
        dirty.clear()

    def first(self, rows: dict[Hashable, Any], limit: int) -> list[Any]:
        self.refresh(rows)
        return [rows[pk] for _, pk in self._entries[: max(limit, 0)]]


_MISSING: Any = object()


class Table(Generic[R]):
    """Rows of type ``row_type`` by primary key ``key``, with unique indexes
    (one row per value), non-unique indexes (a set of rows per value) and
    sorted :class:`Order` s. ``None`` values are not indexed.

    A non-unique index maps a value held by one row to that row's primary
    key itself, and only a value held by several rows to a set of keys (a
    key can never be a ``set``, which is unhashable): an index of mostly
    distinct values, such as emails, then holds no set per row for the
    garbage collector to walk.

    :meth:`insert` raises ``KeyError`` for a duplicate primary key and
    ``ValueError`` when a unique index value is taken.
    """

    def __init__(
        self,
        row_type: type[R],
        *,
        key: str,
        unique: Sequence[str] = (),
        indexes: Sequence[str] = (),
        orders: Sequence[Order] = (),
    ) -> None:
        self.row_type = row_type
        self.key = key
        self._rows: dict[Hashable, R] = {}
        self._unique: dict[str, dict[Hashable, Hashable]] = {name: {} for name in unique}
        self._indexes: dict[str, dict[Hashable, _Bucket]] = {name: {} for name in indexes}
        self._orders = {order.name: order for order in orders}

    def __repr__(self) -> str:
        return (
            f"<Table {self.row_type.__name__} rows={len(self._rows)} "
            f"unique={list(self._unique)} indexes={list(self._indexes)} "
            f"orders={list(self._orders)}>"
        )

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[R]:
        return iter(self._rows.values())

    def __contains__(self, pk: Hashable) -> bool:
        return pk in self._rows

    def get(self, pk: Hashable) -> R | None:
        """The row with primary key ``pk``, or ``None``."""
        return self._rows.get(pk)

    def one(self, index: str, value: Hashable) -> R | None:
        """The row whose unique ``index`` field equals ``value``, or ``None``."""
        pk = self._unique[index].get(value)
        return None if pk is None else self._rows[pk]

    def where(self, index: str, value: Hashable) -> list[R]:
        """Rows whose non-unique ``index`` field equals ``value``, by primary key."""
        pks = _members(self._indexes[index].get(value, _MISSING))
        return [self._rows[pk] for pk in sorted(pks, key=_sort_key)]

    def page_where(
        self, index: str, value: Hashable, limit: int, after: Hashable | None = None
    ) -> list[R]:
        """The first ``limit`` rows of :meth:`where`, by primary key, whose key
        sorts after ``after`` (``None``: from the first). Costs O(n log limit)
        for n matching rows instead of sorting them all.

        Keys of one type (the usual case) compare as they are, which is the
        order of :meth:`where`; keys of types that cannot be compared fall
        back to :meth:`where`'s order by type name first."""
        pks = _members(self._indexes[index].get(value, _MISSING))
        try:
            candidates = pks if after is None else [pk for pk in pks if pk > after]  # type: ignore[operator]
            page = heapq.nsmallest(limit, candidates)  # type: ignore[type-var]
        except TypeError:
            bound = None if after is None else _sort_key(after)
            keyed = pks if bound is None else [pk for pk in pks if _sort_key(pk) > bound]
            page = heapq.nsmallest(limit, keyed, key=_sort_key)
        return [self._rows[pk] for pk in page]

    def top(self, order: str, limit: int) -> list[R]:
        """The first ``limit`` rows of a sorted order."""
        return self._orders[order].first(self._rows, limit)

    def insert(self, row: R) -> None:
        """Add a new row (see the class docstring for what it raises)."""
        pk = getattr(row, self.key)
        if pk in self._rows:
            raise KeyError(f"{self.row_type.__name__} {pk!r} already exists")
        for name, unique in self._unique.items():
            value = getattr(row, name)
            if value is not None and value in unique:
                raise ValueError(f"{name} {value!r} is already used by {unique[value]!r}")
        self._rows[pk] = row
        for name, unique in self._unique.items():
            value = getattr(row, name)
            if value is not None:
                unique[value] = pk
        for name, index in self._indexes.items():
            value = getattr(row, name)
            if value is not None:
                _index_add(index, value, pk)
        for order in self._orders.values():
            order.mark(pk)

    def update(self, pk: Hashable, **changes: Any) -> R:
        """Change fields of the row ``pk`` and keep every index right.

        Raises ``KeyError`` when there is no such row and ``ValueError`` when
        a unique index value is taken by another row (nothing is changed).
        """
        row = self._rows[pk]
        for name, value in changes.items():
            unique = self._unique.get(name)
            if unique is not None and value is not None and unique.get(value, pk) != pk:
                raise ValueError(f"{name} {value!r} is already used by {unique[value]!r}")
        for name, value in changes.items():
            old = getattr(row, name)
            if old == value:
                continue
            unique = self._unique.get(name)
            if unique is not None:
                if old is not None:
                    del unique[old]
                if value is not None:
                    unique[value] = pk
            index = self._indexes.get(name)
            if index is not None:
                if old is not None:
                    _index_remove(index, old, pk)
                if value is not None:
                    _index_add(index, value, pk)
            setattr(row, name, value)
        for order in self._orders.values():
            order.mark(pk)
        return row

    def touch(self, pk: Hashable) -> None:
        """Note that fields of row ``pk`` used by no index were changed in
        place (the cheap alternative to :meth:`update` on a hot path); sorted
        orders pick the change up."""
        for order in self._orders.values():
            order.mark(pk)

    def delete(self, pk: Hashable) -> R | None:
        """Remove the row ``pk`` and return it (``None`` when absent)."""
        row = self._rows.pop(pk, None)
        if row is None:
            return None
        for name, unique in self._unique.items():
            value = getattr(row, name)
            if value is not None:
                del unique[value]
        for name, index in self._indexes.items():
            value = getattr(row, name)
            if value is not None:
                _index_remove(index, value, pk)
        for order in self._orders.values():
            order.mark(pk)
        return row

    def rows(self) -> list[R]:
        """Every row, for serialization (see :meth:`load`)."""
        return list(self._rows.values())

    def load(self, rows: Sequence[R]) -> None:
        """Replace the contents with ``rows`` (e.g. from a read-model snapshot)."""
        self._rows.clear()
        for unique in self._unique.values():
            unique.clear()
        for index in self._indexes.values():
            index.clear()
        for order in self._orders.values():
            order.clear()
        for row in rows:
            self.insert(row)


_Bucket: TypeAlias = Hashable | set[Hashable]
"""What a non-unique index maps a value to: the primary key of the one row
holding it, or the set of keys of the rows (two or more) holding it."""


def _members(bucket: _Bucket) -> tuple[Hashable, ...] | set[Hashable]:
    """The primary keys in ``bucket`` (none for :data:`_MISSING`)."""
    if type(bucket) is set:
        return bucket
    return () if bucket is _MISSING else (cast(Hashable, bucket),)


def _index_add(index: dict[Hashable, _Bucket], value: Hashable, pk: Hashable) -> None:
    """Add row ``pk`` to the rows holding ``value``."""
    bucket = index.get(value, _MISSING)
    if bucket is _MISSING:
        index[value] = pk
    elif type(bucket) is set:
        bucket.add(pk)
    elif bucket != pk:
        index[value] = {bucket, pk}


def _index_remove(index: dict[Hashable, _Bucket], value: Hashable, pk: Hashable) -> None:
    """Remove row ``pk`` from the rows holding ``value``."""
    bucket = index[value]
    if type(bucket) is not set:
        if bucket == pk:
            del index[value]
        return
    bucket.discard(pk)
    if len(bucket) == 1:
        # Back to one row: its key alone, so the set can go.
        index[value] = next(iter(bucket))


def _sort_key(pk: Hashable) -> tuple[str, Any]:
    return (type(pk).__name__, pk)
