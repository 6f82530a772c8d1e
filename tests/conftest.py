"""Fixtures shared by the test suite."""

from __future__ import annotations

import importlib.util
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import EventStore, LmdbStore, MemoryStore


class StoreFactory:
    """Makes fresh stores of one kind and closes every one of them at teardown.

    ``factory()`` returns a new, empty store; ``factory(reopen_of=store)``
    closes an LMDB store and opens its directory again (memory stores cannot be
    reopened). Keyword options (``durability``, ``map_size``) go to
    :class:`LmdbStore` and are ignored for memory stores.
    """

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self._directory = directory
        self._stores: list[Any] = []
        self._made = 0

    def __repr__(self) -> str:
        return f"<StoreFactory kind={self.kind} made={self._made}>"

    @property
    def persistent(self) -> bool:
        """Whether stores of this kind survive being closed and reopened."""
        return self.kind == "lmdb"

    def __call__(self, *, reopen_of: Any = None, **options: Any) -> EventStore:
        if reopen_of is None:
            self._made += 1
        if self.kind == "memory":
            if reopen_of is not None:
                raise ValueError("a memory store cannot be reopened; check factory.persistent")
            store: Any = MemoryStore()
        elif self.kind == "lmdb":
            if reopen_of is not None:
                path = reopen_of.path
                # One LMDB environment must never be open twice in one process.
                reopen_of.close()
            else:
                path = self._directory / f"store-{self._made}"
            store = LmdbStore(path, **options)
        else:
            raise ValueError(f"unknown store kind {self.kind!r}")
        self._stores.append(store)
        return store  # type: ignore[no-any-return]

    def close_all(self) -> None:
        for store in self._stores:
            store.close()


@pytest.fixture(params=["memory", "lmdb"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A :class:`StoreFactory` for each store implementation."""
    factory = StoreFactory(request.param, tmp_path)
    try:
        yield factory
    finally:
        factory.close_all()


@pytest.fixture
def lmdb_store_factory(tmp_path: Path) -> Iterator[StoreFactory]:
    """A :class:`StoreFactory` making LMDB stores only (for LMDB-specific tests)."""
    factory = StoreFactory("lmdb", tmp_path)
    try:
        yield factory
    finally:
        factory.close_all()


@pytest.fixture
def store(store_factory: StoreFactory) -> EventStore:
    """A fresh, empty store of each implementation."""
    return store_factory()


@pytest.fixture(scope="session")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """``(server_context, client_context)`` for TLS to 127.0.0.1: a throwaway CA
    from ``trustme`` when it is installed, else a self-signed certificate made
    with ``openssl req``."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client = ssl.create_default_context()
    if importlib.util.find_spec("trustme") is not None:
        import trustme

        ca = trustme.CA()
        ca.issue_cert("127.0.0.1").configure_cert(server)
        ca.configure_trust(client)
        return server, client
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server.load_cert_chain(cert, key)
    client.load_verify_locations(cert)
    return server, client
