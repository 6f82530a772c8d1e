"""Fixtures of the storage tests (the contract's own are in contract.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.contract import LmdbStoreFactory


@pytest.fixture
def lmdb_store_factory(tmp_path: Path) -> Iterator[LmdbStoreFactory]:
    """A factory of LMDB stores in ``tmp_path`` (for LMDB-specific tests),
    closing them all at teardown."""
    factory = LmdbStoreFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close_all()
