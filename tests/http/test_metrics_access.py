"""Who may read ``/metrics``, over real sockets: the metrics port is open
without tokens; with the full-access token or a metrics token set it needs
one of them (401 otherwise, through the error table); the metrics token
opens ``/metrics`` and nothing else; the metrics port serves a capped number
of connections."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from motet.engine import Engine, open_engine
from motet.engine.example import app
from motet.engine.net.access import Tokens
from motet.engine.net.http import open_http_server
from tests.http.support import Http, user
from tests.support.tokens import CLIENT_TOKEN, FULL_TOKEN, METRICS_TOKEN, auth_failures


async def test_a_metrics_port_without_tokens_stays_open(engine: Engine) -> None:
    async with open_http_server(engine, port=0, metrics_only=True) as server:
        answer = await Http(server.port).get("/metrics")
        assert answer.status == 200
        assert "motet_log_head_position" in answer.body.decode()


async def test_a_metrics_port_with_tokens_needs_the_full_or_the_metrics_token(
    engine: Engine,
) -> None:
    async with open_http_server(
        engine,
        port=0,
        metrics_only=True,
        token=FULL_TOKEN,
        client_token=CLIENT_TOKEN,
        metrics_token=METRICS_TOKEN,
        auth_failure_delay=0.01,
    ) as server:
        missing = await Http(server.port).get("/metrics")
        assert (missing.status, missing.code) == (401, "unauthorized")
        assert "needs the token or the metrics token" in missing.json()["error"]["message"]
        assert missing.headers["www-authenticate"] == 'Bearer realm="motet"'
        assert b"motet_" not in missing.body
        for token in (FULL_TOKEN, METRICS_TOKEN):
            answer = await Http(server.port, token=token).get("/metrics")
            assert answer.status == 200, token
            assert "motet_log_head_position" in answer.body.decode()
        # The client token opens no metrics port: it is a wrong token there.
        for token in (CLIENT_TOKEN, "guess"):
            async with Http(server.port, token=token).connect() as connection:
                wrong = await connection.request("GET", "/metrics")
                assert (wrong.status, wrong.code) == (401, "unauthorized"), token
                assert wrong.headers["connection"] == "close"
        assert auth_failures(engine) == 2
        # An unknown path is still 404: the port serves /metrics alone.
        other = await Http(server.port, token=FULL_TOKEN).get("/status")
        assert (other.status, other.code) == (404, "not_found")


async def test_the_metrics_token_opens_only_metrics_on_the_api_port(engine: Engine) -> None:
    async with open_http_server(
        engine, port=0, token=FULL_TOKEN, client_token=CLIENT_TOKEN, metrics_token=METRICS_TOKEN
    ) as server:
        scraper = Http(server.port, token=METRICS_TOKEN)
        assert (await scraper.get("/metrics")).status == 200
        for method, path in (
            ("GET", "/status"),
            ("POST", "/commands/CreateUser"),
            ("GET", "/queries/GetUserById?user_id=u1"),
            ("GET", "/streams/User-u1"),
        ):
            body = user("u1") if method == "POST" else None
            answer = await scraper.request(method, path, body)
            assert (answer.status, answer.code) == (401, "unauthorized"), path
            assert (
                "metrics token (scope 'metrics'), which may only read /metrics"
                in (answer.json()["error"]["message"])
            )
        for token in (FULL_TOKEN, CLIENT_TOKEN):
            assert (await Http(server.port, token=token).get("/metrics")).status == 200
        assert (await Http(server.port).get("/metrics")).status == 401
        assert auth_failures(engine) == 0


@pytest.mark.parametrize("same", [FULL_TOKEN, CLIENT_TOKEN])
def test_the_metrics_token_must_differ_from_the_others(same: str) -> None:
    with pytest.raises(ValueError, match="the metrics token must differ from the other tokens"):
        Tokens(FULL_TOKEN, CLIENT_TOKEN, same)


async def test_the_metrics_port_caps_its_connections(tmp_path: Path) -> None:
    async with open_engine(
        tmp_path / "db", app, metrics_port=0, metrics_max_connections=2
    ) as engine:
        assert engine.metrics_port is not None
        http = Http(engine.metrics_port)
        async with http.connect() as first, http.connect() as second:
            for connection in (first, second):
                assert (await connection.request("GET", "/metrics")).status == 200
            refused = await http.get("/metrics")
            assert (refused.status, refused.code) == (429, "overloaded")
            assert "too many connections (max 2)" in refused.json()["error"]["message"]
            assert refused.headers["retry-after"] == "1"
            # The kept connections are still served.
            assert (await first.request("GET", "/metrics")).status == 200
        # Once they close, a new scrape gets in again.
        with trio.fail_after(5):
            while (answer := await http.get("/metrics")).status != 200:
                await trio.sleep(0.01)
        assert answer.status == 200


async def test_open_engine_guards_its_metrics_port_with_its_tokens(tmp_path: Path) -> None:
    async with open_engine(
        tmp_path / "db", app, metrics_port=0, http_token=FULL_TOKEN, metrics_token=METRICS_TOKEN
    ) as engine:
        assert engine.metrics_port is not None
        assert (await Http(engine.metrics_port).get("/metrics")).status == 401
        for token in (FULL_TOKEN, METRICS_TOKEN):
            assert (await Http(engine.metrics_port, token=token).get("/metrics")).status == 200


async def test_open_engine_refuses_a_metrics_cap_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metrics_max_connections must be >= 1, got 0"):
        async with open_engine(tmp_path / "db", app, metrics_port=0, metrics_max_connections=0):
            pass  # pragma: no cover
