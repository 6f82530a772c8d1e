"""Forgetting a data subject on the real ``motet serve`` process, under load.

Afterwards no byte of the subject's personal fields may be left in the LMDB
files (the raw bytes of data.mdb are searched: its aggregate snapshot and the
saved read model held them too), the log keeps every event at its position,
read models rebuilt from position 0 show the redacted value, and every other
user stays readable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from motet.engine import open_engine
from motet.engine.example import GetUserById, app
from motet.storage import LmdbStore
from tests.support.commands import create_user_request, place_order_request
from tests.support.peer import Peer, open_peer
from tests.support.tokens import CLIENT_TOKEN, FULL_TOKEN

USERS = 40
FORGOTTEN = "u7"


def secrets_of(user: str) -> list[bytes]:
    """The personal values of ``user`` as they were written (and must vanish)."""
    return [
        f"Zqname {user}".encode(),
        f"zq.{user}@example.org".encode(),
        f"Zqcity-{user}".encode(),
        f"Zqtown-{user}".encode(),
    ]


def create(user: str) -> dict[str, Any]:
    return create_user_request(
        user, f"Zqname {user}", email=f"zq.{user}@example.org", city=f"Zqcity-{user}"
    )


def update(user: str) -> dict[str, Any]:
    return {
        "op": "command",
        "type": "UpdateUser",
        "data": {"user_id": user, "city": f"Zqtown-{user}"},
    }


async def send_all(peer: Peer, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pipeline ``requests`` and return their replies in request order."""
    await peer.write(*({**request, "id": n} for n, request in enumerate(requests)))
    replies = await peer.read_many(len(requests), timeout=60)
    ordered = sorted(replies, key=lambda reply: reply["id"])
    assert all(reply["ok"] for reply in ordered), [r for r in ordered if not r["ok"]][:3]
    return ordered


def in_files(data: Path, needles: list[bytes]) -> list[bytes]:
    """The needles found in the raw bytes of the store's files."""
    raw = b"".join(path.read_bytes() for path in sorted(data.iterdir()) if path.is_file())
    return [needle for needle in needles if needle in raw]


