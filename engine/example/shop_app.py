"""The shop: a second example app, with process managers and timers.

``motet serve --app motet.engine.example:shop`` runs it. Two aggregates and
two process managers:

- ``Order`` (id ``order_id``): :class:`SubmitOrder` → :class:`OrderSubmitted`
  (stamped with the time and the deadline ``pay_by``, ``pay_within`` seconds
  later, 15 minutes by default); :class:`PayOrder` → :class:`OrderPaid`;
  :class:`CancelOrder` → :class:`OrderCancelled`. A paid order cannot be
  cancelled, a cancelled one cannot be paid.
- ``Customer`` (id ``customer_id``): :class:`GrantLoyaltyBonus` →
  :class:`LoyaltyBonusGranted`, at most once per number of paid orders.
- ``OrderFulfilment`` (one process per order): when an order is submitted it
  schedules a ``payment`` timer at ``pay_by``; payment or cancellation ends
  the wait; when the timer fires first, it sends :class:`CancelOrder`.
- ``Loyalty`` (one process per customer): counts paid orders and sends
  :class:`GrantLoyaltyBonus` after every fifth.

The ``shop`` projection answers :class:`GetOrder` and :class:`GetCustomer`.
``decide`` reads the time from :func:`motet.engine.testing.now`, so a test
that installs a clock sees exact times, and timers are due on that clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from motet.engine import (
    Aggregate,
    App,
    CommandRejected,
    NotFound,
    ProcessManager,
    Projection,
    Query,
    Reaction,
    RecordedEvent,
    Timer,
)
from motet.engine.testing.clock import now

__all__ = [
    "BONUS_AMOUNT",
    "BONUS_EVERY",
    "PAYMENT_TIMEOUT",
    "CancelOrder",
    "CustomerState",
    "CustomerView",
    "FulfilmentState",
    "GetCustomer",
    "GetOrder",
    "GrantLoyaltyBonus",
    "LoyaltyBonusGranted",
    "LoyaltyState",
    "OrderCancelled",
    "OrderPaid",
    "OrderState",
    "OrderSubmitted",
    "OrderView",
    "PayOrder",
    "ShopModel",
    "SubmitOrder",
    "customer",
    "fulfilment",
    "loyalty",
    "order",
    "shop",
    "shop_projection",
]

PAYMENT_TIMEOUT = 15 * 60.0
"""Seconds an order waits for its payment unless it says otherwise."""

BONUS_EVERY = 5
"""A loyalty bonus is granted after every this many paid orders."""

BONUS_AMOUNT = 10.0
"""The loyalty bonus."""

# --- Commands -----------------------------------------------------------------
# Commands come from outside, so a misspelled field is refused by name.


class SubmitOrder(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="SubmitOrder",
    gc=False,
    forbid_unknown_fields=True,
):
    """A customer submits an order worth ``amount`` (> 0) and has
    ``pay_within`` seconds (> 0) to pay it before it is cancelled."""

    order_id: str
    customer_id: str
    amount: float
    pay_within: float = PAYMENT_TIMEOUT


class PayOrder(
    msgspec.Struct, frozen=True, kw_only=True, tag="PayOrder", gc=False, forbid_unknown_fields=True
):
    """The payment of a submitted order came in."""

    order_id: str


class CancelOrder(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="CancelOrder",
    gc=False,
    forbid_unknown_fields=True,
):
    """Cancel an order that is not paid, saying why."""

    order_id: str
    reason: str


class GrantLoyaltyBonus(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="GrantLoyaltyBonus",
    gc=False,
    forbid_unknown_fields=True,
):
    """Grant a customer the bonus earned with ``orders`` paid orders."""

    customer_id: str
    orders: int
    amount: float


# --- Events -------------------------------------------------------------------


class OrderSubmitted(msgspec.Struct, frozen=True, kw_only=True, tag="OrderSubmitted"):
    order_id: str
    customer_id: str
    amount: float
    at: float
    pay_by: float


class OrderPaid(msgspec.Struct, frozen=True, kw_only=True, tag="OrderPaid"):
    order_id: str
    customer_id: str
    amount: float
    at: float


class OrderCancelled(msgspec.Struct, frozen=True, kw_only=True, tag="OrderCancelled"):
    order_id: str
    customer_id: str
    reason: str
    at: float


class LoyaltyBonusGranted(msgspec.Struct, frozen=True, kw_only=True, tag="LoyaltyBonusGranted"):
    customer_id: str
    orders: int
    amount: float
    at: float


# --- The Order aggregate ------------------------------------------------------

OrderStage = Literal["new", "submitted", "paid", "cancelled"]


class OrderState(msgspec.Struct, frozen=True, kw_only=True, tag="OrderState"):
    """What ``decide`` knows about one order."""

    stage: OrderStage = "new"
    customer_id: str = ""
    amount: float = 0.0


def decide_order(
    state: OrderState, command: SubmitOrder | PayOrder | CancelOrder
) -> list[OrderSubmitted | OrderPaid | OrderCancelled]:
    """Submit, pay or cancel an order, or refuse."""
    if isinstance(command, SubmitOrder):
        if state.stage != "new":
            raise CommandRejected(f"order {command.order_id!r} exists")
        if not command.customer_id:
            raise CommandRejected("customer_id is required")
        if not (math.isfinite(command.amount) and command.amount > 0):
            raise CommandRejected(f"amount must be > 0, got {command.amount!r}")
        if not (math.isfinite(command.pay_within) and command.pay_within > 0):
            raise CommandRejected(f"pay_within must be > 0 seconds, got {command.pay_within!r}")
        at = now()
        return [
            OrderSubmitted(
                order_id=command.order_id,
                customer_id=command.customer_id,
                amount=command.amount,
                at=at,
                pay_by=at + command.pay_within,
            )
        ]
    if state.stage == "new":
        raise CommandRejected(f"no order {command.order_id!r}")
    if state.stage != "submitted":
        raise CommandRejected(f"order {command.order_id!r} is already {state.stage}")
    if isinstance(command, PayOrder):
        return [
            OrderPaid(
                order_id=command.order_id,
                customer_id=state.customer_id,
                amount=state.amount,
                at=now(),
            )
        ]
    return [
        OrderCancelled(
            order_id=command.order_id,
            customer_id=state.customer_id,
            reason=command.reason,
            at=now(),
        )
    ]


def evolve_order(
    state: OrderState, event: OrderSubmitted | OrderPaid | OrderCancelled
) -> OrderState:
    """Fold one order event."""
    if isinstance(event, OrderSubmitted):
        return OrderState(stage="submitted", customer_id=event.customer_id, amount=event.amount)
    if isinstance(event, OrderPaid):
        return msgspec.structs.replace(state, stage="paid")
    if isinstance(event, OrderCancelled):
        return msgspec.structs.replace(state, stage="cancelled")
    return state


order = Aggregate(
    name="Order",
    state_type=OrderState,
    initial=OrderState(),
    decide=decide_order,
    evolve=evolve_order,
    commands={SubmitOrder: "order_id", PayOrder: "order_id", CancelOrder: "order_id"},
    events=[OrderSubmitted, OrderPaid, OrderCancelled],
)
"""The ``Order`` aggregate (stream ``Order-<order_id>``)."""


# --- The Customer aggregate ---------------------------------------------------


class CustomerState(msgspec.Struct, frozen=True, kw_only=True, tag="CustomerState"):
    """The paid-order counts a bonus was granted for."""

    bonuses: tuple[int, ...] = ()


def decide_customer(state: CustomerState, command: GrantLoyaltyBonus) -> list[LoyaltyBonusGranted]:
    """Grant a bonus once per number of orders."""
    if command.orders in state.bonuses:
        raise CommandRejected(
            f"customer {command.customer_id!r} has the bonus for {command.orders} orders"
        )
    if not (math.isfinite(command.amount) and command.amount > 0):
        raise CommandRejected(f"amount must be > 0, got {command.amount!r}")
    return [
        LoyaltyBonusGranted(
            customer_id=command.customer_id,
            orders=command.orders,
            amount=command.amount,
            at=now(),
        )
    ]


def evolve_customer(state: CustomerState, event: LoyaltyBonusGranted) -> CustomerState:
    """Fold one customer event."""
    return CustomerState(bonuses=(*state.bonuses, event.orders))


customer = Aggregate(
    name="Customer",
    state_type=CustomerState,
    initial=CustomerState(),
    decide=decide_customer,
    evolve=evolve_customer,
    commands={GrantLoyaltyBonus: "customer_id"},
    events=[LoyaltyBonusGranted],
)
"""The ``Customer`` aggregate (stream ``Customer-<customer_id>``)."""


# --- Process managers ---------------------------------------------------------

FulfilmentStage = Literal["new", "awaiting_payment", "paid", "cancelling", "cancelled"]


class FulfilmentState(msgspec.Struct, frozen=True, kw_only=True, tag="FulfilmentState"):
    """Where one order's fulfilment stands."""

    stage: FulfilmentStage = "new"
    order_id: str = ""


