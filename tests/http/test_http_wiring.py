"""The HTTP API where users turn it on: ``open_engine(http_port=)`` and
``motet serve --http-port``; and the metrics port, served by the same code."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from motet.engine import open_engine
from motet.engine.example import CreateUser, app
from tests.http.support import Http


async def test_open_engine_serves_the_api_behind_its_token_until_it_closes(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path / "db", app, http_port=0, http_token="s3cret") as engine:
        port = engine.http_port
        assert port is not None
        ack = await engine.send(
            CreateUser(user_id="ann", name="Ann", email="ann@example.org", password="pw")
        )
        status = await Http(port, token="s3cret").get("/status")
        assert status.status == 200
        assert status.json()["head_position"] == ack.position
        refused = await Http(port).get("/status")
        assert (refused.status, refused.code) == (401, "unauthorized")
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_the_metrics_port_serves_metrics_only(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "db", app, metrics_port=0) as engine:
        assert engine.metrics_port is not None
        http = Http(engine.metrics_port)
        assert (await http.get("/metrics")).status == 200
        head = await http.request("HEAD", "/metrics")
        assert (head.status, head.body) == (200, b"")
        status = await http.get("/status")
        assert (status.status, status.code) == (404, "not_found")
    assert engine.http_port is None


def _call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_motet_serve_http_port_answers_like_the_line_protocol(motet: Any) -> None:
    server = motet.serve("--http-port", "0")
    assert server.http_port is not None
    created = {"user_id": "ann", "name": "Ann", "email": "ann@example.org", "password": "pw"}
    status, ack = _call(server.http_port, "POST", "/commands/CreateUser", created)
    assert status == 200 and ack["stream"] == "User-ann"
    status, user = _call(
        server.http_port, "GET", f"/queries/GetUserById?user_id=ann&after={ack['position']}"
    )
    assert (status, user["name"]) == (200, "Ann")
    status, again = _call(server.http_port, "POST", "/commands/CreateUser", created)
    assert (status, again["error"]["code"]) == (422, "rejected")
    # The line protocol sees the same store.
    reply = motet.run("client", "--port", str(server.port), "GetUserById user_id=ann")
    assert '"name": "Ann"' in reply.stdout
    assert server.terminate() == 0
