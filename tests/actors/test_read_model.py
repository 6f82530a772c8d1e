"""The in-memory read-model table: lookups by primary key and by unique and
non-unique indexes, index maintenance on update and delete, sorted "top N"
orders refreshed lazily, and replacing the contents from a snapshot.

Every expectation is computed from plain dicts, never from the table."""

from __future__ import annotations

import gc
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motet.actors.read_model import Order, Table


class Item(msgspec.Struct, kw_only=True):
    id: int
    email: str | None = None
    city: str | None = None
    score: int = 0
    note: str = ""


def make_table() -> Table[Item]:
    return Table(
        Item,
        key="id",
        unique=("email",),
        indexes=("city",),
        orders=(
            # Largest score first, ties by id (the key ends with the primary key).
            Order("best", lambda row: (-row.score, row.id)),
            # A key without the primary key: ties must still come out by id.
            Order("score", lambda row: row.score),
        ),
    )


def fields(row: Item | None) -> dict[str, Any] | None:
    return None if row is None else msgspec.structs.asdict(row)


def ids(rows: list[Item]) -> list[int]:
    return [row.id for row in rows]


# -- lookups ------------------------------------------------------------------------------


def test_insert_then_get_one_and_where_find_the_row() -> None:
    table = make_table()
    ada = Item(id=1, email="ada@x.org", city="Paris", score=3)
    bob = Item(id=2, email="bob@x.org", city="Paris", score=1)
    cy = Item(id=3, email=None, city="Lyon", score=2)
    for row in (bob, ada, cy):
        table.insert(row)

    assert len(table) == 3
    assert 1 in table and 4 not in table
    assert table.get(1) is ada
    assert table.get(4) is None
    assert table.one("email", "bob@x.org") is bob
    assert table.one("email", "nobody@x.org") is None
    assert ids(table.where("city", "Paris")) == [1, 2]  # by primary key, not insertion
    assert ids(table.where("city", "Lyon")) == [3]
    assert table.where("city", "Rome") == []
    assert sorted(ids(list(table))) == [1, 2, 3]
    assert sorted(ids(table.rows())) == [1, 2, 3]
    assert repr(table) == (
        "<Table Item rows=3 unique=['email'] indexes=['city'] orders=['best', 'score']>"
    )


def test_none_values_are_not_indexed() -> None:
    table = make_table()
    table.insert(Item(id=1))
    table.insert(Item(id=2))  # a second None email is no unique violation
    assert table.one("email", None) is None
    assert table.where("city", None) == []


def test_insert_of_a_taken_primary_key_raises_key_error_and_changes_nothing() -> None:
    table = make_table()
    first = Item(id=1, email="a@x.org", city="Paris")
    table.insert(first)
    with pytest.raises(KeyError, match="Item 1 already exists"):
        table.insert(Item(id=1, email="b@x.org", city="Lyon"))
    assert table.get(1) is first
    assert table.one("email", "b@x.org") is None
    assert table.where("city", "Lyon") == []
    assert len(table) == 1


def test_insert_of_a_taken_unique_value_raises_value_error_and_changes_nothing() -> None:
    table = make_table()
    table.insert(Item(id=1, email="a@x.org", city="Paris", score=1))
    with pytest.raises(ValueError, match=r"email 'a@x.org' is already used by 1"):
        table.insert(Item(id=2, email="a@x.org", city="Lyon", score=9))
    assert 2 not in table
    assert table.one("email", "a@x.org").id == 1  # type: ignore[union-attr]
    assert table.where("city", "Lyon") == []
    assert ids(table.top("best", 10)) == [1]


# -- update -------------------------------------------------------------------------------


def test_update_of_an_indexed_email_moves_the_row_in_the_unique_index() -> None:
    table = make_table()
    row = Item(id=1, email="old@x.org", city="Paris")
    table.insert(row)
    assert table.update(1, email="new@x.org") is row
    assert row.email == "new@x.org"
    assert table.one("email", "old@x.org") is None
    assert table.one("email", "new@x.org") is row
    # The old address is free again.
    table.insert(Item(id=2, email="old@x.org"))
    assert table.one("email", "old@x.org").id == 2  # type: ignore[union-attr]


