"""The README's code runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO as ROOT

README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_starts_with_the_two_setup_commands() -> None:
    first_screen = README[: README.index("## ")]
    assert "make run" in first_screen
    assert "make test" in first_screen


@pytest.mark.process  # runs the example in a fresh interpreter
def test_embedded_example_runs_as_written(tmp_path: Path) -> None:
    program = tmp_path / "example.py"
    program.write_text(_python_blocks()[0])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for run in (1, 2):  # the second run reopens ./motet-data
        done = subprocess.run(
            [sys.executable, str(program)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "rejected: amount must be > 0, got -5" in done.stdout
        # The command ids make the second run's commands retries: same Acks,
        # still one order.
        assert "User-ann is at version 2, log position 2" in done.stdout
        assert "Ann: 1 order(s), 42.50 spent" in done.stdout, f"run {run}"
    # Not ./motet-data, which `make run` and the CLI walk-through use.
    assert (tmp_path / "example-data" / "data.mdb").exists()
    assert not (tmp_path / "motet-data").exists()


async def test_own_domain_example_works() -> None:
    from motet.engine import CommandRejected, open_engine

    namespace: dict[str, Any] = {}
    exec(compile(_python_blocks()[1], "README.md", "exec"), namespace)
    async with open_engine(None, namespace["bank"]) as engine:
        deposit = namespace["Deposit"]
        await engine.send(deposit(account_id="a1", amount=5))
        ack = await engine.send(deposit(account_id="a1", amount=7))
        assert (ack.stream, ack.version) == ("Account-a1", 2)
        with pytest.raises(CommandRejected, match="amount must be > 0, got 0"):
            await engine.send(deposit(account_id="a1", amount=0))
        assert engine.registry.live("Account-a1").state.balance == 12


async def test_own_domain_read_model_example_works() -> None:
    from motet.engine import InvalidMessage, NotFound, open_engine
    from motet.engine.net.protocol import RequestDecoder

    namespace: dict[str, Any] = {}
    for block in _python_blocks()[1:3]:  # the aggregate, then its read model
        exec(compile(block, "README.md", "exec"), namespace)
    bank = namespace["bank"]
    async with open_engine(None, bank) as engine:
        deposit, get_balance = namespace["Deposit"], namespace["GetBalance"]
        await engine.send(deposit(account_id="a1", amount=5))
        ack = await engine.send(deposit(account_id="a1", amount=7))
        assert await engine.ask(get_balance(account_id="a1"), after=ack.position) == 12
        with pytest.raises(NotFound, match="no account 'a2'"):
            await engine.ask(get_balance(account_id="a2"))
    # forbid_unknown_fields: a misspelled field is refused, not dropped.
    decoder = RequestDecoder(bank)
    request = decoder.decode_request(
        b'{"op": "command", "type": "Deposit", "data": {"account_id": "a1", "amout": 5}}'
    )
    with pytest.raises(InvalidMessage, match="unknown field `amout`"):
        decoder.decode_command(request)  # type: ignore[arg-type]