async def test_forgetting_a_subject_under_load_leaves_none_of_its_bytes(
    motet_server: Any, motet: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    tokens = ("--token", FULL_TOKEN, "--client-token", CLIENT_TOKEN)
    server = motet_server(*tokens, data=data)
    async with open_peer(server.port) as peer:
        assert (await peer.ask({"op": "auth", "token": FULL_TOKEN}))["ok"]
        await send_all(peer, [create(f"u{n}") for n in range(USERS)])
        await send_all(peer, [update(f"u{n}") for n in range(USERS)])
        # Past 100 events: the aggregate's snapshot holds the subject's state.
        orders = [place_order_request(FORGOTTEN, f"o{n}", 1) for n in range(105)]
        await send_all(peer, orders)
    # A restart saves the read model, with every user in it, in data.mdb.
    assert server.terminate() == 0
    assert in_files(data, secrets_of(FORGOTTEN)) == []  # encrypted from the start

    server = motet_server(*tokens, data=data)
    async with open_peer(server.port) as peer:
        assert (await peer.ask({"op": "auth", "token": FULL_TOKEN}))["ok"]
        before = await peer.ask({"op": "read", "stream": f"User-{FORGOTTEN}", "limit": 10_000})
        before_events = before["result"]["events"]
        reader = LmdbStore(data, readonly=True)
        key = reader.get_key(FORGOTTEN)
        reader.close()
        assert key is not None
        assert before_events[0]["data"]["name"] == f"Zqname {FORGOTTEN}"

        async def load(worker: int) -> None:
            async with open_peer(server.port) as loader:
                assert (await loader.ask({"op": "auth", "token": CLIENT_TOKEN}))["ok"]
                for n in range(60):
                    user = f"u{(worker * 7 + n) % USERS}"
                    if user == FORGOTTEN:
                        user = "u0"
                    request = (
                        update(user) if n % 5 == 0 else place_order_request(user, f"w{worker}-{n}")
                    )
                    reply = await loader.ask({**request, "id": n})
                    assert reply["ok"], reply

        async with trio.open_nursery() as nursery:
            for worker in range(4):
                nursery.start_soon(load, worker)
            await trio.sleep(0.2)
            # The client token may not forget; the CLI says so in one line.
            refused = await trio.to_thread.run_sync(
                lambda: motet.run(
                    "forget",
                    "--port",
                    str(server.port),
                    FORGOTTEN,
                    env={"MOTET_TOKEN": CLIENT_TOKEN},
                )
            )
            assert refused.returncode == 1, refused
            assert "forget needs the full-access token" in refused.stderr, refused.stderr
            done = await trio.to_thread.run_sync(
                lambda: motet.run(
                    "forget",
                    "--port",
                    str(server.port),
                    "--json",
                    FORGOTTEN,
                    env={"MOTET_TOKEN": FULL_TOKEN},
                )
            )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["subject"] == FORGOTTEN and result["stream"] == f"Subject-{FORGOTTEN}"
        assert (result["key_deleted"], result["already_forgotten"]) == (True, False)

        # Forgetting again is harmless, and says so.
        again = motet.run(
            "forget", "--port", str(server.port), FORGOTTEN, env={"MOTET_TOKEN": FULL_TOKEN}
        )
        assert again.returncode == 0, again.stderr
        assert f"subject '{FORGOTTEN}' was already forgotten" in again.stdout

        assert (await peer.ask({"op": "auth", "token": FULL_TOKEN}))["ok"]
        # The live read model blanked the user; the others are untouched.
        query = {"op": "query", "type": "GetUserById", "after": result["position"]}
        gone = (await peer.ask({**query, "data": {"user_id": FORGOTTEN}}))["result"]
        assert (gone["name"], gone["email"], gone["city"]) == ("", "", "")
        assert gone["order_count"] >= 105
        kept = (await peer.ask({**query, "data": {"user_id": "u8"}}))["result"]
        assert kept["name"] == "Zqname u8" and kept["email"] == "zq.u8@example.org"
        # The log kept every event where it was; only the personal fields read "".
        after = await peer.ask({"op": "read", "stream": f"User-{FORGOTTEN}", "limit": 10_000})
        after_events = after["result"]["events"][: len(before_events)]
        assert [(e["position"], e["version"], e["type"]) for e in after_events] == [
            (e["position"], e["version"], e["type"]) for e in before_events
        ]
        created, updated = after_events[0]["data"], after_events[1]["data"]
        assert (created["name"], created["email"], created["city"]) == ("", "", "")
        assert created["password_hash"] == before_events[0]["data"]["password_hash"]
        assert updated["city"] == ""
        # The actor reloaded: the forgotten user still takes orders.
        assert (await peer.ask({**place_order_request(FORGOTTEN, "late"), "id": 1}))["ok"]
        # Bad subjects are refused precisely, and the connection goes on.
        for subject, code, message in (
            ("", "invalid", "subject must be a non-empty string, got ''"),
            ("a\x01b", "invalid", "subject must not contain control characters"),
            ("x" * 600, "invalid", "longer than the limit of 494 bytes"),
            (7, "bad_request", "Expected `str`, got `int` - at `$.subject`"),
        ):
            reply = await peer.ask({"id": "f", "op": "forget", "subject": subject})
            assert reply["error"]["code"] == code, reply
            assert message in reply["error"]["message"], reply
        assert (await peer.ask({"op": "ping"}))["result"] == "pong"
    assert server.terminate() == 0

    # No byte of the forgotten user's personal fields is left in the files:
    # not in the log, nor in its snapshot, nor in the read models saved
    # before and after (their old copies may sit in freed pages).
    assert in_files(data, secrets_of(FORGOTTEN)) == []
    # The key is gone from the store (LMDB may keep a freed page's old bytes
    # until it reuses the page: docs/design.md, "Forgetting personal data").
    reader = LmdbStore(data, readonly=True)
    assert reader.get_key(FORGOTTEN) is None and reader.get_key("u8") not in (None, key)
    reader.close()
    # ...while what is not personal is there to be found (the search works).
    assert in_files(data, [f"Subject-{FORGOTTEN}".encode(), b"pbkdf2_sha256"]) != []

    # motet inspect decodes with the store's keys: redacted, or in clear.
    for user, name in ((FORGOTTEN, ""), ("u8", "Zqname u8")):
        shown = motet.run("inspect", "--data", str(data), "--stream", f"User-{user}", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)[0]["data"]["name"] == name

    # Read models rebuilt from position 0 redact the user; the others read back.
    async with open_engine(data, app) as engine:
        projection = engine.projection("users")
        await projection.rebuild()
        gone = await engine.ask(GetUserById(user_id=FORGOTTEN))
        assert (gone.name, gone.email, gone.city) == ("", "", "")
        kept = await engine.ask(GetUserById(user_id="u9"))
        assert (kept.name, kept.email) == ("Zqname u9", "zq.u9@example.org")
        assert kept.city == "Zqtown-u9"
