"""The storage contract (tests/storage/contract.py), run against every
store implementation: each joins with one subclass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from motet.storage import MAX_KEY_BYTES, check_key
from tests.storage.contract import (
    LmdbStoreFactory,
    MemoryStoreFactory,
    StoreContract,
    StoreFactory,
)


class TestMemoryStore(StoreContract):
    def new_factory(self, directory: Path) -> StoreFactory:
        return MemoryStoreFactory()


class TestLmdbStore(StoreContract):
    def new_factory(self, directory: Path) -> StoreFactory:
        return LmdbStoreFactory(directory)


# -- key validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["User-1", "a", "x" * MAX_KEY_BYTES, "é" * (MAX_KEY_BYTES // 2), "\x01", "ünï €"]
)
def test_check_key_accepts_usable_ids(value: str) -> None:
    check_key("stream id", value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", r"^stream id must be a non-empty string, got ''$"),
        (None, r"^stream id must be a non-empty string, got None$"),
        (b"User-1", r"^stream id must be a non-empty string, got b'User-1'$"),
        ("User\x00-1", r"^stream id must not contain NUL characters, got 'User\\x00-1'$"),
        ("\x00", r"must not contain NUL characters"),
        ("x" * (MAX_KEY_BYTES + 1), r"^stream id is longer than 500 bytes: 'x{40}'\.\.\.$"),
        # 251 two-byte characters: fewer than 500 characters, more than 500 bytes.
        ("é" * (MAX_KEY_BYTES // 2 + 1), r"^stream id is longer than 500 bytes"),
    ],
)
def test_check_key_rejects_unusable_ids_naming_the_problem(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_key("stream id", value)


def test_check_key_names_the_kind_of_key() -> None:
    with pytest.raises(ValueError, match=r"^command id must be a non-empty string"):
        check_key("command id", "")