def react_fulfilment(
    state: FulfilmentState, event: object, record: RecordedEvent
) -> Reaction[FulfilmentState] | None:
    """Wait for the payment of a submitted order; stop waiting once it is
    paid or cancelled."""
    if isinstance(event, OrderSubmitted):
        return Reaction(
            FulfilmentState(stage="awaiting_payment", order_id=event.order_id),
            timers=[Timer(name="payment", at=event.pay_by)],
        )
    if isinstance(event, OrderPaid):
        return Reaction(msgspec.structs.replace(state, stage="paid"), cancel=["payment"])
    if isinstance(event, OrderCancelled):
        return Reaction(msgspec.structs.replace(state, stage="cancelled"), cancel=["payment"])
    return None


def on_fulfilment_timer(
    state: FulfilmentState, name: str, at: float
) -> Reaction[FulfilmentState] | None:
    """No payment by the deadline: cancel the order."""
    if state.stage != "awaiting_payment":
        return None
    return Reaction(
        msgspec.structs.replace(state, stage="cancelling"),
        commands=[CancelOrder(order_id=state.order_id, reason="not paid in time")],
    )


fulfilment = ProcessManager(
    name="OrderFulfilment",
    state_type=FulfilmentState,
    initial=FulfilmentState(),
    correlate={OrderSubmitted: "order_id", OrderPaid: "order_id", OrderCancelled: "order_id"},
    react=react_fulfilment,
    on_timer=on_fulfilment_timer,
)
"""Cancels an order that is not paid by its deadline (stream
``OrderFulfilment-<order_id>``)."""


