"""Engine.wait_for: every projection has applied a position."""

from __future__ import annotations

import pytest
import trio

from motet.engine import App, Projection, ProjectionFailed, QueryTimeout, open_engine

from .domain import Deposit, Deposited, GetBalance, account, bank


async def test_wait_for_returns_once_every_projection_applied_the_position() -> None:
    async with open_engine(None, bank, metrics=False) as engine:
        await engine.wait_for(0)
        ack = await engine.send(Deposit(account_id="a1", amount=5))
        await engine.wait_for(ack.position)
        assert engine.projection("balances").position >= ack.position
        assert await engine.ask(GetBalance(account_id="a1")) == 5


async def test_wait_for_times_out_naming_the_projection_behind() -> None:
    async with open_engine(None, bank, metrics=False) as engine:
        engine.projection("balances").pause()
        ack = await engine.send(Deposit(account_id="a1", amount=5))
        with trio.fail_after(5):
            with pytest.raises(
                QueryTimeout,
                match=r"projection 'balances' did not reach position 1 within 0.2 s \(it is at 0",
            ):
                await engine.wait_for(ack.position, timeout=0.2)
        engine.projection("balances").resume()
        await engine.wait_for(ack.position)


def _broken(model: dict[str, int], event: Deposited, record: object) -> None:
    raise RuntimeError("handler bug")


async def test_wait_for_raises_when_a_projection_stopped_before_the_position() -> None:
    app = App(
        aggregates=(account,), projections=(Projection("broken", dict, {Deposited: _broken}),)
    )
    async with open_engine(None, app, metrics=False) as engine:
        ack = await engine.send(Deposit(account_id="a1", amount=5))
        with pytest.raises(ProjectionFailed, match="projection 'broken' stopped at position 1"):
            await engine.wait_for(ack.position)


@pytest.mark.parametrize(("position", "timeout"), [(-1, 1.0), (1, -1.0), (1, float("nan"))])
async def test_wait_for_refuses_bad_arguments(position: int, timeout: float) -> None:
    async with open_engine(None, bank, metrics=False) as engine:
        with pytest.raises(ValueError, match="must be >= 0"):
            await engine.wait_for(position, timeout=timeout)
