"""The HTTP API over real sockets: every route, every error status from real
bad input, token auth, TLS, limits and the OpenAPI document."""

from __future__ import annotations

import json
from functools import partial

import pytest
import trio
from openapi_spec_validator import validate

from motet.engine import Engine
from motet.engine.net.http import HttpServer, open_http_server, serve_http
from motet.engine.net.protocol import ERROR_CODES
from tests.http.support import Http, user


async def test_command_answers_the_ack_with_an_etag(http: Http) -> None:
    answer = await http.post("/commands/CreateUser", user("u1"))
    assert answer.status == 200
    assert answer.json() == {"stream": "User-u1", "version": 1, "position": 1}
    assert answer.headers["etag"] == '"1"'
    assert answer.headers["content-type"] == "application/json"


async def test_idempotency_key_returns_the_first_ack_and_runs_once(http: Http) -> None:
    headers = {"Idempotency-Key": "create-u1"}
    first = await http.post("/commands/CreateUser", user("u1"), headers=headers)
    again = await http.post("/commands/CreateUser", user("u1"), headers=headers)
    assert first.status == again.status == 200
    assert again.json() == first.json()
    events = (await http.get("/streams/User-u1")).json()["events"]
    assert len(events) == 1


async def test_if_match_is_the_expected_version(http: Http) -> None:
    await http.post("/commands/CreateUser", user("u1"))
    ok = await http.post(
        "/commands/UpdateUser", {"user_id": "u1", "city": "Oslo"}, headers={"If-Match": '"1"'}
    )
    assert ok.status == 200, ok
    assert ok.json()["version"] == 2
    stale = await http.post(
        "/commands/UpdateUser", {"user_id": "u1", "city": "Rome"}, headers={"If-Match": "1"}
    )
    assert stale.status == 409
    error = stale.json()["error"]
    assert error["code"] == "conflict"
    assert (error["stream"], error["expected"], error["actual"]) == ("User-u1", 1, 2)
    bad = await http.post("/commands/UpdateUser", {"user_id": "u1"}, headers={"If-Match": "latest"})
    assert bad.status == 400
    assert bad.code == "bad_request"
    assert "'latest'" in bad.json()["error"]["message"]


async def test_correlation_headers_reach_the_event_metadata(http: Http, engine: Engine) -> None:
    await http.post(
        "/commands/CreateUser",
        user("u1"),
        headers={"Correlation-Id": "c-1", "Causation-Id": "k-1", "Idempotency-Key": "i-1"},
    )
    [event] = await engine.read_stream("User-u1")
    assert event.metadata.correlation_id == "c-1"
    assert event.metadata.causation_id == "k-1"
    assert event.metadata.command_id == "i-1"


async def test_rejected_command_is_422(http: Http) -> None:
    answer = await http.post("/commands/CreateUser", user("u1", email="not-an-email"))
    assert answer.status == 422
    assert answer.code == "rejected"
    assert "email" in answer.json()["error"]["message"]


async def test_malformed_json_is_400(http: Http) -> None:
    answer = await http.post("/commands/CreateUser", b'{"user_id": "u1",')
    assert answer.status == 400
    assert answer.code == "invalid"
    assert "JSON" in answer.json()["error"]["message"]


async def test_wrong_field_type_is_400_naming_the_field(http: Http) -> None:
    answer = await http.post(
        "/commands/PlaceOrder", {"user_id": "u1", "order_id": "o", "amount": "x"}
    )
    assert answer.status == 400
    assert answer.code == "invalid"
    assert "$.data.amount" in answer.json()["error"]["message"]
    unknown = await http.post("/commands/DeleteUser", {"user_id": "u1", "colour": "red"})
    assert unknown.status == 400
    assert "colour" in unknown.json()["error"]["message"]


async def test_unknown_types_are_404(http: Http) -> None:
    command = await http.post("/commands/LaunchRocket", {})
    assert command.status == 404
    assert command.code == "unknown_type"
    assert "CreateUser" in command.json()["error"]["message"]
    query = await http.get("/queries/GetRocket?id=1")
    assert query.status == 404
    assert query.code == "unknown_type"
    posted = await http.post("/queries/GetRocket", {})
    assert (posted.status, posted.code) == (404, "unknown_type")