class LoyaltyState(msgspec.Struct, frozen=True, kw_only=True, tag="LoyaltyState"):
    """How many of a customer's orders were paid."""

    paid_orders: int = 0


def react_loyalty(
    state: LoyaltyState, event: object, record: RecordedEvent
) -> Reaction[LoyaltyState] | None:
    """Count paid orders; every fifth earns a bonus."""
    if not isinstance(event, OrderPaid):
        return None
    paid = state.paid_orders + 1
    commands = []
    if paid % BONUS_EVERY == 0:
        commands.append(
            GrantLoyaltyBonus(customer_id=event.customer_id, orders=paid, amount=BONUS_AMOUNT)
        )
    return Reaction(LoyaltyState(paid_orders=paid), commands=commands)


loyalty = ProcessManager(
    name="Loyalty",
    state_type=LoyaltyState,
    initial=LoyaltyState(),
    correlate={OrderPaid: "customer_id"},
    react=react_loyalty,
)
"""Grants a bonus after every fifth paid order (stream ``Loyalty-<customer_id>``)."""


# --- The read model -----------------------------------------------------------


class OrderView(msgspec.Struct, frozen=True, kw_only=True):
    """One order as :class:`GetOrder` answers it."""

    order_id: str
    customer_id: str
    amount: float
    status: OrderStage
    pay_by: float
    reason: str | None = None


