"""Appends the store cannot take fail alone; the rest of their batch commits.

Run against the memory and LMDB stores: the rules live in ``plan_appends``,
and both keep the command fingerprints the second test needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from motet.storage import Ack, Append, LmdbStore, MemoryStore, Metadata, NewEvent
from motet.storage.errors import CommandIdReused, InvalidKey
from motet.storage.idempotency import fingerprint_of
from motet.storage.store import MAX_COMMAND_ID_BYTES, MAX_STREAM_BYTES

TS = 1_700_000_000.0


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    opened = MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "store")
    try:
        yield opened
    finally:
        opened.close()


def one_event() -> list[NewEvent]:
    return [NewEvent("E", 1, b"\x80")]


def test_an_append_with_a_key_too_long_fails_alone(store: Any) -> None:
    longest = "S-" + "x" * (MAX_STREAM_BYTES - 2)
    results = store.append_batch(
        [
            Append("A", 0, one_event()),
            Append(longest + "x", 0, one_event()),
            Append(longest, 0, one_event()),
            Append("B", 0, one_event(), Metadata("c" * (MAX_COMMAND_ID_BYTES + 1))),
            Append("B", 0, one_event(), Metadata("c" * MAX_COMMAND_ID_BYTES)),
        ],
        TS,
    )

    assert results[0] == Ack("A", 1, 1)
    assert isinstance(results[1], InvalidKey)
    assert f"limit of {MAX_STREAM_BYTES} bytes" in str(results[1])
    assert results[2] == Ack(longest, 1, 2)
    assert isinstance(results[3], InvalidKey) and isinstance(results[3], ValueError)
    assert f"limit of {MAX_COMMAND_ID_BYTES} bytes" in str(results[3])
    assert results[4] == Ack("B", 1, 3)
    assert store.head_position == 3
    assert [e.position for e in store.read_stream(longest)] == [2]
    assert store.get_ack("c" * MAX_COMMAND_ID_BYTES) == Ack("B", 1, 3)


def test_a_command_id_of_another_command_fails_alone(store: Any) -> None:
    from motet.engine.example import CreateUser

    first = CreateUser(user_id="1", name="A", email="a@example.com", password="pw")
    other = CreateUser(user_id="1", name="B", email="a@example.com", password="pw")
    print_first = fingerprint_of(first, "k")
    appends = [
        Append("User-1", 0, one_event(), Metadata("k"), fingerprint=print_first),
        # Same batch, same id: the same command gets the first Ack, another is refused.
        Append("User-1", 1, one_event(), Metadata("k"), fingerprint=print_first),
        Append("User-1", 1, one_event(), Metadata("k"), fingerprint=fingerprint_of(other, "k")),
        Append("User-2", 0, one_event(), Metadata("k"), fingerprint=print_first),
        Append("User-3", 0, one_event()),
    ]
    results = store.append_batch(appends, TS)

    assert results[0] == results[1] == Ack("User-1", 1, 1)
    assert isinstance(results[2], CommandIdReused)
    assert "'k' was already used by a CreateUser command on stream 'User-1'" in str(results[2])
    assert isinstance(results[3], CommandIdReused)
    assert results[4] == Ack("User-3", 1, 2)
    # And in a later batch, against the stored record.
    later = store.append_batch(
        [Append("User-1", 1, one_event(), Metadata("k"), fingerprint=fingerprint_of(other, "k"))],
        TS,
    )
    assert isinstance(later[0], CommandIdReused)
    assert store.head_position == 2


@pytest.mark.parametrize("size", [MAX_STREAM_BYTES + 1, 600])
def test_reads_of_a_stream_id_too_long_are_refused_naming_the_limit(size: int) -> None:
    from motet.storage.store import check_stream_id

    with pytest.raises(
        ValueError, match=rf"is {size} bytes of UTF-8, longer than the limit of 502"
    ):
        check_stream_id("s" * size)