async def test_refused_commands_are_counted(http: Http, engine: Engine) -> None:
    await http.post("/commands/LaunchRocket", {})
    await http.post("/commands/PlaceOrder", {"amount": "x"})
    metrics = (await http.get("/metrics")).body.decode()
    assert 'motet_commands_total{outcome="invalid",type="unknown"} 1.0' in metrics
    assert 'motet_commands_total{outcome="invalid",type="PlaceOrder"} 1.0' in metrics


async def test_queries_by_get_and_post(http: Http) -> None:
    ack = (await http.post("/commands/CreateUser", user("u1", city="Oslo"))).json()
    await http.post("/commands/PlaceOrder", {"user_id": "u1", "order_id": "o1", "amount": 12.5})
    by_get = await http.get(f"/queries/GetUserById?user_id=u1&after={ack['position']}")
    assert by_get.status == 200, by_get
    assert by_get.json()["user_id"] == "u1"
    by_post = await http.post(f"/queries/GetUserById?after={ack['position']}", {"user_id": "u1"})
    assert by_post.json() == by_get.json()
    # A value is read as its field's type: limit is an int, city a string.
    top = await http.get("/queries/TopSpenders?limit=1&timeout=2")
    assert [row["user_id"] for row in top.json()] == ["u1"]
    assert (await http.get("/queries/GetUsersByCity?city=Oslo")).json()[0]["user_id"] == "u1"
    numeric_id = await http.get("/queries/GetUserById?user_id=123")
    assert (numeric_id.status, numeric_id.code) == (404, "not_found")


async def test_query_errors(http: Http, engine: Engine) -> None:
    missing = await http.get("/queries/GetUserById?user_id=nobody")
    assert (missing.status, missing.code) == (404, "not_found")
    wrong = await http.get("/queries/TopSpenders?limit=many")
    assert (wrong.status, wrong.code) == (400, "invalid")
    assert "$.data.limit" in wrong.json()["error"]["message"]
    out_of_range = await http.get("/queries/TopSpenders?limit=0")
    assert (out_of_range.status, out_of_range.code) == (400, "invalid")
    bad_after = await http.get("/queries/TopSpenders?after=-1")
    assert (bad_after.status, bad_after.code) == (400, "bad_request")
    assert "$.after" in bad_after.json()["error"]["message"]
    twice = await http.get("/queries/GetUserById?user_id=a&user_id=b")
    assert (twice.status, twice.code) == (400, "bad_request")
    engine.projection("users").pause()
    await http.post("/commands/CreateUser", user("u1"))
    late = await http.get("/queries/GetUserById?user_id=u1&after=1&timeout=0.05")
    assert (late.status, late.code) == (504, "timeout")


async def test_read_stream_pages(http: Http) -> None:
    await http.post("/commands/CreateUser", user("u1"))
    for n in range(4):
        await http.post("/commands/PlaceOrder", {"user_id": "u1", "order_id": f"o{n}", "amount": 1})
    page = (await http.get("/streams/User-u1?limit=2")).json()
    assert [e["version"] for e in page["events"]] == [1, 2]
    assert page["next"] == 2
    rest = (await http.get(f"/streams/User-u1?from={page['next']}&limit=10")).json()
    assert [e["version"] for e in rest["events"]] == [3, 4, 5]
    event = rest["events"][0]
    assert set(event) >= {"position", "stream", "version", "type", "time", "data"}
    assert event["type"] == "OrderPlaced"
    empty = (await http.get("/streams/User-nobody")).json()
    assert empty == {"events": [], "next": 0}
    too_many = await http.get("/streams/User-u1?limit=10001")
    assert (too_many.status, too_many.code) == (400, "bad_request")
    unknown = await http.get("/streams/User-u1?form=1")
    assert (unknown.status, unknown.code) == (400, "bad_request")
    assert "form" in unknown.json()["error"]["message"]


