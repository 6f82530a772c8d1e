"""Process managers on a real LMDB store: reactions, durable timers across
restarts, redelivered triggers, refused commands, status and metrics.

The engine's clock (what ``decide`` stamps and timers are due on) is the
test kit's ``clock``, which stands still until a test moves it; trio's
autojump clock makes the managers' bounded sleeps cost no real time. Each
step waits until the engine has settled: every manager caught up and idle,
nothing queued for the writer.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from motet.engine import App, CommandRejected, ProcessManager, Reaction, Timer, open_engine
from motet.engine.example.shop_app import (
    BONUS_AMOUNT,
    CancelOrder,
    GetCustomer,
    GetOrder,
    GrantLoyaltyBonus,
    OrderCancelled,
    OrderPaid,
    OrderSubmitted,
    PayOrder,
    SubmitOrder,
    fulfilment,
    shop,
)
from motet.engine.testing import DEFAULT_START, Clock
from motet.storage import LmdbStore
from motet.storage.records import Checkpoint, RecordedEvent
from tests.support.logs import read_everything

SHUTDOWN = 10**6
"""The shutdown timeout, in trio's (mock) seconds: autojump must not cut the
drain short while the writer's thread commits."""


@pytest.fixture
def trio_clock(autojump_clock: trio.testing.MockClock, clock: Clock) -> Clock:
    return clock


def _settled(engine: Any) -> bool:
    return engine.writer.statistics().queued == 0 and all(
        manager.error is not None or (manager.idle and manager.position >= engine.head_position)
        for manager in engine.process_managers.values()
    )


async def settle(engine: Any) -> None:
    """Wait (real time, at most 30 s) until the managers have done all they
    can, then until every projection has applied the log."""
    deadline = time.monotonic() + 30
    while not _settled(engine):
        assert time.monotonic() < deadline, f"not settled: {engine.status().process_managers}"
        await trio.sleep(0.001)
    await engine.wait_for(engine.head_position)


async def advance(engine: Any, clock: Clock, seconds: float) -> None:
    """Settle, move the engine's clock, let the managers look at it, settle."""
    await settle(engine)
    clock.advance(seconds)
    for manager in engine.process_managers.values():
        manager.wake()
    await settle(engine)


def log_of(path: Path) -> list[Any]:
    """Every event of the store at ``path``, decoded, as (stream, type, data, metadata)."""
    codec = shop.codec()
    store = LmdbStore(path)
    try:
        return [codec.decode_record(stored) for stored in read_everything(store)]
    finally:
        store.close()


def of_type(records: list[RecordedEvent], kind: str) -> list[RecordedEvent]:
    return [record for record in records if record.type == kind]


async def test_an_unpaid_order_is_cancelled_once_at_its_deadline(
    tmp_path: Path, trio_clock: Clock
) -> None:
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        submitted = await engine.send(
            SubmitOrder(order_id="o1", customer_id="c1", amount=30, pay_within=900),
            command_id="client-1",
            correlation_id="checkout-7",
        )
        await advance(engine, trio_clock, 899)
        view = await engine.ask(GetOrder(order_id="o1"), after=submitted.position)
        assert view.status == "submitted"
        manager = engine.process_manager("OrderFulfilment")
        assert manager.pending_timers == 1
        await advance(engine, trio_clock, 2)
        assert manager.pending_timers == 0
        assert manager.timers_fired == 1
    records = log_of(tmp_path)
    (cancelled,) = of_type(records, "OrderCancelled")
    assert cancelled.data.reason == "not paid in time"
    assert cancelled.data.at == DEFAULT_START + 901
    (scheduled,) = of_type(records, "OrderFulfilment.TimerScheduled")
    (fired,) = of_type(records, "OrderFulfilment.TimerFired")
    assert fired.data.timer == scheduled.position
    assert fired.data.at == DEFAULT_START + 900
    assert fired.data.commands == [f"pm:OrderFulfilment:{scheduled.position}:0"]
    # The command's metadata: its derived id, caused by the timer, and the
    # client's correlation id carried through the manager's own events.
    assert cancelled.metadata.command_id == f"pm:OrderFulfilment:{scheduled.position}:0"
    assert cancelled.metadata.causation_id == str(scheduled.position)
    assert cancelled.metadata.correlation_id == "checkout-7"
    handled, after = of_type(records, "OrderFulfilment.EventHandled")
    assert (after.data.position, after.data.state.stage) == (cancelled.position, "cancelled")
    assert handled.stream == "OrderFulfilment-o1"
    assert handled.data.position == submitted.position
    assert handled.metadata.causation_id == str(submitted.position)


