"""``motet delete-stream``, ``motet retention`` and ``motet compact``
against a real ``motet serve`` process and a real data directory."""

from __future__ import annotations

import json
from typing import Any

CREATE = "CreateUser user_id={0} name=N{0} email={0}@example.org password=pw city=Oslo"


def test_delete_stream_soft_then_hard_with_the_servers_opt_in(
    motet: Any, motet_server: Any
) -> None:
    server = motet_server("--allow-hard-delete")
    port = str(server.port)
    requests = [CREATE.format(f"u{n}") for n in range(4)]
    assert motet.run("client", "--port", port, *requests).returncode == 0

    soft = motet.run("delete-stream", "--port", port, "User-u1")
    hard = motet.run("delete-stream", "--port", port, "User-u2", "--hard", "--json")
    refused = motet.run(
        "client", "--port", port, "--json", "PlaceOrder user_id=u1 order_id=o amount=1"
    )
    missing = motet.run("delete-stream", "--port", port, "User-nobody")

    assert (soft.returncode, soft.stderr) == (0, "")
    assert soft.stdout.startswith("deleted User-u1 at version 1 (a tombstone")
    assert hard.returncode == 0, hard.stderr
    assert json.loads(hard.stdout)["removed"] == 1
    assert json.loads(refused.stdout.splitlines()[-1])["error"]["code"] == "rejected"
    assert missing.returncode == 1
    assert missing.stderr == (
        "motet: error: not_found: stream 'User-nobody' has no events: there is nothing to delete\n"
    )
    assert server.terminate() == 0
    verified = motet.run("verify", "--data", str(server.data))
    assert verified.returncode == 0, verified.stderr
    assert "1 positions removed on purpose" in verified.stdout
    inspected = motet.run("inspect", "--data", str(server.data), "--stream", "User-u1")
    assert inspected.stdout.startswith("deleted at version 1 (a tombstone)")


def test_a_hard_delete_without_the_opt_in_is_refused(motet: Any, motet_server: Any) -> None:
    server = motet_server()
    port = str(server.port)
    assert motet.run("client", "--port", port, CREATE.format("u1")).returncode == 0

    refused = motet.run("delete-stream", "--port", port, "User-u1", "--hard")

    assert refused.returncode == 1
    assert refused.stderr.startswith("motet: error: unauthorized: hard delete is disabled")
    assert "--allow-hard-delete" in refused.stderr


def test_retention_on_a_server_without_any_retention_removes_nothing(
    motet: Any, motet_server: Any
) -> None:
    server = motet_server()
    result = motet.run("retention", "--port", str(server.port))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "removed 0 events from 0 of 0 streams\n"


def test_compact_is_refused_while_the_server_runs_and_shrinks_the_store_after(
    motet: Any, motet_server: Any
) -> None:
    server = motet_server("--allow-hard-delete")
    port, data = str(server.port), str(server.data)
    requests = [CREATE.format(f"u{n}") for n in range(60)]
    assert motet.run("client", "--port", port, *requests).returncode == 0
    for n in range(0, 60, 2):
        assert motet.run("delete-stream", "--port", port, f"User-u{n}", "--hard").returncode == 0

    busy = motet.run("compact", "--data", data)
    assert server.terminate() == 0
    done = motet.run("compact", "--data", data)

    assert busy.returncode == 1
    assert "in use: another process has this store open" in busy.stderr
    assert done.returncode == 0, done.stderr
    assert "bytes given back" in done.stdout
    assert motet.run("verify", "--data", data).returncode == 0