async def test_status_and_metrics(http: Http) -> None:
    await http.post("/commands/CreateUser", user("u1"))
    status = (await http.get("/status")).json()
    assert status["head_position"] == 1
    assert status["commands"] == ["CreateUser", "DeleteUser", "PlaceOrder", "UpdateUser"]
    assert [p["name"] for p in status["projections"]] == ["users"]
    metrics = await http.get("/metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "motet_log_head_position 1.0" in metrics.body.decode()
    assert 'motet_commands_total{outcome="ok",type="CreateUser"} 1.0' in metrics.body.decode()


async def test_metrics_of_an_engine_without_them_is_404(tmp_path: object) -> None:
    from motet.engine import open_engine
    from motet.engine.example import app

    async with (
        open_engine(None, app, metrics=False) as engine,
        open_http_server(engine, port=0) as server,
    ):
        answer = await Http(server.port).get("/metrics")
    assert (answer.status, answer.code) == (404, "not_found")


async def test_projection_controls(http: Http, engine: Engine) -> None:
    listed = (await http.get("/projections")).json()
    assert listed["projections"][0]["name"] == "users"
    paused = (await http.post("/projections/users/pause")).json()
    assert paused["paused"] is True
    await http.post("/commands/CreateUser", user("u1"))
    view = (await http.get("/projections/users")).json()
    assert (view["position"], view["lag_events"]) == (0, 1)
    resumed = (await http.post("/projections/users/resume")).json()
    assert resumed["paused"] is False
    with trio.fail_after(5):
        await engine.projection("users").wait_for(1)
    for action in ("retry", "skip", "rebuild"):
        answer = await http.post(f"/projections/users/{action}")
        assert answer.status == 200, (action, answer)
    assert (await http.post("/projections/users/rebuild")).json()["position"] == 1
    unknown = await http.post("/projections/orders/pause")
    assert (unknown.status, unknown.code) == (404, "not_found")
    assert "users" in unknown.json()["error"]["message"]
    bad_action = await http.post("/projections/users/explode")
    assert (bad_action.status, bad_action.code) == (404, "not_found")
    by_get = await http.get("/projections/users/pause")
    assert by_get.status == 405
    assert by_get.headers["allow"] == "POST"


async def test_unknown_routes_and_methods(http: Http) -> None:
    assert (await http.get("/nowhere")).status == 404
    assert (await http.get("/commands/CreateUser")).status == 405
    assert (await http.get("/commands/CreateUser")).headers["allow"] == "POST"
    assert (await http.post("/status")).code == "bad_request"
    assert (await http.get("/status?verbose=1")).status == 400


async def test_oversized_body_is_413_and_closes(engine: Engine) -> None:
    async with open_http_server(engine, port=0, max_body=1000) as server:
        http = Http(server.port)
        big = json.dumps(user("u1", name="x" * 2000)).encode()
        answer = await http.post("/commands/CreateUser", big)
        assert (answer.status, answer.code) == (413, "too_large")
        assert answer.headers["connection"] == "close"
        # Without a length up front (chunked), the limit holds as it arrives.
        async with http.connect() as connection:
            import h11

            head = connection.conn.send(
                h11.Request(
                    method="POST",
                    target="/commands/CreateUser",
                    headers=[("host", "x"), ("transfer-encoding", "chunked")],
                )
            )
            await connection.stream.send_all(head + connection.conn.send(h11.Data(data=big)))
            response = await connection._next()
            assert response.status_code == 413
        ok = await http.post("/commands/CreateUser", user("u1"))
        assert ok.status == 200


async def test_token_is_needed_for_the_api_but_not_the_page(engine: Engine) -> None:
    async with open_http_server(engine, port=0, token="s3cret") as server:
        http = Http(server.port)
        missing = await http.get("/status")
        assert (missing.status, missing.code) == (401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await http.get("/status", headers={"Authorization": "Bearer guess"})
        assert wrong.status == 401
        basic = await http.get("/status", headers={"Authorization": "Basic czNjcmV0"})
        assert basic.status == 401
        command = await http.post("/commands/CreateUser", user("u1"))
        assert command.status == 401
        assert (await http.get("/status", headers={"Authorization": "Bearer s3cret"})).status == 200
        assert (await Http(server.port, token="s3cret").get("/metrics")).status == 200
        page = await http.get("/")
        assert page.status == 200
        assert b"<title>Motet admin</title>" in page.body
        assert (await http.get("/admin/admin.js")).status == 200
        assert (await http.get("/admin/secret.txt")).status == 404


async def test_tls(engine: Engine, tls_contexts: tuple[object, object]) -> None:
    server_context, client_context = tls_contexts
    async with open_http_server(engine, port=0, ssl_context=server_context) as server:
        http = Http(server.port, ssl_context=client_context)
        answer = await http.post("/commands/CreateUser", user("u1"))
        assert answer.status == 200
        assert (await http.get("/status")).json()["head_position"] == 1


async def test_keep_alive_serves_many_requests_on_one_connection(http: Http) -> None:
    async with http.connect() as connection:
        for n in range(20):
            answer = await connection.request("POST", "/commands/CreateUser", user(f"u{n}"))
            assert answer.status == 200
            assert "connection" not in answer.headers
        bad = await connection.request("POST", "/commands/CreateUser", b"{")
        assert bad.status == 400
        assert (await connection.request("GET", "/status")).json()["head_position"] == 20


async def test_connection_cap(engine: Engine) -> None:
    async with open_http_server(engine, port=0, max_connections=2) as server:
        http = Http(server.port)
        async with http.connect() as first, http.connect() as second:
            assert (await first.request("GET", "/status")).status == 200
            assert (await second.request("GET", "/status")).status == 200
            refused = await http.get("/status")
            assert (refused.status, refused.code) == (429, "overloaded")
            assert "max 2" in refused.json()["error"]["message"]
        with trio.fail_after(5):
            while server.statistics().connections:
                await trio.sleep(0.01)
        assert (await http.get("/status")).status == 200
        assert server.statistics().refused == 1


async def test_garbage_is_400_and_the_server_stays_up(http: Http, http_server: HttpServer) -> None:
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
        stream = await trio.open_tcp_stream("127.0.0.1", http_server.port)
        async with stream:
            await stream.send_all(garbage)
            reply = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(65536):
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 400"), reply
        assert b'"code":"bad_request"' in reply
    assert (await http.get("/status")).status == 200


async def test_graceful_stop_finishes_requests(engine: Engine) -> None:
    async with trio.open_nursery() as nursery:
        server: HttpServer = await nursery.start(partial(serve_http, engine, port=0))
        http = Http(server.port)
        async with http.connect() as idle:
            assert (await idle.request("GET", "/status")).status == 200
            server.stop()
            with trio.fail_after(5):
                assert await idle.stream.receive_some(100) == b""  # idle: closed at once
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)


async def test_every_wire_code_has_its_documented_status(http_server: HttpServer) -> None:
    documented = {
        "bad_request": 400,
        "invalid": 400,
        "unauthorized": 401,
        "not_found": 404,
        "unknown_type": 404,
        "conflict": 409,
        "too_large": 413,
        "rejected": 422,
        "overloaded": 429,
        "internal": 500,
        "unavailable": 503,
        "timeout": 504,
    }
    assert set(ERROR_CODES) == set(documented)
    assert {code: http_server.status_of(code) for code in documented} == documented


async def test_openapi_document_validates_and_names_everything(http: Http, engine: Engine) -> None:
    answer = await http.get("/openapi.json")
    assert answer.status == 200
    document = answer.json()
    validate(document)
    paths = document["paths"]
    for tag in engine.app.command_types():
        operation = paths[f"/commands/{tag}"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{tag}"
    for tag in engine.app.query_types():
        assert {"get", "post"} <= set(paths[f"/queries/{tag}"])
    schemas = document["components"]["schemas"]
    create = schemas["CreateUser"]
    assert set(create["required"]) == {"user_id", "name", "email", "password"}
    assert create["properties"]["city"]["default"] is None
    ok = paths["/queries/GetUserById"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UserSummary"
    }
    parameters = {p["name"] for p in paths["/queries/TopSpenders"]["get"]["parameters"]}
    assert parameters == {"limit", "after", "timeout"}
    for route in ("/streams/{stream}", "/events", "/status", "/metrics", "/openapi.json"):
        assert route in paths
    forget = paths["/forget/{subject}"]["post"]["responses"]["200"]
    assert forget["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Forgotten"
    }
    assert set(schemas["Forgotten"]["required"]) >= {"subject", "position", "key_deleted"}
    for action in ("pause", "resume", "retry", "skip", "rebuild"):
        assert f"/projections/{{name}}/{action}" in paths


async def test_a_metrics_only_port_serves_metrics_alone(engine: Engine) -> None:
    async with open_http_server(engine, port=0, metrics_only=True, token="t") as server:
        http = Http(server.port, token="t")
        metrics = await http.get("/metrics")
        assert metrics.status == 200
        assert "motet_log_head_position" in metrics.body.decode()
        for path in ("/status", "/", "/openapi.json"):
            answer = await http.get(path)
            assert (answer.status, answer.code) == (404, "not_found")
        assert (await http.post("/metrics")).status == 405