async def test_a_paid_order_keeps_and_its_timer_is_cancelled(
    tmp_path: Path, trio_clock: Clock
) -> None:
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        await engine.send(SubmitOrder(order_id="o1", customer_id="c1", amount=30, pay_within=60))
        await advance(engine, trio_clock, 30)
        paid = await engine.send(PayOrder(order_id="o1"))
        await advance(engine, trio_clock, 3600)
        view = await engine.ask(GetOrder(order_id="o1"), after=paid.position)
        assert view.status == "paid"
        assert engine.process_manager("OrderFulfilment").pending_timers == 0
    records = log_of(tmp_path)
    assert of_type(records, "OrderCancelled") == []
    assert len(of_type(records, "OrderFulfilment.TimerCancelled")) == 1
    assert of_type(records, "OrderFulfilment.TimerFired") == []


async def test_a_timer_pending_at_shutdown_fires_once_after_a_restart(
    tmp_path: Path, trio_clock: Clock
) -> None:
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        await engine.send(SubmitOrder(order_id="o1", customer_id="c1", amount=5, pay_within=900))
        await engine.send(SubmitOrder(order_id="o2", customer_id="c1", amount=5, pay_within=50))
        await advance(engine, trio_clock, 10)
        assert engine.process_manager("OrderFulfilment").pending_timers == 2
    # Down while o2 comes due.
    trio_clock.advance(100)
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        manager = engine.process_manager("OrderFulfilment")
        await advance(engine, trio_clock, 1)
        assert manager.timers_fired == 1  # o2, which came due while down
        assert manager.pending_timers == 1
        await advance(engine, trio_clock, 600)
        assert manager.pending_timers == 1
        await advance(engine, trio_clock, 200)
        assert manager.pending_timers == 0
        assert manager.timers_fired == 2
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        await advance(engine, trio_clock, 3600)
        assert engine.process_manager("OrderFulfilment").timers_fired == 0
    records = log_of(tmp_path)
    cancelled = sorted(record.data.order_id for record in of_type(records, "OrderCancelled"))
    assert cancelled == ["o1", "o2"]
    assert len(of_type(records, "OrderFulfilment.TimerFired")) == 2


async def test_a_timer_pending_at_shutdown_fires_once_without_its_checkpoint(
    tmp_path: Path, trio_clock: Clock
) -> None:
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        await engine.send(SubmitOrder(order_id="o1", customer_id="c1", amount=5, pay_within=90))
        await advance(engine, trio_clock, 1)
    _forget_checkpoint(tmp_path, "pm:OrderFulfilment")
    trio_clock.advance(100)
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        await advance(engine, trio_clock, 1)
        assert engine.process_manager("OrderFulfilment").timers_fired == 1
    assert len(of_type(log_of(tmp_path), "OrderCancelled")) == 1


def _forget_checkpoint(path: Path, name: str) -> None:
    """What a crash before the checkpoint was saved leaves: the manager
    starts again from the beginning of the log."""
    store = LmdbStore(path)
    try:
        store.put_checkpoint(name, Checkpoint(0))
    finally:
        store.close()


async def _five_paid_orders(engine: Any, customer: str = "c1") -> int:
    position = 0
    for n in range(5):
        await engine.send(SubmitOrder(order_id=f"{customer}-{n}", customer_id=customer, amount=10))
        position = (await engine.send(PayOrder(order_id=f"{customer}-{n}"))).position
    return position


async def test_the_fifth_paid_order_earns_one_bonus(tmp_path: Path, trio_clock: Clock) -> None:
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        fifth = await _five_paid_orders(engine)
        await advance(engine, trio_clock, 1)
        view = await engine.ask(GetCustomer(customer_id="c1"), after=fifth)
        assert (view.paid_orders, view.bonuses, view.bonus_total) == (5, 1, BONUS_AMOUNT)
    (bonus,) = of_type(log_of(tmp_path), "LoyaltyBonusGranted")
    assert bonus.metadata.command_id == f"pm:Loyalty:{fifth}:0"
    assert bonus.metadata.causation_id == str(fifth)


async def test_a_redelivered_trigger_sends_no_command_twice(
    tmp_path: Path, trio_clock: Clock
) -> None:
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        await _five_paid_orders(engine)
        await advance(engine, trio_clock, 1)
    before = log_of(tmp_path)
    _forget_checkpoint(tmp_path, "pm:Loyalty")
    _forget_checkpoint(tmp_path, "pm:OrderFulfilment")
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        await advance(engine, trio_clock, 5)
        assert engine.process_manager("Loyalty").position == engine.head_position
    # Every trigger came again; the instances' streams said they were handled.
    assert [(r.stream, r.type) for r in log_of(tmp_path)] == [(r.stream, r.type) for r in before]


