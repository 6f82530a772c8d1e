"""The pytest plugin, run on a user's test files as pytest runs them."""

from __future__ import annotations

import re

import pytest

from motet.engine import App
from motet.engine.testing import DEFAULT_START, Clock

from .domain import Deposit, Deposited, GetBalance, bank

_CONFTEST = """
import pytest
from tests.testing.domain import bank

@pytest.fixture
def motet_app():
    return bank
"""


@pytest.fixture
def user_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project: trio mode on, the sample bank as ``motet_app``."""
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makeconftest(_CONFTEST)
    return pytester


def test_a_failing_expectation_reads_well_in_pytest_output(user_project: pytest.Pytester) -> None:
    user_project.makepyfile(
        test_bank="""
        from motet.engine.testing import given
        from tests.testing.domain import Deposit, Deposited, account

        def test_deposit(clock):
            given(account, [Deposited(amount=5, at=0.0)]).when(
                Deposit(account_id="a1", amount=7)
            ).then([Deposited(amount=8, at=clock())])

        def test_refusal():
            given(account).when(Deposit(account_id="a1", amount=0)).then_rejected(match="> 0")
        """
    )
    result = user_project.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    message = [
        "ScenarioFailed: Account: given 1 event(s), when Deposit(account_id='a1', amount=7)",
        "expected 1 event(s):",
        "[0] Deposited(amount=8, at=1700000000.0)",
        "actual 1 event(s):",
        "[0] Deposited(amount=7, at=1700000000.0)",
        "first difference: event [0]: Deposited field 'amount': expected 8, got 7",
    ]
    result.stdout.re_match_lines(
        [rf"E\s+.*{re.escape(line)}$" for line in message] + [r"test_bank.py:7: ScenarioFailed$"]
    )
    # The traceback ends in the user's test, not inside the kit.
    assert "scenarios.py" not in result.stdout.str()


def test_the_engine_fixture_runs_the_users_app_with_the_test_clock(
    user_project: pytest.Pytester,
) -> None:
    user_project.makepyfile(
        test_engine="""
        from motet.engine.testing import DEFAULT_START
        from tests.testing.domain import Deposit, GetBalance

        async def test_deposits_are_read_back(motet_engine, clock, tmp_path):
            assert (tmp_path / "motet-data" / "data.mdb").exists()
            clock.advance(60)
            ack = await motet_engine.send(Deposit(account_id="a1", amount=5))
            await motet_engine.wait_for(ack.position)
            assert await motet_engine.ask(GetBalance(account_id="a1")) == 5
            [record] = await motet_engine.read_stream("Account-a1")
            assert record.data.at == DEFAULT_START + 60
        """
    )
    user_project.runpytest().assert_outcomes(passed=1)


def test_the_app_fixture_must_be_overridden(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        test_no_app="""
        async def test_needs_an_app(motet_engine):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define `@pytest.fixture def motet_app(): return your_app`*"])


@pytest.fixture
def motet_app() -> App:
    return bank


async def test_the_fixtures_in_this_suite(motet_engine: object, clock: Clock) -> None:
    from motet.engine import Engine

    assert isinstance(motet_engine, Engine)
    ack = await motet_engine.send(Deposit(account_id="a2", amount=3))
    await motet_engine.wait_for(ack.position)
    assert await motet_engine.ask(GetBalance(account_id="a2")) == 3
    [record] = await motet_engine.read_stream("Account-a2")
    assert record.data == Deposited(amount=3, at=DEFAULT_START)


def test_the_app_fixture_can_be_parametrized(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        test_apps="""
        import pytest
        from motet.engine import App
        from tests.testing.domain import Deposit, account, bank

        @pytest.fixture(params=["with read model", "write side only"])
        def motet_app(request):
            return bank if request.param == "with read model" else App(aggregates=(account,))

        async def test_each_app(motet_engine, motet_app):
            assert motet_engine.app is motet_app
            ack = await motet_engine.send(Deposit(account_id="a1", amount=1))
            await motet_engine.wait_for(ack.position)
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)
