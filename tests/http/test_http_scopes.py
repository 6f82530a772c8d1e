"""Token scopes and wrong tokens on the HTTP API, over real sockets: the
client token opens commands, queries and the status, not ``/streams``,
``/events`` or the projection controls; a wrong bearer token is answered
late, counted, and closes its connection."""

from __future__ import annotations

import trio

from motet.engine import Engine
from motet.engine.net.http import open_http_server
from tests.http.support import Http, user
from tests.support.tokens import CLIENT_TOKEN, FULL_TOKEN, auth_failures


async def test_the_client_token_opens_only_the_client_routes(engine: Engine) -> None:
    async with open_http_server(
        engine, port=0, token=FULL_TOKEN, client_token=CLIENT_TOKEN
    ) as server:
        client = Http(server.port, token=CLIENT_TOKEN)
        full = Http(server.port, token=FULL_TOKEN)
        assert (await client.post("/commands/CreateUser", user("u1"))).status == 200
        assert (await client.get("/queries/GetUserById?user_id=u1&after=1")).status == 200
        for path in ("/status", "/metrics", "/openapi.json", "/projections", "/projections/users"):
            assert (await client.get(path)).status == 200, path
        for method, path in (
            ("GET", "/streams/User-u1"),
            ("GET", "/events"),
            ("POST", "/projections/users/pause"),
            ("POST", "/projections/users/rebuild"),
        ):
            answer = await client.request(method, path, b"" if method == "POST" else None)
            assert (answer.status, answer.code) == (401, "unauthorized"), (path, answer)
            assert "needs the full-access token (scope 'full')" in answer.json()["error"]["message"]
            assert 'error="insufficient_scope", scope="full"' in answer.headers["www-authenticate"]
            assert b"password_hash" not in answer.body
        assert engine.projections["users"].status().state == "running"
        read = await full.get("/streams/User-u1")
        assert read.status == 200 and read.json()["events"][0]["type"] == "UserCreated"
        assert (await full.post("/projections/users/pause")).status == 200


async def test_forget_over_http_needs_the_full_token_and_names_a_bad_subject(
    engine: Engine,
) -> None:
    async with open_http_server(
        engine, port=0, token=FULL_TOKEN, client_token=CLIENT_TOKEN
    ) as server:
        client = Http(server.port, token=CLIENT_TOKEN)
        full = Http(server.port, token=FULL_TOKEN)
        assert (await client.post("/commands/CreateUser", user("u/1"))).status == 200
        refused = await client.post("/forget/u%2F1")
        assert (refused.status, refused.code) == (401, "unauthorized")
        assert "forget needs the full-access token" in refused.json()["error"]["message"]
        assert engine.store.get_key("u/1") is not None

        done = await full.post("/forget/u%2F1")
        assert done.status == 200, done.body
        assert done.json() == {
            "subject": "u/1",
            "stream": "Subject-u/1",
            "position": 2,
            "key_deleted": True,
            "already_forgotten": False,
        }
        again = await full.post("/forget/u%2F1")
        assert again.json()["already_forgotten"] is True
        user_row = await full.get("/queries/GetUserById?user_id=u%2F1&after=3")
        assert user_row.json()["name"] == ""
        bad = await full.post("/forget/a%01b")
        assert (bad.status, bad.code) == (400, "invalid")
        assert "subject must not contain control characters" in bad.json()["error"]["message"]
        assert (await full.get("/forget/u1")).status == 405


async def test_wrong_bearer_tokens_are_slow_counted_and_close(engine: Engine) -> None:
    delay = 0.2
    async with open_http_server(
        engine, port=0, token=FULL_TOKEN, client_token=CLIENT_TOKEN, auth_failure_delay=delay
    ) as server:
        http = Http(server.port)
        good = Http(server.port, token=CLIENT_TOKEN)
        started = trio.current_time()
        async with http.connect(token="guess") as connection:
            answer = await connection.request("GET", "/status")
            assert (answer.status, answer.code) == (401, "unauthorized")
            assert answer.headers["connection"] == "close"
            assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        assert trio.current_time() - started >= delay
        # No token at all is no guess: answered at once, not counted.
        missing = await http.get("/status")
        assert missing.status == 401
        assert auth_failures(engine) == 1

        latencies: list[float] = []

        async def guess(n: int) -> None:
            answer = await http.get("/status", headers={"Authorization": f"Bearer guess-{n}"})
            assert answer.status == 401

        async def good_client(done: trio.Event) -> None:
            while not done.is_set():
                asked = trio.current_time()
                assert (await good.get("/status")).status == 200
                latencies.append(trio.current_time() - asked)
                await trio.sleep(0.05)

        done = trio.Event()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good_client, done)
            async with trio.open_nursery() as guesses:
                for n in range(20):
                    guesses.start_soon(guess, n)
            done.set()
        # 20 wrong tokens, at most 4 waiting at once, 0.2 s each.
        assert trio.current_time() - started >= 20 * delay / 4
        assert auth_failures(engine) == 21
        assert latencies and max(latencies) < delay