async def test_a_crash_between_the_commands_and_their_record_runs_them_once(
    tmp_path: Path, trio_clock: Clock
) -> None:
    # The log as a crash leaves it after the manager sent the bonus command
    # for the fifth payment but before it recorded that it handled it.
    without_managers = dataclasses.replace(shop, process_managers=())
    async with open_engine(tmp_path, without_managers, shutdown_timeout=SHUTDOWN) as engine:
        fifth = await _five_paid_orders(engine)
        command = GrantLoyaltyBonus(customer_id="c1", orders=5, amount=BONUS_AMOUNT)
        await engine.send(command, command_id=f"pm:Loyalty:{fifth}:0")
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        await advance(engine, trio_clock, 5)
        loyalty = engine.process_manager("Loyalty")
        assert loyalty.position == engine.head_position
        assert (loyalty.commands_sent, loyalty.commands_rejected) == (1, 0)
    records = log_of(tmp_path)
    assert len(of_type(records, "LoyaltyBonusGranted")) == 1
    handled = [r for r in of_type(records, "Loyalty.EventHandled") if r.data.position == fifth]
    assert handled[0].data.commands == [f"pm:Loyalty:{fifth}:0"]


class AuditState(msgspec.Struct, frozen=True, tag="AuditState"):
    seen: int = 0


def _pay_a_stranger(state: AuditState, event: Any, record: RecordedEvent) -> Reaction[AuditState]:
    return Reaction(AuditState(state.seen + 1), commands=[PayOrder(order_id="nobody")])


auditor = ProcessManager(
    name="Auditor",
    state_type=AuditState,
    initial=AuditState(),
    correlate={OrderSubmitted: "order_id"},
    react=_pay_a_stranger,
)


async def test_a_refused_command_is_recorded_and_the_manager_goes_on(
    tmp_path: Path, trio_clock: Clock
) -> None:
    app = dataclasses.replace(shop, process_managers=(auditor,))
    async with open_engine(tmp_path, app, shutdown_timeout=SHUTDOWN) as engine:
        await engine.send(SubmitOrder(order_id="o1", customer_id="c1", amount=1))
        await engine.send(SubmitOrder(order_id="o2", customer_id="c1", amount=1))
        await advance(engine, trio_clock, 1)
        manager = engine.process_manager("Auditor")
        assert manager.error is None
        assert (manager.commands_sent, manager.commands_rejected) == (0, 2)
        (status,) = engine.status().process_managers
        assert (status.state, status.commands_rejected) == ("running", 2)
        assert engine.metrics is not None
        text = engine.metrics.exposition().decode()
        assert 'motet_process_commands_total{outcome="rejected",process="Auditor"} 2.0' in text
    records = of_type(log_of_app(tmp_path, app), "Auditor.EventHandled")
    assert [r.stream for r in records] == ["Auditor-o1", "Auditor-o2"]
    (rejection,) = records[0].data.rejected
    assert rejection.code == "rejected"
    assert rejection.type == "PayOrder"
    assert "no order 'nobody'" in rejection.message
    assert rejection.command_id == f"pm:Auditor:{records[0].data.position}:0"


def log_of_app(path: Path, app: App) -> list[RecordedEvent]:
    codec = app.codec()
    store = LmdbStore(path)
    try:
        return [codec.decode_record(stored) for stored in read_everything(store)]
    finally:
        store.close()


def _broken(state: AuditState, event: Any, record: RecordedEvent) -> Reaction[AuditState]:
    if isinstance(event, OrderPaid):
        raise RuntimeError("no printer")
    return Reaction(AuditState(state.seen + 1))


async def test_a_failing_handler_stops_the_manager_until_retried(
    tmp_path: Path, trio_clock: Clock
) -> None:
    flaky = ProcessManager(
        name="Flaky",
        state_type=AuditState,
        initial=AuditState(),
        correlate={"Order": "order_id"},
        react=_broken,
    )
    app = dataclasses.replace(shop, process_managers=(flaky,))
    async with open_engine(tmp_path, app, shutdown_timeout=SHUTDOWN) as engine:
        await engine.send(SubmitOrder(order_id="o1", customer_id="c1", amount=1))
        paid = await engine.send(PayOrder(order_id="o1"))
        await advance(engine, trio_clock, 1)
        manager = engine.process_manager("Flaky")
        (status,) = engine.status().process_managers
        assert status.state == "failed"
        assert status.failed_position == paid.position
        assert "RuntimeError: no printer" in (status.error or "")
        assert manager.position == paid.position - 1
        assert engine.metrics is not None
        assert 'motet_process_failed{process="Flaky"} 1.0' in engine.metrics.exposition().decode()
        # The engine goes on taking commands meanwhile.
        await engine.send(SubmitOrder(order_id="o3", customer_id="c1", amount=1))
        manager.retry()  # still failing: the state is unchanged
        await advance(engine, trio_clock, 1)
        assert manager.error is not None


