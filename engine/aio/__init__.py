"""Motet in asyncio programs (FastAPI under uvicorn, plain ``asyncio.run``)::

    from motet.engine.aio import open_engine
    from motet.engine.example import app, CreateUser

    async def main():
        async with open_engine("./motet-data", app) as engine:
            ack = await engine.send(CreateUser(user_id="u1", name="Ann",
                                               email="ann@example.org", password="pw"))

    asyncio.run(main())

The engine is the trio engine, run as a trio guest of the asyncio loop; its
methods are the trio engine's, as asyncio coroutines, and it raises the same
exception classes (import them from :mod:`motet.engine`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Engine, ProjectionHandle, open_engine

__all__ = ["Engine", "ProjectionHandle", "open_engine"]


def __getattr__(name: str) -> Any:
    # Lazy, like the other faces: importing the package loads no runtime.
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
