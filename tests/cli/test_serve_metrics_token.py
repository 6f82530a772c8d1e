"""``motet serve``'s metrics endpoint, scraped over real HTTP: open without
tokens, else it needs ``Authorization: Bearer`` with the full-access token
or the metrics token (``--metrics-token-file``, ``$MOTET_METRICS_TOKEN``,
``--metrics-token``); ``--metrics-max-connections`` caps its connections."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

FULL_TOKEN = "full-s3cret-token"
METRICS_TOKEN = "metrics-s3cret-token"


def _scrape(port: int, token: str | None = None, path: str = "/metrics") -> tuple[int, bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_without_tokens_the_metrics_stay_open(motet_server: Any) -> None:
    server = motet_server()
    assert server.metrics_port is not None
    status, body = _scrape(server.metrics_port)
    assert status == 200
    assert b"motet_log_head_position" in body


def test_with_tokens_a_scrape_needs_the_full_or_the_metrics_token(
    motet: Any, motet_server: Any, tmp_path: Path
) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text(METRICS_TOKEN + "\n")
    motet.env["MOTET_TOKEN"] = FULL_TOKEN
    try:
        server = motet_server("--metrics-token-file", str(token_file), "--http-port", "0")
    finally:
        del motet.env["MOTET_TOKEN"]
    assert "visible to every local user" not in server.log()
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    assert METRICS_TOKEN.encode() not in cmdline
    assert server.metrics_port is not None and server.http_port is not None
    for port in (server.metrics_port, server.http_port):
        status, body = _scrape(port)
        assert status == 401, port
        error = json.loads(body)["error"]
        assert error["code"] == "unauthorized"
        assert b"motet_" not in body
        for token in (FULL_TOKEN, METRICS_TOKEN):
            status, body = _scrape(port, token)
            assert status == 200, (port, token)
            assert b"motet_log_head_position" in body
        status, body = _scrape(port, "guess")
        assert (status, json.loads(body)["error"]["code"]) == (401, "unauthorized")
    # On the API port the metrics token opens /metrics and nothing else.
    status, body = _scrape(server.http_port, METRICS_TOKEN, "/status")
    assert status == 401
    assert "may only read /metrics" in json.loads(body)["error"]["message"]
    assert _scrape(server.http_port, FULL_TOKEN, "/status")[0] == 200


def test_the_metrics_token_from_the_environment_and_the_command_line(
    motet: Any, motet_server: Any, tmp_path: Path
) -> None:
    motet.env["MOTET_METRICS_TOKEN"] = METRICS_TOKEN
    try:
        server = motet_server()
    finally:
        del motet.env["MOTET_METRICS_TOKEN"]
    assert server.metrics_port is not None
    assert _scrape(server.metrics_port)[0] == 401
    assert _scrape(server.metrics_port, METRICS_TOKEN)[0] == 200

    visible = motet_server("--metrics-token", METRICS_TOKEN, data=tmp_path / "second")
    assert visible.metrics_port is not None
    assert _scrape(visible.metrics_port)[0] == 401
    assert _scrape(visible.metrics_port, METRICS_TOKEN)[0] == 200
    assert (
        "--metrics-token is visible to every local user in /proc/"
        f"{visible.process.pid}/cmdline: prefer --metrics-token-file or $MOTET_METRICS_TOKEN"
    ) in visible.log()


def test_a_metrics_token_equal_to_another_token_is_a_usage_error(motet: Any) -> None:
    result = motet.run("serve", "--token", "same", "--metrics-token", "same")
    assert result.returncode == 2
    assert "the metrics token must differ from the full-access and the client token" in (
        result.stderr
    )
    empty = motet.run("serve", "--metrics-token-file", "/dev/null")
    assert empty.returncode == 2
    assert "--metrics-token-file /dev/null is empty" in empty.stderr


def test_the_metrics_port_caps_its_connections(motet_server: Any) -> None:
    server = motet_server("--metrics-max-connections", "1")
    assert server.metrics_port is not None
    with socket.create_connection(("127.0.0.1", server.metrics_port), timeout=10) as held:
        held.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        first = held.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        status, body = _scrape(server.metrics_port)
        assert status == 429
        error = json.loads(body)["error"]
        assert error == {"code": "overloaded", "message": "too many connections (max 1)"}
    # The held connection closed: scrapes get in again.
    for _ in range(200):
        status, _body = _scrape(server.metrics_port)
        if status == 200:
            break
    assert status == 200


def test_metrics_on_another_address_without_a_token_are_warned_about(
    motet_server: Any, tmp_path: Path
) -> None:
    open_to_all = motet_server("--metrics-host", "0.0.0.0")
    assert (
        "serving metrics on 0.0.0.0 without --token or --metrics-token: anyone who can reach "
        "the port can read them"
    ) in open_to_all.log()
    guarded = motet_server(
        "--metrics-host", "0.0.0.0", "--metrics-token", METRICS_TOKEN, data=tmp_path / "second"
    )
    assert "can read them" not in guarded.log()
