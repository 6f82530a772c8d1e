"""Secrets and the ``motet`` command: tokens kept off the command line (file,
environment), the client token of ``motet serve``, wrong tokens against a
real server, and an interactive history without passwords."""

from __future__ import annotations

import json
import os
import re
import stat
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

from tests.cli.test_cli import CREATE_ANN, Reader, interactive_client
from tests.support.peer import open_peer

FULL_TOKEN = "full-s3cret-token"
CLIENT_TOKEN = "client-s3cret-token"


def test_serve_help_says_the_command_line_is_public(motet: Any) -> None:
    result = motet.run("serve", "--help")
    assert result.returncode == 0
    # Without white space: argparse wraps the lines where it likes.
    text = "".join(result.stdout.split())
    for option, variable in (
        ("--token-file", "$MOTET_TOKEN"),
        ("--client-token-file", "$MOTET_CLIENT_TOKEN"),
        ("--metrics-token-file", "$MOTET_METRICS_TOKEN"),
    ):
        assert f"visibletoeverylocaluserin/proc/PID/cmdline(ps):prefer{option}or{variable}" in text
    assert "mayonlysendcommands,queries,statusandping" in text


async def test_tokens_from_the_environment_and_a_file(
    motet: Any, motet_server: Any, tmp_path: Path
) -> None:
    client_file = tmp_path / "client-token"
    client_file.write_text(CLIENT_TOKEN + "\n")
    motet.env["MOTET_TOKEN"] = FULL_TOKEN
    try:
        server = motet_server("--client-token-file", str(client_file))
    finally:
        del motet.env["MOTET_TOKEN"]
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    assert FULL_TOKEN.encode() not in cmdline and CLIENT_TOKEN.encode() not in cmdline
    assert "visible to every local user" not in server.log()
    port = str(server.port)

    def client(*args: str, env: dict[str, str] | None = None) -> Any:
        return motet.run("client", "--port", port, *args, env=env)

    created = await trio.to_thread.run_sync(
        lambda: client("--token-file", str(client_file), CREATE_ANN)
    )
    assert created.returncode == 0, created.stderr
    refused = await trio.to_thread.run_sync(
        lambda: client("--token-file", str(client_file), "--json", "read User-u1")
    )
    assert refused.returncode == 1
    reply = json.loads(refused.stdout)
    assert reply["error"]["code"] == "unauthorized"
    assert "read needs the full-access token (scope 'full')" in reply["error"]["message"]
    assert "password_hash" not in refused.stdout
    read = await trio.to_thread.run_sync(
        lambda: client("--json", "read User-u1", env={"MOTET_TOKEN": FULL_TOKEN})
    )
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["result"]["events"][0]["type"] == "UserCreated"
    status = await trio.to_thread.run_sync(
        lambda: motet.run("status", "--port", port, env={"MOTET_TOKEN": CLIENT_TOKEN})
    )
    assert status.returncode == 0, status.stderr


def test_the_same_token_twice_is_a_usage_error(motet: Any) -> None:
    result = motet.run("serve", "--token", "same", "--client-token", "same")
    assert result.returncode == 2
    assert "the client token must differ from the full-access token" in result.stderr


def _auth_failures(metrics_port: int) -> float:
    request = urllib.request.Request(
        f"http://127.0.0.1:{metrics_port}/metrics",
        headers={"Authorization": f"Bearer {FULL_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
    match = re.search(r"^motet_auth_failures_total (\S+)$", text, re.MULTILINE)
    assert match is not None, text
    return float(match[1])


async def test_wrong_tokens_against_motet_serve(motet_server: Any) -> None:
    server = motet_server("--token", FULL_TOKEN)
    assert "--token is visible to every local user in /proc/" in server.log()
    started = time.monotonic()
    async with open_peer(server.port) as peer, open_peer(server.port) as good:
        await peer.write(*({"id": n, "op": "auth", "token": f"guess-{n}"} for n in range(6)))
        assert (await good.ask({"op": "auth", "token": FULL_TOKEN}))["ok"]
        for n in range(5):
            reply = await peer.read(timeout=30)
            assert (reply["id"], reply["error"]["code"]) == (n, "unauthorized")
            # Meanwhile another connection is answered at once.
            asked = time.monotonic()
            assert (await good.ask({"op": "ping"}))["result"] == "pong"
            assert time.monotonic() - asked < 0.5
        # The sixth guess is never answered: the connection closes after five.
        assert await peer.eof(timeout=10)
    # One second per wrong token, one after another on a connection.
    assert time.monotonic() - started >= 5 * 1.0
    assert server.metrics_port is not None
    assert await trio.to_thread.run_sync(_auth_failures, server.metrics_port) == 5
    log = server.log()
    assert "1 failed authentication attempt(s) on the line server (latest from 127.0.0.1:" in log
    assert log.count("failed authentication attempt(s)") == 1


def test_the_history_keeps_no_passwords(motet: Any, motet_server: Any) -> None:
    history_file = motet.home / ".motet_history"
    # Written by a version that kept everything.
    history_file.write_text("CreateUser user_id=old password=leaked-before\nping\n")
    server = motet_server()
    secret_json = json.dumps(
        {
            "op": "command",
            "type": "CreateUser",
            "data": {
                "user_id": "u2",
                "name": "Bo",
                "email": "bo@example.org",
                "password": "json-pw-4711",
            },
        }
    )
    with interactive_client(motet, server.port) as (session, controller):
        screen = Reader(controller)
        screen.read_until(b"motet> ")
        for line in (
            CREATE_ANN.replace("password=pw", "password=pw-0815"),
            secret_json,
            '{"op": "auth", "token": "tok-4242"}',
            "GetUserById user_id=u1 @after=1",
        ):
            os.write(controller, line.encode() + b"\n")
            screen.read_until(b"motet> ")
        os.write(controller, b"\x04")
        screen.read_to_end()
        assert session.wait(10) == 0
    history = history_file.read_text()
    for secret in ("pw-0815", "json-pw-4711", "tok-4242", "leaked-before", "password"):
        assert secret not in history, history
    assert "GetUserById user_id=u1 @after=1" in history
    assert "ping" in history
    assert stat.S_IMODE(history_file.stat().st_mode) == 0o600
