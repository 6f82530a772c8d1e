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
        assert f"Ann: {run} order(s), {42.5 * run:.2f} spent" in done.stdout
    assert (tmp_path / "motet-data" / "data.mdb").exists()


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
