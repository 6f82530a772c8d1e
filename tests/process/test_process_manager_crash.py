"""A ``motet serve --app motet.engine.example:shop`` process SIGKILLed while
its order timers are pending (some firing, some due later, some due while
it is down) fires every timer exactly once after the restart: each unpaid
order is cancelled once, no paid order is, and the log holds one
``TimerFired`` per unpaid order and no command id twice.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import trio

from motet.engine.example import shop
from motet.storage import LmdbStore
from tests.support.logs import read_everything
from tests.support.peer import open_peer

ORDERS = 40
SOON = 0.3
LATER = 3.0


def submit(n: int) -> dict[str, Any]:
    # The first half is due soon and fires before the kill; the second half
    # is pending at the kill and comes due while the process is down.
    return {
        "id": f"s{n}",
        "op": "command",
        "type": "SubmitOrder",
        "data": {
            "order_id": f"o{n}",
            "customer_id": f"c{n % 4}",
            "amount": 10,
            "pay_within": SOON if n < ORDERS // 2 else LATER,
        },
    }


def paid(n: int) -> bool:
    return n % 4 == 0


async def wait_cancelled(peer: Any, orders: list[int]) -> None:
    """Wait (at most 30 s) until every order of ``orders`` is cancelled."""
    deadline = trio.current_time() + 30
    waiting = set(orders)
    while waiting:
        assert trio.current_time() < deadline, f"orders never cancelled: {sorted(waiting)}"
        for n in sorted(waiting):
            query = {"id": n, "op": "query", "type": "GetOrder"}
            reply = await peer.ask({**query, "data": {"order_id": f"o{n}"}})
            if reply["ok"] and reply["result"]["status"] == "cancelled":
                waiting.discard(n)
        await trio.sleep(0.05)


async def test_timers_pending_at_a_sigkill_fire_once_after_the_restart(
    motet: Any, motet_server: Any
) -> None:
    server = motet_server("--app", "motet.engine.example:shop")
    async with open_peer(server.port) as peer:
        for n in range(ORDERS):
            reply = await peer.ask(submit(n))
            assert reply["ok"], reply
            if paid(n):
                # Paid right away: its timer is due SOON after the submit.
                pay = {"id": f"p{n}", "op": "command", "type": "PayOrder"}
                reply = await peer.ask({**pay, "data": {"order_id": f"o{n}"}})
                assert reply["ok"], reply
        submitted = time.monotonic()
        await wait_cancelled(peer, [n for n in range(ORDERS // 2) if not paid(n)])
    server.kill()  # SIGKILL
    time.sleep(max(0.0, submitted + LATER + 0.5 - time.monotonic()))

    restarted = motet_server("--app", "motet.engine.example:shop", data=server.data)
    unpaid = [n for n in range(ORDERS) if not paid(n)]
    async with open_peer(restarted.port) as peer:
        await wait_cancelled(peer, unpaid)
        status = (await peer.ask({"id": "st", "op": "status"}))["result"]
        managers = {m["name"]: m for m in status["process_managers"]}
        assert managers["OrderFulfilment"]["pending_timers"] == 0
        assert managers["OrderFulfilment"]["state"] == "running"
    shown = motet.run("status", "--port", str(restarted.port))
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"\nOrderFulfilment +running +[\d,]+ +0 +[\d.]+ +0 +0\n", shown.stdout), (
        shown.stdout
    )
    assert restarted.terminate() == 0

    codec = shop.codec()
    store = LmdbStore(server.data)
    try:
        records = [codec.decode_record(stored) for stored in read_everything(store)]
    finally:
        store.close()
    cancelled = Counter(r.data.order_id for r in records if r.type == "OrderCancelled")
    assert cancelled == Counter(f"o{n}" for n in unpaid)
    fired = Counter(r.stream for r in records if r.type == "OrderFulfilment.TimerFired")
    assert fired == Counter(f"OrderFulfilment-o{n}" for n in unpaid)
    scheduled = Counter(r.stream for r in records if r.type == "OrderFulfilment.TimerScheduled")
    assert scheduled == Counter(f"OrderFulfilment-o{n}" for n in range(ORDERS))
    command_ids = [r.metadata.command_id for r in records if r.metadata.command_id]
    assert len(command_ids) == len(set(command_ids))
    assert all(r.data.state.stage == "cancelling" for r in records if r.type.endswith("Fired"))
    # The paid orders (o0, o4, ...) are all customer c0's: ten, two bonuses.
    bonuses = [r.data.orders for r in records if r.type == "LoyaltyBonusGranted"]
    assert bonuses == [5, 10]
