"""``motet serve --max-actors N --passivate-after SECONDS``: the live-actor
limits reach the engine, and bad values are a one-line usage error."""

from __future__ import annotations

from typing import Any

import pytest

from motet.engine.cli.main import main
from motet.engine.net.blocking import connect
from tests.support.commands import create_user


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-actors", "0"], "argument --max-actors: must be >= 1, got 0"),
        (["--max-actors", "many"], "argument --max-actors: must be a whole number, got 'many'"),
        (["--passivate-after", "0"], "argument --passivate-after: must be > 0 seconds, got 0"),
        (["--passivate-after", "inf"], "argument --passivate-after: must be > 0 seconds, got inf"),
        (
            ["--passivate-after", "soon"],
            "argument --passivate-after: must be a number of seconds, got 'soon'",
        ),
    ],
)
def test_bad_limits_are_a_one_line_usage_error(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err == f"motet serve: error: {message}; see 'motet serve --help'\n"


def test_serve_caps_the_live_actors(motet_server: Any) -> None:
    server = motet_server("--max-actors", "2", "--passivate-after", "3600")
    with connect(server.host, server.port) as client:
        for n in range(4):
            client.send(create_user(f"u{n}"))
        status = client.status()
    assert status.actors == 2
    assert status.actors_by_aggregate == {"User": 2}