async def test_status_and_metrics_show_position_lag_and_pending_timers(
    tmp_path: Path, trio_clock: Clock
) -> None:
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN) as engine:
        await engine.send(SubmitOrder(order_id="o1", customer_id="c1", amount=1, pay_within=60))
        await advance(engine, trio_clock, 1)
        status = {s.name: s for s in engine.status().process_managers}
        assert sorted(status) == ["Loyalty", "OrderFulfilment"]
        waiting = status["OrderFulfilment"]
        assert waiting.state == "running"
        assert waiting.position == engine.head_position
        assert (waiting.lag_events, waiting.pending_timers) == (0, 1)
        assert waiting.next_timer_at == pytest.approx(DEFAULT_START + 60, abs=0.5)
        assert engine.metrics is not None
        text = engine.metrics.exposition().decode()
        assert 'motet_process_timers_pending{process="OrderFulfilment"} 1.0' in text
        assert 'motet_process_lag_events{process="Loyalty"} 0.0' in text
        assert f'motet_process_position{{process="Loyalty"}} {engine.head_position}.0' in text


async def test_a_reader_runs_no_process_managers(tmp_path: Path, trio_clock: Clock) -> None:
    async with open_engine(tmp_path, shop, shutdown_timeout=SHUTDOWN):
        pass
    async with open_engine(tmp_path, shop, role="reader") as reader:
        assert reader.process_managers == {}
        assert reader.status().process_managers == []
        with pytest.raises(KeyError, match="no process manager 'Loyalty'; known: none"):
            reader.process_manager("Loyalty")


def test_the_app_refuses_a_manager_that_names_what_it_does_not_have() -> None:
    with pytest.raises(TypeError, match="shares its name"):
        App(
            aggregates=shop.aggregates,
            process_managers=(dataclasses.replace(fulfilment, name="Order"),),
        )
    with pytest.raises(TypeError, match="correlates category 'Nope'"):
        App(
            aggregates=shop.aggregates,
            process_managers=(dataclasses.replace(fulfilment, correlate={"Nope": "x"}),),
        )
    with pytest.raises(TypeError, match="correlates CancelOrder, which is no event"):
        App(
            aggregates=shop.aggregates,
            process_managers=(
                dataclasses.replace(fulfilment, correlate={CancelOrder: "order_id"}),
            ),
        )
    with pytest.raises(ValueError, match="has no field 'nope' to correlate"):
        dataclasses.replace(fulfilment, correlate={OrderCancelled: "nope"})
    with pytest.raises(ValueError, match="name must be non-empty without '-'"):
        dataclasses.replace(fulfilment, name="Order-Fulfilment")


def test_a_timer_is_a_name_and_a_time() -> None:
    assert Timer(name="payment", at=5.0).at == 5.0
    with pytest.raises(CommandRejected, match="pay_within must be > 0"):
        from motet.engine.example.shop_app import OrderState, decide_order

        decide_order(
            OrderState(), SubmitOrder(order_id="o", customer_id="c", amount=1, pay_within=0)
        )


@pytest.fixture
def postgres_url(postgres_cluster: Any) -> str:
    from tests.support.postgres import new_schema_url

    return new_schema_url(postgres_cluster)


async def test_timers_survive_a_restart_on_postgresql(postgres_url: str, clock: Clock) -> None:
    # Real time here: the store's calls run in worker threads.
    async with open_engine(postgres_url, shop) as engine:
        await engine.send(SubmitOrder(order_id="o1", customer_id="c1", amount=5, pay_within=60))
        await engine.send(SubmitOrder(order_id="o2", customer_id="c1", amount=5, pay_within=30))
        await settle(engine)
        assert engine.process_manager("OrderFulfilment").pending_timers == 2
    clock.advance(45)  # o2 comes due while the engine is down
    async with open_engine(postgres_url, shop) as engine:
        await settle(engine)
        assert engine.process_manager("OrderFulfilment").timers_fired == 1
        await advance(engine, clock, 30)
        assert engine.process_manager("OrderFulfilment").timers_fired == 2
        orders = [await engine.ask(GetOrder(order_id=o)) for o in ("o1", "o2")]
        records = await engine.read_stream("Order-o1") + await engine.read_stream("Order-o2")
    assert [view.status for view in orders] == ["cancelled", "cancelled"]
    assert [r.type for r in records].count("OrderCancelled") == 2
