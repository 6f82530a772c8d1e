"""``motet serve``'s limits: the live actors (``--max-actors``,
``--passivate-after``) and the line protocol server's connection limits
(``--max-connections``, ``--max-unauthenticated``, ``--auth-timeout``,
``--idle-timeout``, ``--max-partial-bytes``, ``--max-pending-output``,
``--max-total-output``, ``--metrics-max-connections``) reach the engine and
the server of a real process, and bad values are a one-line usage error
naming the flag and the value (exit 2)."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import trio

from motet.engine.cli.main import main
from motet.engine.net.blocking import connect
from motet.engine.net.server import serve_engine
from tests.support.commands import create_user, create_user_request
from tests.support.peer import open_peer


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
        (["--max-connections", "0"], "argument --max-connections: must be >= 1, got 0"),
        (
            ["--max-connections", "lots"],
            "argument --max-connections: must be a whole number, got 'lots'",
        ),
        (["--max-unauthenticated", "0"], "argument --max-unauthenticated: must be >= 1, got 0"),
        (["--auth-timeout", "0"], "argument --auth-timeout: must be > 0 seconds, got 0"),
        (["--auth-timeout", "-1"], "argument --auth-timeout: must be > 0 seconds, got -1"),
        (["--idle-timeout", "nan"], "argument --idle-timeout: must be > 0 seconds, got nan"),
        (
            ["--idle-timeout", "never"],
            "argument --idle-timeout: must be a number of seconds, got 'never'",
        ),
        (["--max-partial-bytes", "0"], "argument --max-partial-bytes: must be >= 1 byte, got '0'"),
        (
            ["--max-pending-output", "4X"],
            "argument --max-pending-output: must be a number of bytes such as 65536, 64K or 4M, "
            "got '4X'",
        ),
        (
            ["--max-total-output", "-5"],
            "argument --max-total-output: must be a number of bytes such as 65536, 64K or 4M, "
            "got '-5'",
        ),
        (["--drain-timeout", "0"], "argument --drain-timeout: must be > 0 seconds, got 0"),
        (
            ["--metrics-max-connections", "0"],
            "argument --metrics-max-connections: must be >= 1, got 0",
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


def test_a_bad_limit_stops_the_real_command_before_it_serves(motet: Any) -> None:
    result = motet.run("serve", "--idle-timeout", "0")
    assert result.returncode == 2
    assert result.stderr == (
        "motet serve: error: argument --idle-timeout: must be > 0 seconds, got 0; "
        "see 'motet serve --help'\n"
    )
    assert not (motet.directory / "motet-data").exists()


@pytest.mark.parametrize(
    ("text", "size"),
    [("65536", 65536), ("64K", 64 << 10), ("4M", 4 << 20), ("1G", 1 << 30), ("2MiB", 2 << 20)],
)
def test_byte_sizes_take_binary_suffixes(text: str, size: int) -> None:
    from motet.engine.cli.main import _bytes

    assert _bytes(text) == size


def test_the_flag_defaults_are_the_servers_defaults() -> None:
    import inspect

    from motet.engine.cli.main import _build_parser
    from motet.engine.metrics import DEFAULT_METRICS_MAX_CONNECTIONS

    parser, _ = _build_parser()
    args = parser.parse_args(["serve"])
    defaults = inspect.signature(serve_engine).parameters
    for name in (
        "max_connections",
        "max_unauthenticated",
        "auth_timeout",
        "idle_timeout",
        "max_partial_bytes",
        "max_pending_output",
        "max_total_output",
    ):
        assert getattr(args, name) == defaults[name].default, name
    assert args.metrics_max_connections == DEFAULT_METRICS_MAX_CONNECTIONS


async def test_auth_timeout_and_max_unauthenticated_reach_the_server(motet_server: Any) -> None:
    server = motet_server(
        "--token", "s3cret", "--auth-timeout", "1.5", "--max-unauthenticated", "1"
    )
    async with open_peer(server.port) as oldest, open_peer(server.port) as newer:
        await newer.write({"id": 1, "op": "ping"})
        assert (await newer.read())["error"]["code"] == "unauthorized"
        # One connection may wait to authenticate: the newer one closed the oldest.
        goodbye = await oldest.read()
        assert goodbye["error"]["code"] == "overloaded"
        assert "at most 1 connections may wait to authenticate" in goodbye["error"]["message"]
        assert await oldest.eof()
        started = time.monotonic()
        expired = await newer.read(timeout=10)
        assert expired["error"] == {
            "code": "unauthorized",
            "message": "not authenticated within 1.5 s",
        }
        assert await newer.eof()
        assert time.monotonic() - started < 5  # not the default 10 s


async def test_idle_timeout_reaches_the_server(motet_server: Any) -> None:
    server = motet_server("--idle-timeout", "0.5")
    async with open_peer(server.port) as peer:
        assert (await peer.ask({"id": 1, "op": "ping"}))["result"] == "pong"
        closed = await peer.read(timeout=10)
        assert closed["error"] == {
            "code": "unavailable",
            "message": "closed after 0.5 s with nothing in flight",
        }
        assert await peer.eof()


async def test_max_partial_bytes_reaches_the_server(motet_server: Any) -> None:
    server = motet_server("--max-partial-bytes", "1K")
    async with open_peer(server.port) as peer, open_peer(server.port) as other:
        await peer.write(b'{"op": "ping", "pad": "' + b"x" * 2000)
        refused = await peer.read()
        assert refused["error"]["code"] == "too_large"
        assert "1024" in refused["error"]["message"]
        assert await peer.eof()
        assert (await other.ask({"id": 1, "op": "ping"}))["result"] == "pong"


@pytest.mark.parametrize("flag", ["--max-pending-output", "--max-total-output"])
async def test_reply_byte_budgets_reach_the_server(motet_server: Any, flag: str) -> None:
    # With a budget of one byte, a live subscription has no room for a second
    # event before the first is written, so a burst of commits cuts it off;
    # with the defaults (4 MiB, 256 MiB) the same burst is delivered.
    server = motet_server(flag, "1")
    async with open_peer(server.port) as subscriber, open_peer(server.port) as writer:
        await subscriber.write({"id": "s", "op": "subscribe", "from": 0})
        assert (await writer.ask({"id": 0, "op": "status"}))["ok"]
        await writer.write(*({"id": n, **create_user_request(f"u{n}")} for n in range(1, 201)))
        replies = await writer.read_many(200, timeout=30)
        assert all(reply["ok"] for reply in replies)
        while "event" in (line := await subscriber.read(timeout=30)):
            pass
        assert line["id"] == "s"
        assert line["error"]["code"] == "overloaded"
        assert "was too slow" in line["error"]["message"]


async def test_sigterm_answers_a_waiting_query_unavailable_after_the_drain_timeout(
    motet_server: Any,
) -> None:
    server = motet_server("--drain-timeout", "0.5", "--http-port", "0")
    waiting = {
        "id": "q",
        "op": "query",
        "type": "GetUserById",
        "data": {"user_id": "u1"},
        "after": 99,
        "timeout": 60,
    }
    stopping = (
        "the server is shutting down and stopped waiting for this request; "
        "retry it once the server is back (or on another node)"
    )

    def http_query() -> tuple[int, dict[str, Any]]:
        url = (
            f"http://127.0.0.1:{server.http_port}/queries/GetUserById"
            "?user_id=u1&after=99&timeout=60"
        )
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    async with open_peer(server.port) as peer, trio.open_nursery() as nursery:
        http_answers: list[tuple[int, dict[str, Any]]] = []

        async def ask_over_http() -> None:
            http_answers.append(await trio.to_thread.run_sync(http_query))

        nursery.start_soon(ask_over_http)
        await peer.write(waiting)
        # Answered inline, in order: the query before it has been read.
        assert (await peer.ask({"id": "fence", "op": "ping"}))["result"] == "pong"
        await trio.sleep(0.3)  # the HTTP query is waiting too
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        reply = await peer.read(timeout=10)
        assert reply["id"] == "q"
        assert reply["error"] == {"code": "unavailable", "message": stopping}
        assert await peer.eof()
        assert time.monotonic() - started < 5  # not the query's 60 s
    assert http_answers == [(503, {"error": {"code": "unavailable", "message": stopping}})]
    assert await trio.to_thread.run_sync(server.process.wait, 10) == 0
    assert "stopped cleanly" in server.log()
