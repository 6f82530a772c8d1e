"""The FastAPI example (docs/examples/fastapi_app.py): its lifespan opens the
asyncio engine; requests go through httpx's ASGI transport and through a real
uvicorn on 127.0.0.1 (on the default loop and on uvloop)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "fastapi_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("motet_fastapi_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def exercise(http: Any) -> None:
    """What a user of the example does: create, order, read their writes, fail."""
    user = {"user_id": "u1", "name": "Ann", "email": "ann@example.org", "password": "pw"}
    created = await http.post("/users", json=user)
    assert created.status_code == 201, created.text
    assert created.json() == {"stream": "User-u1", "version": 1, "position": 1}

    ordered = await http.post("/users/u1/orders", json={"order_id": "o1", "amount": 12.5})
    assert ordered.status_code == 201
    position = ordered.json()["position"]
    # The same order again (same command id): the first Ack, nothing appended.
    again = await http.post("/users/u1/orders", json={"order_id": "o1", "amount": 12.5})
    assert again.json() == ordered.json()

    found = await http.get("/users/u1", params={"after": position})
    assert found.status_code == 200
    body = found.json()
    assert (body["name"], body["order_count"], body["total_spent"]) == ("Ann", 1, 12.5)
    assert "password" not in body and "password_hash" not in body

    duplicate = await http.post("/users", json=user)
    assert duplicate.status_code == 422
    assert duplicate.json() == {"error": {"message": "user 'u1' already exists"}}
    missing = await http.get("/users/nobody")
    assert missing.status_code == 404
    late = await http.get("/users/u1", params={"after": 1_000, "timeout": 0.05})
    assert late.status_code == 504
    invalid = await http.post("/users", json={"user_id": "u2"})
    assert invalid.status_code == 422 and "detail" in invalid.json()
    orders = await asyncio.gather(
        *(
            http.post("/users/u1/orders", json={"order_id": f"p{n}", "amount": 1})
            for n in range(100)
        )
    )
    assert sorted(r.json()["position"] for r in orders) == list(range(3, 103))


def test_through_the_asgi_transport(tmp_path: Path) -> None:
    example = load_example()
    api = example.create_app(str(tmp_path / "data"), durability="none")

    @asynccontextmanager
    async def client() -> AsyncIterator[Any]:
        # httpx's transport runs no lifespan: enter FastAPI's, as a server does.
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://motet") as http:
                yield http

    async def main() -> None:
        async with client() as http:
            await exercise(http)
        # The lifespan closed the engine; a new one reads the same store.
        async with client() as http:
            found = await http.get("/users/u1", params={"after": 102})
            assert found.json()["order_count"] == 101

    asyncio.run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_under_uvicorn_on_127_0_0_1(tmp_path: Path, loop: str) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    example = load_example()
    api = example.create_app(str(tmp_path / "data"), durability="none")
    config = uvicorn.Config(
        api, host="127.0.0.1", port=0, loop=loop, lifespan="on", log_level="warning"
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        async with asyncio.timeout(10):
            while not server.started:
                assert not serving.done(), serving
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                await exercise(http)
        finally:
            server.should_exit = True
            await serving

    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())