def test_update_of_a_city_moves_the_row_between_non_unique_index_entries() -> None:
    table = make_table()
    for i, city in [(1, "Paris"), (2, "Paris"), (3, "Lyon")]:
        table.insert(Item(id=i, city=city))
    table.update(2, city="Lyon")
    assert ids(table.where("city", "Paris")) == [1]
    assert ids(table.where("city", "Lyon")) == [2, 3]
    table.update(1, city="Lyon")
    assert table.where("city", "Paris") == []
    assert ids(table.where("city", "Lyon")) == [1, 2, 3]
    table.update(3, city=None)
    assert ids(table.where("city", "Lyon")) == [1, 2]
    table.update(3, city="Paris")
    assert ids(table.where("city", "Paris")) == [3]


def test_update_to_the_rows_own_unique_value_is_allowed() -> None:
    table = make_table()
    table.insert(Item(id=1, email="a@x.org", score=1))
    table.update(1, email="a@x.org", score=5)
    assert table.one("email", "a@x.org").score == 5  # type: ignore[union-attr]


def test_update_to_a_taken_unique_value_raises_and_changes_nothing() -> None:
    table = make_table()
    table.insert(Item(id=1, email="a@x.org", city="Paris", score=1))
    other = Item(id=2, email="b@x.org", city="Lyon", score=2)
    table.insert(other)
    before = fields(other)
    assert ids(table.top("best", 10)) == [2, 1]

    # The valid changes in the same call (city, score) must not happen either.
    with pytest.raises(ValueError, match=r"email 'a@x.org' is already used by 1"):
        table.update(2, city="Rome", score=100, email="a@x.org")

    assert fields(other) == before
    assert table.one("email", "a@x.org").id == 1  # type: ignore[union-attr]
    assert table.one("email", "b@x.org") is other
    assert ids(table.where("city", "Lyon")) == [2]
    assert table.where("city", "Rome") == []
    assert ids(table.top("best", 10)) == [2, 1]


def test_update_of_a_missing_row_raises_key_error() -> None:
    table = make_table()
    with pytest.raises(KeyError):
        table.update(7, city="Paris")
    assert table.where("city", "Paris") == []


def test_update_of_a_sort_field_reorders_top() -> None:
    table = make_table()
    for i, score in [(1, 5), (2, 3), (3, 1)]:
        table.insert(Item(id=i, score=score))
    assert ids(table.top("best", 3)) == [1, 2, 3]
    table.update(3, score=10)
    assert ids(table.top("best", 3)) == [3, 1, 2]
    table.update(1, score=0)
    assert ids(table.top("best", 3)) == [3, 2, 1]
    assert ids(table.top("score", 3)) == [1, 2, 3]


# -- delete -------------------------------------------------------------------------------


def test_delete_removes_the_row_from_every_index_and_order() -> None:
    table = make_table()
    gone = Item(id=2, email="b@x.org", city="Paris", score=9)
    table.insert(Item(id=1, email="a@x.org", city="Paris", score=1))
    table.insert(gone)
    assert ids(table.top("best", 5)) == [2, 1]

    assert table.delete(2) is gone
    assert table.get(2) is None
    assert 2 not in table
    assert len(table) == 1
    assert table.one("email", "b@x.org") is None
    assert ids(table.where("city", "Paris")) == [1]
    assert ids(table.top("best", 5)) == [1]
    assert ids(table.top("score", 5)) == [1]

    assert table.delete(2) is None  # deleting twice is harmless
    table.delete(1)
    assert table.where("city", "Paris") == []
    assert table.top("best", 5) == []
    # The unique value and the key can be used again.
    table.insert(Item(id=2, email="b@x.org"))
    assert table.one("email", "b@x.org").id == 2  # type: ignore[union-attr]


# -- touch and top ------------------------------------------------------------------------


def test_touch_picks_up_an_in_place_change_of_a_sort_field() -> None:
    table = make_table()
    for i in range(1, 4):
        table.insert(Item(id=i, score=i))
    assert ids(table.top("best", 3)) == [3, 2, 1]
    row = table.get(1)
    assert row is not None
    row.score = 50
    table.touch(1)
    assert ids(table.top("best", 3)) == [1, 3, 2]
    table.touch(99)  # an unknown key is harmless
    assert ids(table.top("best", 3)) == [1, 3, 2]


def test_top_breaks_ties_by_primary_key_and_honours_the_limit() -> None:
    table = make_table()
    for i, score in [(5, 2), (3, 2), (9, 7), (1, 2), (4, 0), (2, 7)]:
        table.insert(Item(id=i, score=score))
    assert ids(table.top("best", 10)) == [2, 9, 1, 3, 5, 4]
    assert ids(table.top("score", 10)) == [4, 1, 3, 5, 2, 9]
    assert ids(table.top("best", 3)) == [2, 9, 1]
    assert table.top("best", 0) == []
    assert table.top("best", -1) == []
    # Equal keys after an update still come out by primary key.
    table.update(4, score=7)
    assert ids(table.top("best", 3)) == [2, 4, 9]


