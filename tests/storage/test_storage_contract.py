"""The storage contract (tests/storage/contract.py), run against every
store implementation: each joins with one subclass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from motet.storage import MAX_KEY_BYTES, check_key, lmdb_store
from motet.storage.postgres_store import PostgresStore
from motet.storage.store import EventStore
from tests.storage.contract import (
    LmdbStoreFactory,
    MemoryStoreFactory,
    StoreContract,
    StoreFactory,
)
from tests.support.postgres import Cluster, new_schema_url


class TestMemoryStore(StoreContract):
    def new_factory(self, directory: Path) -> StoreFactory:
        return MemoryStoreFactory()


class TestLmdbStore(StoreContract):
    def new_factory(self, directory: Path) -> StoreFactory:
        return LmdbStoreFactory(directory)


class TestLmdbStoreWritingItsIndexOften(StoreContract):
    """The LMDB store writing its stream index whenever 3 rows are held (not
    thousands), so that the contract also runs across index writes."""

    @pytest.fixture(autouse=True)
    def _few_rows(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(lmdb_store, "FLUSH_ROWS", 3)

    def new_factory(self, directory: Path) -> StoreFactory:
        return LmdbStoreFactory(directory)


class PostgresStoreFactory(StoreFactory):
    """Makes :class:`PostgresStore` instances, each in a fresh schema of the
    session's throwaway cluster; a reopened store connects to the same schema."""

    persistent = True
    durability = "sync"

    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self._cluster = cluster
        self._urls: dict[int, str] = {}

    def _open(self, number: int, reopen_of: Any, options: dict[str, Any]) -> EventStore:
        if reopen_of is not None:
            url = self._urls[id(reopen_of)]
            reopen_of.close()
        else:
            url = new_schema_url(self._cluster)
        store = PostgresStore(url, **{k: v for k, v in options.items() if k != "map_size"})
        self._urls[id(store)] = url
        return store


class TestPostgresStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _cluster(self, postgres_cluster: Cluster) -> None:
        self.cluster = postgres_cluster

    def new_factory(self, directory: Path) -> StoreFactory:
        return PostgresStoreFactory(self.cluster)


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
        (
            "x" * (MAX_KEY_BYTES + 1),
            r"^stream id is 512 bytes of UTF-8, longer than the limit of 511 bytes: "
            r"'x{40}'\.\.\.$",
        ),
        # 256 two-byte characters: fewer than 511 characters, more than 511 bytes.
        ("é" * (MAX_KEY_BYTES // 2 + 1), r"^stream id is 512 bytes of UTF-8, longer than"),
    ],
)
def test_check_key_rejects_unusable_ids_naming_the_problem(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_key("stream id", value)


def test_check_key_names_the_kind_of_key() -> None:
    with pytest.raises(ValueError, match=r"^command id must be a non-empty string"):
        check_key("command id", "")
