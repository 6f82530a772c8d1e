"""Given/when/then for aggregates and projections, and their failure messages."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from motet.engine import NotFound
from motet.engine.example import read, write
from motet.engine.testing import (
    ANY,
    DEFAULT_START,
    Clock,
    ScenarioFailed,
    given,
    recorded,
    use_clock,
)

from .domain import Deposit, Deposited, GetBalance, account, balances, bank

AT = DEFAULT_START


def test_then_passes_on_the_events_decide_returns(clock: Clock) -> None:
    outcome = given(account, [Deposited(amount=5, at=1.0)]).when(Deposit(account_id="a1", amount=7))
    outcome.then([Deposited(amount=7, at=AT)])
    assert outcome.state.balance == 12


def test_the_clock_fixture_moves_the_time_decide_stamps(clock: Clock) -> None:
    clock.advance(30)
    given(account).when(Deposit(account_id="a1", amount=1)).then([Deposited(amount=1, at=AT + 30)])
    clock.set(5.0)
    given(account).when(Deposit(account_id="a1", amount=1)).then([Deposited(amount=1, at=5.0)])


def test_any_matches_a_field_the_test_does_not_pin() -> None:
    given(account).when(Deposit(account_id="a1", amount=3)).then([Deposited(amount=3, at=ANY)])
    given(account).when(Deposit(account_id="a1", amount=3)).then([ANY])


def test_then_rejected_matches_the_refusal() -> None:
    given(account).when(Deposit(account_id="a1", amount=0)).then_rejected()
    given(account, [Deposited(amount=999, at=AT)]).when(
        Deposit(account_id="a1", amount=2)
    ).then_rejected(match=r"exceed 1000, at 999")


def test_a_different_event_shows_both_lists_and_the_first_difference() -> None:
    with use_clock(Clock()), pytest.raises(ScenarioFailed) as failed:
        given(account, [Deposited(amount=5, at=AT)]).when(Deposit(account_id="a1", amount=7)).then(
            [Deposited(amount=8, at=AT)]
        )
    assert str(failed.value) == (
        "Account: given 1 event(s), when Deposit(account_id='a1', amount=7)\n"
        "  expected 1 event(s):\n"
        "    [0] Deposited(amount=8, at=1700000000.0)\n"
        "  actual 1 event(s):\n"
        "    [0] Deposited(amount=7, at=1700000000.0)\n"
        "  first difference: event [0]: Deposited field 'amount': expected 8, got 7"
    )


def test_a_missing_or_extra_event_is_pointed_out() -> None:
    with use_clock(Clock()):
        outcome = given(account).when(Deposit(account_id="a1", amount=7))
        with pytest.raises(ScenarioFailed, match=r"event \[1\] Deposited\(amount=1, .* missing"):
            outcome.then([Deposited(amount=7, at=AT), Deposited(amount=1, at=AT)])
        with pytest.raises(
            ScenarioFailed, match=r"event \[0\] Deposited\(amount=7, .* not expected"
        ):
            outcome.then([])
        with pytest.raises(ScenarioFailed, match=r"expected a UserDeleted, got a Deposited"):
            outcome.then([write.UserDeleted(user_id="a1")])


def test_rejected_when_events_were_expected_and_the_reverse() -> None:
    with pytest.raises(ScenarioFailed, match="but the command was rejected: amount must be > 0"):
        given(account).when(Deposit(account_id="a1", amount=-1)).then([])
    with pytest.raises(ScenarioFailed) as failed:
        given(account).when(Deposit(account_id="a1", amount=1)).then_rejected(match="> 0")
    assert "expected the command to be rejected with a message matching '> 0'" in str(failed.value)
    assert "[0] Deposited(amount=1, at=" in str(failed.value)
    with pytest.raises(ScenarioFailed, match="but it was rejected with: amount must be > 0, got 0"):
        given(account).when(Deposit(account_id="a1", amount=0)).then_rejected(match="exceed")


def test_fields_a_repr_hides_are_shown() -> None:
    """The example's CreateUser hides its password in repr; a scenario shows
    every field, so a difference in any of them can be read."""
    command = write.CreateUser(user_id="ann", name="Ann", email="ann@example.org", password="pw")
    outcome = given(write.user).when(command)
    outcome.then(
        [write.UserCreated(user_id="ann", name="Ann", email="ann@example.org", password_hash=ANY)]
    )
    with pytest.raises(ScenarioFailed) as failed:
        outcome.then(
            [
                write.UserCreated(
                    user_id="ann", name="Anne", email="ann@example.org", password_hash=ANY
                )
            ]
        )
    assert "password='pw'" in str(failed.value)
    assert "field 'name': expected 'Anne', got 'Ann'" in str(failed.value)


def test_the_example_aggregate_rejects_orders_of_unknown_users() -> None:
    created = write.UserCreated(user_id="ann", name="Ann", email="a@example.org", password_hash="x")
    order = write.PlaceOrder(user_id="ann", order_id="o1", amount=-5)
    given(write.user, [created]).when(order).then_rejected(match="amount must be > 0, got -5")
    given(write.user).when(write.DeleteUser(user_id="bob")).then_rejected("'bob' does not exist")


def test_a_command_the_aggregate_does_not_handle_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="does not handle GetBalance; it handles Deposit"):
        given(account).when(GetBalance(account_id="a1"))
    with pytest.raises(TypeError, match="takes an Aggregate, a Projection or a ProcessManager"):
        given(bank)  # type: ignore[call-overload]


def test_a_projection_answers_from_the_given_events() -> None:
    scenario = given(
        balances,
        [("Account-a1", Deposited(amount=5, at=AT)), ("Account-a1", Deposited(amount=2, at=AT))],
        queries=bank.queries,
    )
    assert scenario.model == {"a1": 7}
    assert [(r.position, r.stream, r.version) for r in scenario.records] == [
        (1, "Account-a1", 1),
        (2, "Account-a1", 2),
    ]
    scenario.query(GetBalance(account_id="a1")).then(7)
    scenario.query(GetBalance(account_id="a2")).then_raises(NotFound, match="no account 'a2'")
    with pytest.raises(ScenarioFailed) as failed:
        scenario.query(GetBalance(account_id="a1")).then(8)
    assert str(failed.value) == (
        "balances: given 2 event(s), query GetBalance(account_id='a1')\n"
        "  expected:\n    [0] 8\n  actual:\n    [0] 7\n"
        "  first difference: event [0]: expected 8, got 7"
    )
    with pytest.raises(ScenarioFailed, match="but the query raised NotFound: no account 'a2'"):
        scenario.query(GetBalance(account_id="a2")).then(0)


def test_the_example_read_model_through_a_scenario() -> None:
    events = [
        (
            "User-ann",
            write.UserCreated(
                user_id="ann", name="Ann", email="ann@example.org", password_hash="x", city="Oslo"
            ),
        ),
        ("User-ann", write.OrderPlaced(user_id="ann", order_id="o1", amount=42.5, at=AT)),
        recorded(
            write.UserCreated(
                user_id="bob", name="Bob", email="bob@example.org", password_hash="x"
            ),
            position=7,
            stream="User-bob",
        ),
    ]
    scenario = given(read.users_projection, events, queries=read.queries)
    summary = read.UserSummary(
        user_id="ann",
        name="Ann",
        email="ann@example.org",
        city="Oslo",
        order_count=1,
        total_spent=42.5,
        last_order_at="2023-11-14T22:13:20Z",  # AT, as the query answers it
    )
    scenario.query(read.GetUserById(user_id="ann")).then(summary)
    scenario.query(read.GetUsersByCity(city="Oslo")).then([summary])
    with pytest.raises(
        ScenarioFailed, match=r"UserSummary field 'total_spent': expected 40\.0, got 42\.5"
    ):
        scenario.query(read.GetUserById(user_id="ann")).then(
            msgspec.structs.replace(summary, total_spent=40.0)
        )
    assert scenario.model.users.get("bob").created_at_position == 7  # type: ignore[union-attr]


def test_a_query_without_its_entry_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no query entry for GetBalance on projection 'balances'"):
        given(balances).query(GetBalance(account_id="a1"))


def test_an_event_of_another_aggregate_is_pointed_out() -> None:
    stray = dataclasses.replace(
        account, decide=lambda state, command: [write.UserDeleted(user_id="x")]
    )
    with pytest.raises(
        ScenarioFailed, match=r"decide returned UserDeleted.*not one of the Account"
    ):
        given(stray).when(Deposit(account_id="a1", amount=1)).then([ANY])