def test_a_few_changes_in_a_big_table_are_merged_into_the_sorted_order() -> None:
    # Few dirty rows among many take the incremental path, many take a full sort:
    # both must give exactly the order of a fresh sort.
    table = make_table()
    scores = {i: (i * 7919) % 101 for i in range(1_000)}
    for i, score in scores.items():
        table.insert(Item(id=i, score=score))

    def expected(limit: int) -> list[int]:
        return sorted(scores, key=lambda i: (-scores[i], i))[:limit]

    assert ids(table.top("best", 50)) == expected(50)
    for step, i in enumerate([17, 400, 999]):
        scores[i] = 100 + step
        table.update(i, score=scores[i])
        if step == 1:
            table.delete(3)
            del scores[3]
    assert ids(table.top("best", 50)) == expected(50)
    assert ids(table.top("best", 2_000)) == expected(2_000)
    for i in range(0, 1_000, 3):
        if i in scores:
            scores[i] = -i
            table.update(i, score=-i)
    assert ids(table.top("best", 2_000)) == expected(2_000)


# -- load ---------------------------------------------------------------------------------


def test_load_replaces_the_contents_and_every_index() -> None:
    table = make_table()
    table.insert(Item(id=1, email="a@x.org", city="Paris", score=5))
    table.insert(Item(id=2, email="b@x.org", city="Paris", score=9))
    assert ids(table.top("best", 5)) == [2, 1]

    # Loading a table's own rows (a snapshot round trip) keeps it intact.
    table.load(table.rows())
    assert ids(table.top("best", 5)) == [2, 1]
    assert table.one("email", "a@x.org").id == 1  # type: ignore[union-attr]

    table.load([Item(id=3, email="a@x.org", city="Lyon", score=1), Item(id=4, score=2)])
    assert len(table) == 2
    assert table.get(1) is None and table.get(2) is None
    assert table.one("email", "a@x.org").id == 3  # type: ignore[union-attr]
    assert table.one("email", "b@x.org") is None
    assert table.where("city", "Paris") == []
    assert ids(table.where("city", "Lyon")) == [3]
    assert ids(table.top("best", 5)) == [4, 3]
    assert ids(table.top("score", 5)) == [3, 4]

    table.load([])
    assert len(table) == 0
    assert table.top("best", 5) == []
    assert table.where("city", "Lyon") == []


# -- what the garbage collector sees ------------------------------------------------------


def tracked_in_index(table: Table[Item], index: str) -> list[Any]:
    """The objects of a non-unique index the garbage collector tracks."""
    buckets = table._indexes[index]
    return [bucket for bucket in buckets.values() if gc.is_tracked(bucket)]


def test_an_index_value_of_one_row_holds_its_key_and_only_shared_values_hold_a_set() -> None:
    table = make_table()
    for key in range(1, 6):
        table.insert(Item(id=key, city=f"city-{key}"))
    # Five distinct values: five keys, no set for the collector to walk.
    assert tracked_in_index(table, "city") == []
    assert ids(table.where("city", "city-3")) == [3]
    assert ids(table.page_where("city", "city-3", 10)) == [3]
    assert ids(table.page_where("city", "city-3", 10, after=3)) == []

    table.update(4, city="city-3")
    table.update(5, city="city-3")
    assert tracked_in_index(table, "city") == [{3, 4, 5}]
    assert ids(table.where("city", "city-3")) == [3, 4, 5]
    assert ids(table.page_where("city", "city-3", 2, after=3)) == [4, 5]
    assert table.where("city", "city-4") == []

    table.delete(3)
    assert ids(table.where("city", "city-3")) == [4, 5]
    # Down to one row again: its key alone.
    table.update(4, city="city-1")
    assert tracked_in_index(table, "city") == [{1, 4}]
    assert ids(table.where("city", "city-3")) == [5]
    assert ids(table.page_where("city", "city-3", 5)) == [5]
    table.delete(5)
    table.update(1, city=None)
    assert tracked_in_index(table, "city") == []
    assert table.where("city", "city-3") == []
    assert ids(table.where("city", "city-1")) == [4]
    assert table._indexes["city"] == {"city-1": 4, "city-2": 2}


