"""Fixtures of the HTTP tests: an engine and its HTTP server on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from motet.engine import Engine, open_engine
from motet.engine.example import app as example_app
from motet.engine.net.http import HttpServer, open_http_server
from tests.http.support import Http


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with open_engine(tmp_path / "store", example_app, durability="none") as engine:
        yield engine


@pytest.fixture
async def http_server(engine: Engine) -> AsyncIterator[HttpServer]:
    async with open_http_server(engine, port=0) as server:
        yield server


@pytest.fixture
def http(http_server: HttpServer) -> Http:
    return Http(http_server.port)
