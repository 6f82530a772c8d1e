"""A small domain written the way the test kit suggests: ``decide`` stamps
events with :func:`motet.engine.testing.now`."""

from __future__ import annotations

import msgspec

from motet.engine import Aggregate, App, CommandRejected, NotFound, Projection, Query
from motet.engine.testing import now
from motet.storage.records import RecordedEvent

__all__ = ["Account", "Deposit", "Deposited", "GetBalance", "account", "balances", "bank"]


class Deposit(msgspec.Struct, frozen=True, kw_only=True, tag="TkDeposit"):
    account_id: str
    amount: int


class Deposited(msgspec.Struct, frozen=True, kw_only=True, tag="TkDeposited"):
    amount: int
    at: float


class Account(msgspec.Struct, frozen=True, kw_only=True):
    balance: int = 0


class GetBalance(msgspec.Struct, frozen=True, kw_only=True, tag="TkGetBalance"):
    account_id: str


def decide(state: Account, command: Deposit) -> list[Deposited]:
    if command.amount <= 0:
        raise CommandRejected(f"amount must be > 0, got {command.amount}")
    if state.balance + command.amount > 1_000:
        raise CommandRejected(f"the balance would exceed 1000, at {state.balance}")
    return [Deposited(amount=command.amount, at=now())]


def evolve(state: Account, event: Deposited) -> Account:
    return Account(balance=state.balance + event.amount)


def on_deposited(model: dict[str, int], event: Deposited, record: RecordedEvent) -> None:
    account_id = record.stream.removeprefix("Account-")
    model[account_id] = model.get(account_id, 0) + event.amount


def get_balance(model: dict[str, int], query: GetBalance) -> int:
    if query.account_id not in model:
        raise NotFound(f"no account {query.account_id!r}")
    return model[query.account_id]


account = Aggregate(
    name="Account",
    state_type=Account,
    initial=Account(),
    decide=decide,
    evolve=evolve,
    commands={Deposit: "account_id"},
    events=(Deposited,),
)
balances = Projection(name="balances", initial=dict, handlers={Deposited: on_deposited})
bank = App(
    aggregates=(account,),
    projections=(balances,),
    queries=(Query(GetBalance, "balances", get_balance),),
)