class CustomerView(msgspec.Struct, frozen=True, kw_only=True):
    """One customer as :class:`GetCustomer` answers it."""

    customer_id: str
    orders: int
    paid_orders: int
    cancelled_orders: int
    bonuses: int
    bonus_total: float


@dataclass
class ShopModel:
    """Orders and customers by id."""

    orders: dict[str, OrderView] = field(default_factory=dict)
    customers: dict[str, CustomerView] = field(default_factory=dict)

    def customer(self, customer_id: str) -> CustomerView:
        return self.customers.get(customer_id) or CustomerView(
            customer_id=customer_id,
            orders=0,
            paid_orders=0,
            cancelled_orders=0,
            bonuses=0,
            bonus_total=0.0,
        )


def _on_submitted(model: ShopModel, event: OrderSubmitted, record: RecordedEvent) -> None:
    model.orders[event.order_id] = OrderView(
        order_id=event.order_id,
        customer_id=event.customer_id,
        amount=event.amount,
        status="submitted",
        pay_by=event.pay_by,
    )
    row = model.customer(event.customer_id)
    model.customers[event.customer_id] = msgspec.structs.replace(row, orders=row.orders + 1)


def _on_paid(model: ShopModel, event: OrderPaid, record: RecordedEvent) -> None:
    model.orders[event.order_id] = msgspec.structs.replace(
        model.orders[event.order_id], status="paid"
    )
    row = model.customer(event.customer_id)
    model.customers[event.customer_id] = msgspec.structs.replace(
        row, paid_orders=row.paid_orders + 1
    )


def _on_cancelled(model: ShopModel, event: OrderCancelled, record: RecordedEvent) -> None:
    model.orders[event.order_id] = msgspec.structs.replace(
        model.orders[event.order_id], status="cancelled", reason=event.reason
    )
    row = model.customer(event.customer_id)
    model.customers[event.customer_id] = msgspec.structs.replace(
        row, cancelled_orders=row.cancelled_orders + 1
    )


def _on_bonus(model: ShopModel, event: LoyaltyBonusGranted, record: RecordedEvent) -> None:
    row = model.customer(event.customer_id)
    model.customers[event.customer_id] = msgspec.structs.replace(
        row, bonuses=row.bonuses + 1, bonus_total=row.bonus_total + event.amount
    )


shop_projection = Projection(
    name="shop",
    initial=ShopModel,
    handlers={
        OrderSubmitted: _on_submitted,
        OrderPaid: _on_paid,
        OrderCancelled: _on_cancelled,
        LoyaltyBonusGranted: _on_bonus,
    },
)
"""Folds orders and customers into a :class:`ShopModel`."""


class GetOrder(
    msgspec.Struct, frozen=True, kw_only=True, tag="GetOrder", gc=False, forbid_unknown_fields=True
):
    """One order by id → :class:`OrderView`, or ``not_found``."""

    order_id: str


class GetCustomer(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="GetCustomer",
    gc=False,
    forbid_unknown_fields=True,
):
    """One customer by id → :class:`CustomerView`, or ``not_found``."""

    customer_id: str


def get_order(model: ShopModel, query: GetOrder) -> OrderView:
    """Answer :class:`GetOrder`."""
    view = model.orders.get(query.order_id)
    if view is None:
        raise NotFound(f"no order {query.order_id!r}")
    return view


def get_customer(model: ShopModel, query: GetCustomer) -> CustomerView:
    """Answer :class:`GetCustomer`."""
    view = model.customers.get(query.customer_id)
    if view is None:
        raise NotFound(f"no customer {query.customer_id!r}")
    return view


shop = App(
    aggregates=(order, customer),
    projections=(shop_projection,),
    queries=(
        Query(GetOrder, "shop", get_order),
        Query(GetCustomer, "shop", get_customer),
    ),
    process_managers=(fulfilment, loyalty),
)
"""The shop app: ``motet serve --app motet.engine.example:shop``."""