def test_tuple_keys_are_indexed_as_keys_not_as_collections_of_keys() -> None:
    table: Table[Pair] = Table(Pair, key="key", indexes=("city",))
    table.insert(Pair(key=(1, 2), city="Paris"))
    assert [row.key for row in table.where("city", "Paris")] == [(1, 2)]
    table.insert(Pair(key=(3,), city="Paris"))
    assert [row.key for row in table.where("city", "Paris")] == [(1, 2), (3,)]
    table.delete((1, 2))
    assert [row.key for row in table.where("city", "Paris")] == [(3,)]
    assert [row.key for row in table.page_where("city", "Paris", 1)] == [(3,)]


class Pair(msgspec.Struct, kw_only=True):
    key: tuple[int, ...]
    city: str | None = None


# -- random operations against a dict ---------------------------------------------------------

KEYS = st.integers(0, 25)
EMAILS = st.sampled_from([None, "a@x.org", "b@x.org", "c@x.org", "d@x.org"])
CITIES = st.sampled_from([None, "Paris", "Lyon", "Rome"])
SCORES = st.integers(-3, 3)  # narrow, so ties are common

operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), KEYS, EMAILS, CITIES, SCORES),
        st.tuples(
            st.just("update"),
            KEYS,
            st.fixed_dictionaries({}, optional={"email": EMAILS, "city": CITIES, "score": SCORES}),
        ),
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("touch"), KEYS, SCORES),
        st.tuples(st.just("load"), st.booleans()),
        # Reading top only now and then lets dirty rows pile up (full re-sort)
        # as well as come one at a time (incremental merge).
        st.tuples(st.just("top"), st.integers(0, 30)),
    ),
    min_size=30,
    max_size=150,
)


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_random_operations_agree_with_a_dict(ops: list[tuple[Any, ...]]) -> None:
    table = make_table()
    model: dict[int, dict[str, Any]] = {}

    def email_owner(email: str | None) -> int | None:
        owners = [k for k, r in model.items() if email is not None and r["email"] == email]
        return owners[0] if owners else None

    def check_top(limit: int) -> None:
        best = sorted(model, key=lambda k: (-model[k]["score"], k))
        plain = sorted(model, key=lambda k: (model[k]["score"], k))
        assert ids(table.top("best", limit)) == best[:limit]
        assert ids(table.top("score", limit)) == plain[:limit]

    for op in ops:
        kind = op[0]
        if kind == "insert":
            _, key, email, city, score = op
            if key in model:
                with pytest.raises(KeyError):
                    table.insert(Item(id=key, email=email, city=city, score=score))
            elif email_owner(email) is not None:
                with pytest.raises(ValueError, match="is already used by"):
                    table.insert(Item(id=key, email=email, city=city, score=score))
            else:
                table.insert(Item(id=key, email=email, city=city, score=score))
                model[key] = {"id": key, "email": email, "city": city, "score": score, "note": ""}
        elif kind == "update":
            _, key, changes = op
            owner = email_owner(changes.get("email"))
            if key not in model:
                with pytest.raises(KeyError):
                    table.update(key, **changes)
            elif owner is not None and owner != key:
                with pytest.raises(ValueError, match="is already used by"):
                    table.update(key, **changes)
            else:
                table.update(key, **changes)
                model[key].update(changes)
        elif kind == "delete":
            _, key = op
            removed = table.delete(key)
            assert fields(removed) == model.pop(key, None)
        elif kind == "touch":
            _, key, score = op
            row = table.get(key)
            if row is not None:
                row.score = score
                model[key]["score"] = score
            table.touch(key)
        elif kind == "load":
            _, fresh = op
            # From copies (as a snapshot decodes them) or from the rows themselves.
            rows = [Item(**dict(r)) for r in model.values()] if fresh else table.rows()
            table.load(rows)
        else:
            check_top(op[1])

        # Lookups are never lazy: they agree with the dict after every step.
        assert len(table) == len(model)
        assert {row.id: fields(row) for row in table} == model
        for key in range(26):
            assert fields(table.get(key)) == model.get(key)
        for email in ("a@x.org", "b@x.org", "c@x.org", "d@x.org"):
            owner = email_owner(email)
            assert fields(table.one("email", email)) == (None if owner is None else model[owner])
        for city in ("Paris", "Lyon", "Rome"):
            in_city = sorted(k for k, r in model.items() if r["city"] == city)
            assert ids(table.where("city", city)) == in_city
            assert (
                ids(table.page_where("city", city, 2, after=5)) == [k for k in in_city if k > 5][:2]
            )
    check_top(30)
