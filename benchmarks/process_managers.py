"""Process manager benchmark, on the shop app.

Run from the repository root::

    python -m benchmarks.process_managers                 # 2,000 orders, 100 clients
    python -m benchmarks.process_managers --orders 500    # quick check

On a fresh LMDB store (durability ``sync``) it measures, in one run:

* **reactions**: ``--clients`` tasks submit ``--orders`` orders and pay half
  of them; then the time until both process managers (``OrderFulfilment``,
  ``Loyalty``) have caught up with the log. Reported: client commands per
  second, and triggers (events reacted to, each an fsynced append of the
  manager's own events, plus a command for every fifth payment) per second
  from the first command until the managers caught up;
* **timers**: the unpaid half is due at once (the engine's clock is moved
  past every deadline); the time until every timer has fired, each firing a
  ``CancelOrder`` and recording ``TimerFired``. Reported: timers per second.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from motet.engine import open_engine
from motet.engine.example.shop_app import PayOrder, SubmitOrder, shop
from motet.engine.testing import Clock, use_clock


async def _caught_up(engine: Any) -> None:
    while not all(
        manager.idle and manager.position >= engine.head_position
        for manager in engine.process_managers.values()
    ):
        await trio.sleep(0.005)


async def run(path: Path, orders: int, clients: int) -> dict[str, Any]:
    clock = Clock(time.time())
    with use_clock(clock):
        async with open_engine(path, shop) as engine:
            started = time.perf_counter()

            async def client(first: int) -> None:
                for n in range(first, orders, clients):
                    await engine.send(
                        SubmitOrder(
                            order_id=f"o{n}", customer_id=f"c{n % 50}", amount=10, pay_within=60
                        )
                    )
                    if n % 2 == 0:
                        await engine.send(PayOrder(order_id=f"o{n}"))

            async with trio.open_nursery() as nursery:
                for first in range(clients):
                    nursery.start_soon(client, first)
            sent = time.perf_counter()
            await _caught_up(engine)
            reacted = time.perf_counter()
            fulfilment = engine.process_manager("OrderFulfilment")
            loyalty = engine.process_manager("Loyalty")
            triggers = fulfilment.events_handled + loyalty.events_handled

            clock.advance(120)
            fulfilment.wake()
            timers_started = time.perf_counter()
            while fulfilment.pending_timers:
                await trio.sleep(0.005)
            await _caught_up(engine)
            timers_done = time.perf_counter()
            timers = fulfilment.timers_fired
            head = engine.head_position
    commands = orders + (orders + 1) // 2
    return {
        "orders": orders,
        "clients": clients,
        "client_commands_per_s": round(commands / (sent - started)),
        "triggers": triggers,
        "triggers_per_s": round(triggers / (reacted - started)),
        "catch_up_after_clients_s": round(reacted - sent, 3),
        "bonus_commands": loyalty.commands_sent,
        "timers": timers,
        "timers_per_s": round(timers / (timers_done - timers_started)),
        "log_events": head,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.process_managers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--orders", type=int, default=2_000, help="orders submitted")
    parser.add_argument("--clients", type=int, default=100, help="concurrent client tasks")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.clients < 1:
        parser.error("--orders and --clients must be >= 1")
    with tempfile.TemporaryDirectory() as directory:
        result = trio.run(run, Path(directory) / "motet", args.orders, args.clients)
    if not args.json_only:
        for key, value in result.items():
            print(f"{key:<28}{value:>12,}" if isinstance(value, int) else f"{key:<28}{value:>12}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
