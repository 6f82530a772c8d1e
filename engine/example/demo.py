"""What ``motet demo`` runs: a short scripted session of the example app.

A few commands, some of them refused on purpose, go through the embedded API;
then the events of one user's stream are printed.
"""

from __future__ import annotations

import msgspec

from .write import CreateUser, DeleteUser, PlaceOrder, UpdateUser

__all__ = ["SCRIPT", "demo", "run_demo"]

SCRIPT = (
    CreateUser(user_id="ada", name="Ada", email="ada@example.org", password="s3cret"),
    UpdateUser(user_id="ada", city="London"),
    PlaceOrder(user_id="ada", order_id="o-1", amount=12.5),
    PlaceOrder(user_id="ada", order_id="o-2", amount=-5),
    CreateUser(user_id="bob", name="Bob", email="bob-at-example", password="pw"),
    PlaceOrder(user_id="ada", order_id="o-3", amount=30.0),
    DeleteUser(user_id="ada"),
    PlaceOrder(user_id="ada", order_id="o-4", amount=1.0),
)
"""The commands the demo sends, in order; the second order and Bob are refused."""

_SHOWN_STREAM = "User-ada"


def demo(data: str | None = None) -> None:
    """Run :func:`run_demo` in a new trio run (for the command line)."""
    import trio

    trio.run(run_demo, data)


async def run_demo(data: str | None = None) -> None:
    """Send :data:`SCRIPT` to the example app and print each outcome, then the
    events of ``User-ada``. ``data`` is a store directory, or ``None`` for an
    in-memory store that is discarded afterwards."""
    from motet.engine import CommandRejected, open_engine

    from . import app

    async with open_engine(data, app) as engine:
        for command in SCRIPT:
            name = type(command).__name__
            try:
                ack = await engine.send(command)
            except CommandRejected as exc:
                print(f"{name:<11} rejected: {exc}")
            else:
                print(f"{name:<11} ok: {ack.stream} version {ack.version} position {ack.position}")
        print(f"\nstream {_SHOWN_STREAM}:")
        for event in await engine.read_stream(_SHOWN_STREAM):
            print(f"  {event.version:>2}  {event.type:<12} {_describe(event.data)}")


def _describe(data: msgspec.Struct) -> str:
    fields = msgspec.structs.asdict(data)
    if "password_hash" in fields:
        # Enough to see it is a salted hash, not enough to clutter the line.
        fields["password_hash"] = fields["password_hash"][:24] + "..."
    return ", ".join(f"{key}={value!r}" for key, value in fields.items() if value is not None)
