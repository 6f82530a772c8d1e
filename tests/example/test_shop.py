"""The shop app with the test kit: given/when/then for its aggregates and
read model, its process managers' pure reactions, and a whole scenario on
the ``motet_engine`` fixture whose clock the test moves."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from motet.engine import App, Engine, Reaction, Timer
from motet.engine.example.shop_app import (
    BONUS_AMOUNT,
    CancelOrder,
    CustomerView,
    FulfilmentState,
    GetCustomer,
    GetOrder,
    GrantLoyaltyBonus,
    LoyaltyBonusGranted,
    LoyaltyState,
    OrderCancelled,
    OrderPaid,
    OrderSubmitted,
    OrderView,
    PayOrder,
    SubmitOrder,
    customer,
    fulfilment,
    loyalty,
    on_fulfilment_timer,
    order,
    react_fulfilment,
    react_loyalty,
    shop,
    shop_projection,
)
from motet.engine.testing import DEFAULT_START, Clock, ScenarioFailed, given, recorded

SUBMITTED = OrderSubmitted(
    order_id="o1", customer_id="c1", amount=30.0, at=DEFAULT_START, pay_by=DEFAULT_START + 900
)


@pytest.fixture
def motet_app() -> App:
    return shop


# --- aggregates ---------------------------------------------------------------


def test_a_submitted_order_gets_its_payment_deadline(clock: Clock) -> None:
    given(order).when(SubmitOrder(order_id="o1", customer_id="c1", amount=30)).then([SUBMITTED])


def test_an_order_is_paid_once_and_then_cannot_be_cancelled(clock: Clock) -> None:
    clock.advance(60)
    paid = OrderPaid(order_id="o1", customer_id="c1", amount=30.0, at=DEFAULT_START + 60)
    given(order, [SUBMITTED]).when(PayOrder(order_id="o1")).then([paid])
    given(order, [SUBMITTED, paid]).when(PayOrder(order_id="o1")).then_rejected("already paid")
    given(order, [SUBMITTED, paid]).when(CancelOrder(order_id="o1", reason="x")).then_rejected(
        "already paid"
    )


def test_a_cancelled_order_cannot_be_paid(clock: Clock) -> None:
    cancelled = OrderCancelled(order_id="o1", customer_id="c1", reason="late", at=DEFAULT_START)
    given(order, [SUBMITTED, cancelled]).when(PayOrder(order_id="o1")).then_rejected(
        "already cancelled"
    )
    given(order).when(PayOrder(order_id="o1")).then_rejected("no order 'o1'")


def test_an_order_needs_a_positive_amount_and_deadline(clock: Clock) -> None:
    given(order).when(SubmitOrder(order_id="o", customer_id="c", amount=-5)).then_rejected(
        "amount must be > 0, got -5"
    )
    given(order).when(
        SubmitOrder(order_id="o", customer_id="c", amount=5, pay_within=float("nan"))
    ).then_rejected("pay_within must be > 0 seconds, got nan")


def test_a_bonus_is_granted_once_per_number_of_orders(clock: Clock) -> None:
    granted = LoyaltyBonusGranted(customer_id="c1", orders=5, amount=10.0, at=DEFAULT_START)
    command = GrantLoyaltyBonus(customer_id="c1", orders=5, amount=10.0)
    given(customer).when(command).then([granted])
    given(customer, [granted]).when(command).then_rejected("has the bonus for 5 orders")


# --- the read model -----------------------------------------------------------


def test_the_read_model_follows_orders_and_customers() -> None:
    events = [
        ("Order-o1", SUBMITTED),
        ("Order-o1", OrderPaid(order_id="o1", customer_id="c1", amount=30.0, at=DEFAULT_START)),
        ("Customer-c1", LoyaltyBonusGranted(customer_id="c1", orders=5, amount=10.0, at=0.0)),
    ]
    scenario = given(shop_projection, events, queries=shop.queries)
    scenario.query(GetOrder(order_id="o1")).then(
        OrderView(
            order_id="o1",
            customer_id="c1",
            amount=30.0,
            status="paid",
            pay_by=DEFAULT_START + 900,
        )
    )
    scenario.query(GetCustomer(customer_id="c1")).then(
        CustomerView(
            customer_id="c1",
            orders=1,
            paid_orders=1,
            cancelled_orders=0,
            bonuses=1,
            bonus_total=10.0,
        )
    )
    scenario.query(GetOrder(order_id="o2")).then_raises(Exception, match="no order 'o2'")


# --- the process managers' reactions ------------------------------------------


def test_fulfilment_waits_for_the_payment_and_cancels_without_it() -> None:
    reaction = react_fulfilment(FulfilmentState(), SUBMITTED, recorded(SUBMITTED, position=1))
    assert reaction == Reaction(
        FulfilmentState(stage="awaiting_payment", order_id="o1"),
        timers=[Timer(name="payment", at=DEFAULT_START + 900)],
    )
    assert on_fulfilment_timer(reaction.state, "payment", DEFAULT_START + 900) == Reaction(
        FulfilmentState(stage="cancelling", order_id="o1"),
        commands=[CancelOrder(order_id="o1", reason="not paid in time")],
    )
    paid = OrderPaid(order_id="o1", customer_id="c1", amount=30.0, at=DEFAULT_START)
    after = react_fulfilment(reaction.state, paid, recorded(paid, position=2))
    assert after is not None
    assert (after.state.stage, after.cancel, after.commands) == ("paid", ["payment"], ())
    assert on_fulfilment_timer(after.state, "payment", DEFAULT_START + 900) is None


def test_loyalty_grants_a_bonus_after_every_fifth_paid_order() -> None:
    paid = OrderPaid(order_id="o9", customer_id="c1", amount=1.0, at=DEFAULT_START)
    record = recorded(paid, position=9)
    assert react_loyalty(LoyaltyState(paid_orders=3), paid, record) == Reaction(
        LoyaltyState(paid_orders=4), commands=[]
    )
    assert react_loyalty(LoyaltyState(paid_orders=4), paid, record) == Reaction(
        LoyaltyState(paid_orders=5),
        commands=[GrantLoyaltyBonus(customer_id="c1", orders=5, amount=BONUS_AMOUNT)],
    )


def test_fulfilment_scenarios_with_the_test_kit() -> None:
    paid = OrderPaid(order_id="o1", customer_id="c1", amount=30.0, at=DEFAULT_START)
    cancel = CancelOrder(order_id="o1", reason="not paid in time")
    given(fulfilment).when(SUBMITTED).then(timers=[Timer(name="payment", at=SUBMITTED.pay_by)])
    scenario = given(fulfilment, [SUBMITTED])
    assert scenario.timers == {"payment": SUBMITTED.pay_by}
    scenario.when(paid).then(cancel=["payment"], state=FulfilmentState(stage="paid", order_id="o1"))
    scenario.when_timer("payment").then(commands=[cancel])
    with pytest.raises(ScenarioFailed, match="no timer 'payment' is pending"):
        given(fulfilment, [SUBMITTED, paid]).when_timer("payment")
    with pytest.raises(ScenarioFailed, match=r"expected commands:(.|\n)*first difference"):
        scenario.when_timer("payment").then(commands=[CancelOrder(order_id="o1", reason="x")])
    with pytest.raises(ScenarioFailed, match="expected nothing to be done"):
        scenario.when_timer("payment").then_nothing()


def test_loyalty_scenarios_with_the_test_kit() -> None:
    paid = [
        OrderPaid(order_id=f"o{n}", customer_id="c1", amount=1.0, at=DEFAULT_START)
        for n in range(5)
    ]
    given(loyalty, paid[:4]).when(paid[4]).then(
        commands=[GrantLoyaltyBonus(customer_id="c1", orders=5, amount=BONUS_AMOUNT)],
        state=LoyaltyState(paid_orders=5),
    )
    given(loyalty, paid[:3]).when(paid[3]).then(commands=[])
    given(loyalty).when(SUBMITTED).then_nothing()
    with pytest.raises(TypeError, match="has no on_timer"):
        given(loyalty).when_timer("x")


# --- the whole app on an engine -----------------------------------------------


async def _until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(20):
        while not condition():
            await trio.sleep(0.01)


async def test_the_shop_cancels_what_is_not_paid_when_the_clock_passes_the_deadline(
    motet_engine: Engine, clock: Clock
) -> None:
    engine = motet_engine
    await engine.send(SubmitOrder(order_id="late", customer_id="c1", amount=5, pay_within=600))
    await engine.send(SubmitOrder(order_id="kept", customer_id="c1", amount=5, pay_within=600))
    await engine.send(PayOrder(order_id="kept"))
    fulfilment = engine.process_manager("OrderFulfilment")
    await _until(lambda: fulfilment.position == engine.head_position)
    assert fulfilment.pending_timers == 1

    clock.advance(599)
    fulfilment.wake()
    await trio.sleep(0.2)
    assert fulfilment.timers_fired == 0

    clock.advance(2)
    fulfilment.wake()
    await _until(lambda: fulfilment.timers_fired == 1)
    await _until(lambda: fulfilment.position == engine.head_position)
    late = await engine.ask(GetOrder(order_id="late"), after=engine.head_position)
    kept = await engine.ask(GetOrder(order_id="kept"))
    assert (late.status, late.reason, kept.status) == ("cancelled", "not paid in time", "paid")
    (cancelled,) = [r for r in await engine.read_stream("Order-late") if r.type == "OrderCancelled"]
    assert cancelled.data.at == DEFAULT_START + 601
