"""The Prometheus endpoint, scraped over real HTTP on 127.0.0.1.

Every metric of docs/design.md ("Metrics") is there with its type and labels;
counters move by exactly what was done, per outcome; projection lag is
computed when scraped; each engine has its own registry and port; the
endpoint answers only ``GET /metrics``, listens on loopback by default, and
goes away (with no thread left behind) when the engine closes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import motet.engine.metrics as metrics_module
from motet.engine import (
    Aggregate,
    App,
    CommandRejected,
    Conflict,
    Engine,
    EngineClosed,
    Overloaded,
    Projection,
    ProjectionFailed,
    Unavailable,
    UnknownMessageType,
    open_client,
    open_engine,
    open_server,
)
from motet.engine.example import OrderPlaced, PlaceOrder, UpdateUser, app, user
from motet.engine.example import queries as example_queries
from motet.engine.example import users_projection as users
from tests.support.commands import create_user as create
from tests.support.commands import place_order

# The contract of docs/design.md, as prometheus_client's parser names the families:
# a counter family drops the "_total" its samples carry, a histogram's samples
# are <name>_bucket / _count / _sum.
DESIGN_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "motet_log_head_position": ("gauge", frozenset()),
    "motet_projection_position": ("gauge", frozenset({"projection"})),
    "motet_projection_lag_events": ("gauge", frozenset({"projection"})),
    "motet_projection_lag_seconds": ("gauge", frozenset({"projection"})),
    "motet_commands": ("counter", frozenset({"type", "outcome"})),
    "motet_command_duration_seconds": ("histogram", frozenset({"type"})),
    "motet_events_appended": ("counter", frozenset()),
    "motet_commit_batch_size": ("histogram", frozenset()),
    "motet_commit_duration_seconds": ("histogram", frozenset()),
    "motet_actors_active": ("gauge", frozenset({"aggregate"})),
    "motet_snapshots": ("counter", frozenset({"aggregate"})),
}

OUTCOMES = {"ok", "rejected", "conflict", "overloaded", "invalid", "unavailable", "error"}


class NotACommand(msgspec.Struct, frozen=True, kw_only=True, tag="NotACommand"):
    """A message no aggregate of the example app handles."""

    user_id: str


def order(user_id: str, n: int, amount: float = 10.0) -> PlaceOrder:
    return place_order(user_id, f"o{n}", amount)


# -- HTTP and parsing ----------------------------------------------------------------


class Response(msgspec.Struct, frozen=True):
    status: int
    headers: dict[str, str]
    body: bytes


async def http(
    port: int, method: str = "GET", path: str = "/metrics", body: bytes = b""
) -> Response:
    """One HTTP/1.1 request over a plain trio TCP stream (no worker thread)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        received = bytearray()
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                received += chunk
    head, separator, payload = bytes(received).partition(b"\r\n\r\n")
    assert separator, f"no end of headers in {bytes(received)[:200]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if method != "HEAD":
        assert int(headers["content-length"]) == len(payload)
    return Response(int(status), headers, payload)


class Scrape:
    """One parsed scrape of ``/metrics``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self._values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self._values, f"duplicate sample {key}"
                self._values[key] = sample.value

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the sample ``name`` with exactly these labels, or None."""
        return self._values.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        """Like :meth:`get`, but the sample must exist."""
        found = self.get(name, **labels)
        assert found is not None, f"no sample {name}{labels} in:\n{self.text}"
        return found

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample called ``name``, by its label set."""
        return {labels: value for (sample, labels), value in self._values.items() if sample == name}


async def scrape(engine: Engine) -> Scrape:
    assert engine.metrics_port is not None
    response = await http(engine.metrics_port)
    assert response.status == 200, response
    return Scrape(response.body.decode())


def commands_by_type_and_outcome(scraped: Scrape) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for labels, value in scraped.labelled("motet_commands_total").items():
        found = dict(labels)
        counts[found["type"], found["outcome"]] = int(value)
    return counts


def check_histogram(scraped: Scrape, name: str, **labels: str) -> None:
    """Buckets are cumulative, end with +Inf, and +Inf equals the count."""
    buckets = sorted(
        (float(dict(found)["le"]), value)
        for found, value in scraped.labelled(f"{name}_bucket").items()
        if {key: v for key, v in found if key != "le"} == labels
    )
    assert buckets, f"no buckets of {name}{labels}"
    assert buckets[-1][0] == float("inf")
    counts = [value for _bound, value in buckets]
    assert counts == sorted(counts), f"{name}{labels} buckets are not cumulative: {buckets}"
    assert counts[-1] == scraped.value(f"{name}_count", **labels)


# -- the catalogue -------------------------------------------------------------------


async def test_every_design_metric_is_exposed_with_its_type_and_labels(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "db", app, metrics_port=0) as engine:
        await engine.send(create("ada"))
        await engine.send(order("ada", 1))
        with pytest.raises(CommandRejected):
            await engine.send(order("ada", 2, amount=-1))
        response = await http(engine.metrics_port or 0)
        scraped = Scrape(response.body.decode())

    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    for name, (kind, label_names) in DESIGN_METRICS.items():
        family = scraped.families.get(name)
        assert family is not None, f"{name} is missing from:\n{scraped.text}"
        assert family.type == kind, f"{name} is a {family.type}, docs/design.md says {kind}"
        assert family.samples, f"{name} has no samples"
        for sample in family.samples:
            names = set(sample.labels) - {"le"}
            assert names == label_names, f"{sample.name} has labels {names}, not {label_names}"
            if kind == "counter":
                assert sample.name == f"{name}_total"
            if kind == "histogram":
                assert sample.name in {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    assert "motet_commands_total" in scraped.text  # the exposed name, as in the rules
    assert scraped.value("motet_projection_lag_seconds", projection="users") >= 0
    assert scraped.value("motet_actors_active", aggregate="User") == 1
    assert scraped.value("motet_snapshots_total", aggregate="User") == 0
    outcomes = {outcome for _type, outcome in commands_by_type_and_outcome(scraped)}
    assert outcomes == {"ok", "rejected"} and outcomes <= OUTCOMES


def test_the_documented_outcomes_are_the_error_tables() -> None:
    assert set(metrics_module.OUTCOMES) == OUTCOMES
    assert metrics_module.outcome_of(None) == "ok"
    assert metrics_module.outcome_of(EngineClosed("the engine is closing")) == "unavailable"
    assert metrics_module.outcome_of(ProjectionFailed("stopped")) == "error"
    assert metrics_module.outcome_of(ValueError("empty id")) == "invalid"


async def test_commands_refused_while_closing_count_as_unavailable(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "db", app, metrics_port=0) as engine:
        await engine.send(create("ada"))
        engine._closing = True  # what open_engine's exit does first
        try:
            with pytest.raises(EngineClosed):
                await engine.send(create("bob"))
            async with (
                open_server(engine, port=0) as server,
                open_client("127.0.0.1", server.port) as client,
            ):
                with pytest.raises(Unavailable):
                    await client.send(create("carol"))
        finally:
            engine._closing = False
        counts = commands_by_type_and_outcome(await scrape(engine))
    assert counts["CreateUser", "ok"] == 1
    assert counts["CreateUser", "unavailable"] == 2
    assert counts["CreateUser", "error"] == 0


# -- counters and histograms ---------------------------------------------------------


async def test_counters_move_by_exactly_the_commands_sent_per_outcome(tmp_path: Path) -> None:
    observed: Counter[tuple[str, str]] = Counter()

    async def attempt(engine: Engine, command: Any, **options: Any) -> None:
        name = type(command).__name__  # the example's tags are the class names
        try:
            await engine.send(command, **options)
        except CommandRejected:
            outcome = "rejected"
        except Conflict:
            outcome = "conflict"
        except Overloaded:
            outcome = "overloaded"
        except (ValueError, UnknownMessageType):
            outcome = "invalid"
        else:
            outcome = "ok"
        observed[name, outcome] += 1

    # A one-command mailbox, so that a burst at a new actor (still loading) overflows it.
    async with open_engine(
        tmp_path / "db", app, metrics_port=0, mailbox_size=1, snapshot_every=4
    ) as engine:
        await attempt(engine, create("ada"))
        await attempt(engine, create("bob"))
        before, stats_before = await scrape(engine), engine.statistics()
        observed.clear()

        for n in range(6):
            await attempt(engine, order("ada", n))
        await attempt(engine, UpdateUser(user_id="bob", city="Lima"))
        for _ in range(3):
            await attempt(engine, order("ada", 99, amount=-5))
        await attempt(engine, create("ada"))
        for _ in range(2):
            await attempt(engine, order("ada", 99), expected_version=99)
        await attempt(engine, UpdateUser(user_id="bob", city="Kyiv"), expected_version=0)
        for _ in range(2):
            await attempt(engine, order("", 99))
        await attempt(engine, NotACommand(user_id="ada"))
        planned = Counter({
            ("PlaceOrder", "ok"): 6, ("UpdateUser", "ok"): 1, ("PlaceOrder", "rejected"): 3,
            ("CreateUser", "rejected"): 1, ("PlaceOrder", "conflict"): 2,
            ("UpdateUser", "conflict"): 1, ("PlaceOrder", "invalid"): 2,
            ("NotACommand", "invalid"): 1,
        })  # fmt: skip
        assert observed == planned

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(attempt, engine, create("carol"))
        burst = observed - planned
        assert burst["CreateUser", "ok"] == 1
        assert burst["CreateUser", "overloaded"] >= 1, burst
        assert burst.total() == 4

        after, stats_after = await scrape(engine), engine.statistics()
        head, status = engine.head_position, engine.status()

    # Counters: the difference is exactly what was sent, outcome by outcome.
    counts_before, counts_after = (commands_by_type_and_outcome(s) for s in (before, after))
    for key in counts_before.keys() | counts_after.keys() | observed.keys():
        assert counts_after[key] - counts_before[key] == observed[key], key
    assert {outcome for _type, outcome in counts_after} <= OUTCOMES

    # Command latency: one observation per command, whatever its outcome.
    for command_type in {command_type for command_type, _outcome in observed}:
        sent = sum(n for (kind, _outcome), n in observed.items() if kind == command_type)
        count_before = before.get("motet_command_duration_seconds_count", type=command_type) or 0
        count_after = after.value("motet_command_duration_seconds_count", type=command_type)
        assert count_after - count_before == sent, command_type
        check_histogram(after, "motet_command_duration_seconds", type=command_type)
        assert after.value("motet_command_duration_seconds_sum", type=command_type) > 0

    # Events and commits agree with the engine's own counters.
    ok = sum(n for (_kind, outcome), n in observed.items() if outcome == "ok")
    appended = after.value("motet_events_appended_total")
    assert appended - before.value("motet_events_appended_total") == ok
    assert appended == stats_after.events_appended == head
    assert stats_after.events_appended - stats_before.events_appended == ok
    assert after.value("motet_log_head_position") == head
    assert after.value("motet_commit_batch_size_count") == stats_after.commits
    assert after.value("motet_commit_batch_size_sum") == stats_after.commands_committed
    assert after.value("motet_commit_duration_seconds_count") == stats_after.commits
    assert after.value("motet_commit_duration_seconds_sum") > 0
    assert stats_after.commits > stats_before.commits
    check_histogram(after, "motet_commit_batch_size")
    check_histogram(after, "motet_commit_duration_seconds")

    # ada, bob and carol have live actors; ada's 7 events crossed a snapshot.
    assert after.value("motet_actors_active", aggregate="User") == 3
    assert status.actors_by_aggregate == {"User": 3}
    assert after.value("motet_snapshots_total", aggregate="User") == stats_after.snapshots >= 1


class Bump(msgspec.Struct, frozen=True, kw_only=True, tag="Bump"):
    counter_id: str
    times: int


class Bumped(msgspec.Struct, frozen=True, kw_only=True, tag="Bumped"):
    counter_id: str


counter: Aggregate[int] = Aggregate(
    name="Counter",
    state_type=int,
    initial=0,
    decide=lambda state, command: [Bumped(counter_id=command.counter_id)] * command.times,
    evolve=lambda state, event: state + 1,
    commands={Bump: "counter_id"},
    events=(Bumped,),
)


async def test_events_are_counted_apart_from_commands_and_actors_per_aggregate(
    tmp_path: Path,
) -> None:
    two_aggregates = App(aggregates=(user, counter), projections=(users,), queries=example_queries)
    async with open_engine(tmp_path / "db", two_aggregates, metrics_port=0) as engine:
        await engine.send(create("ada"))
        await engine.send(Bump(counter_id="c1", times=3))
        await engine.send(Bump(counter_id="c2", times=4))
        await engine.send(Bump(counter_id="c1", times=5))
        scraped = await scrape(engine)
        head = engine.head_position

    assert head == 1 + 3 + 4 + 5
    assert scraped.value("motet_events_appended_total") == head
    assert scraped.value("motet_commands_total", type="Bump", outcome="ok") == 3
    assert scraped.value("motet_commit_batch_size_sum") == 4
    assert scraped.value("motet_actors_active", aggregate="User") == 1
    assert scraped.value("motet_actors_active", aggregate="Counter") == 2
    assert scraped.value("motet_snapshots_total", aggregate="Counter") == 0


# -- projection lag ------------------------------------------------------------------


async def test_projection_lag_is_measured_when_scraped(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "db", app, metrics_port=0) as engine:
        projection = engine.projection("users")
        ack = await engine.send(create("ada"))
        with trio.fail_after(5):
            await projection.wait_for(ack.position)
        caught_up = await scrape(engine)
        assert caught_up.value("motet_projection_lag_events", projection="users") == 0
        assert caught_up.value("motet_projection_lag_seconds", projection="users") == 0

        projection.pause()
        first_sent = time.time()
        first_ack = None
        for n in range(5):
            ack = await engine.send(order("ada", n))
            first_ack = first_ack or time.time()
        assert first_ack is not None
        head = engine.head_position
        scrape_started = time.time()
        lagging = await scrape(engine)
        lag = lagging.value("motet_projection_lag_seconds", projection="users")
        assert lagging.value("motet_projection_lag_events", projection="users") == 5
        assert lagging.value("motet_projection_position", projection="users") == head - 5
        assert lagging.value("motet_log_head_position") == head
        # The age of the oldest unapplied event: committed after first_sent,
        # before its Ack arrived.
        assert scrape_started - first_ack <= lag <= time.time() - first_sent
        assert lag > 0

        await trio.sleep(0.2)
        later = await scrape(engine)
        assert later.value("motet_projection_lag_events", projection="users") == 5
        assert later.value("motet_projection_lag_seconds", projection="users") >= lag + 0.15
        [status] = engine.status().projections
        assert status.lag_events == 5

        projection.resume()
        with trio.fail_after(5):
            await projection.wait_for(head)
        resumed = await scrape(engine)
        assert resumed.value("motet_projection_lag_events", projection="users") == 0
        assert resumed.value("motet_projection_lag_seconds", projection="users") == 0
        assert resumed.value("motet_projection_position", projection="users") == head


async def test_a_failed_projection_is_flagged_until_skipped(tmp_path: Path) -> None:
    def refuse_13(model: dict[str, float], event: OrderPlaced, record: Any) -> None:
        if event.amount == 13:
            raise RuntimeError("unlucky amount")
        model[event.order_id] = event.amount

    fragile: Projection[dict[str, float]] = Projection(
        name="fragile", initial=dict, handlers={OrderPlaced: refuse_13}
    )
    with_fragile = App(aggregates=(user,), projections=(users, fragile), queries=example_queries)
    async with open_engine(tmp_path / "db", with_fragile, metrics_port=0) as engine:
        await engine.send(create("ada"))
        await engine.send(order("ada", 1, amount=13))
        ack = await engine.send(order("ada", 2))
        with trio.fail_after(5):
            await engine.projection("users").wait_for(ack.position)
            with pytest.raises(ProjectionFailed, match="unlucky amount"):
                await engine.projection("fragile").wait_for(ack.position)
        failed = await scrape(engine)
        engine.projection("fragile").skip()
        with trio.fail_after(5):
            await engine.projection("fragile").wait_for(ack.position)
        skipped = await scrape(engine)

    assert failed.value("motet_projection_failed", projection="fragile") == 1
    assert failed.value("motet_projection_failed", projection="users") == 0
    assert failed.value("motet_projection_lag_events", projection="fragile") == 2
    assert failed.value("motet_projection_position", projection="fragile") == ack.position - 2
    assert failed.value("motet_projection_lag_events", projection="users") == 0
    assert skipped.value("motet_projection_failed", projection="fragile") == 0
    assert skipped.value("motet_projection_lag_events", projection="fragile") == 0


# -- one registry per engine ---------------------------------------------------------


async def test_two_engines_in_one_process_report_their_own_counts(tmp_path: Path) -> None:
    async with (
        open_engine(tmp_path / "a", app, metrics_port=0) as first,
        open_engine(tmp_path / "b", app, metrics_port=0) as second,
    ):
        assert first.metrics_port != second.metrics_port
        for n in range(3):
            await first.send(create(f"a{n}"))
        for n in range(5):
            await second.send(create(f"b{n}"))
        with pytest.raises(CommandRejected):
            await second.send(order("b0", 1, amount=-1))
        scraped = [await scrape(first), await scrape(second)]

    for found, creates, rejected in zip(scraped, (3, 5), (None, 1), strict=True):
        assert found.value("motet_commands_total", type="CreateUser", outcome="ok") == creates
        assert found.get("motet_commands_total", type="PlaceOrder", outcome="rejected") == rejected
        assert found.value("motet_events_appended_total") == creates
        assert found.value("motet_log_head_position") == creates
        assert found.value("motet_actors_active", aggregate="User") == creates


# -- the endpoint --------------------------------------------------------------------


async def test_endpoint_serves_only_get_and_head_of_metrics(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "db", app, metrics_port=0) as engine:
        port = engine.metrics_port
        assert port is not None
        await engine.send(create("ada"))
        # A client that connects and says nothing must not hold up the scrapes.
        async with await trio.open_tcp_stream("127.0.0.1", port):
            ok = await http(port)
            head = await http(port, "HEAD")
            with_query = await http(port, "GET", "/metrics?name[]=motet_log_head_position")
            missing = await http(port, "GET", "/nope")
            missing_prefix = await http(port, "GET", "/metricsx")
            post = await http(port, "POST", "/metrics", b"x=1")
            delete = await http(port, "DELETE", "/metrics")

    assert ok.status == 200
    assert "motet_log_head_position 1.0" in ok.body.decode()
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) > 0
    assert with_query.status == 200 and b"motet_commands_total" in with_query.body
    assert (missing.status, missing_prefix.status) == (404, 404)
    assert b"motet_" not in missing.body
    assert (post.status, delete.status) == (405, 405)
    assert b"motet_" not in post.body


async def test_endpoint_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "db", app, metrics_port=0) as engine:
        port = engine.metrics_port
        assert port is not None
        assert (await http(port)).status == 200
        # All of 127/8 reaches this host, but a socket bound to 127.0.0.1
        # (unlike one bound to 0.0.0.0) accepts nothing on 127.0.0.2.
        with pytest.raises(OSError):
            stream = await trio.open_tcp_stream("127.0.0.2", port)
            await stream.aclose()


def _threads_other_than_trio_workers(threads: Iterable[threading.Thread]) -> set[threading.Thread]:
    # trio keeps idle worker threads of to_thread.run_sync (the LMDB commits)
    # cached for a few seconds by design; those are not the endpoint's.
    return {thread for thread in threads if not thread.name.startswith("Trio thread")}


async def test_port_closes_and_no_thread_is_left_when_the_engine_exits(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    count_before = threading.active_count()
    async with open_engine(tmp_path / "db", app, metrics_port=0) as engine:
        port = engine.metrics_port
        assert port is not None
        await engine.send(create("ada"))
        assert (await scrape(engine)).value("motet_log_head_position") == 1
        during = _threads_other_than_trio_workers(set(threading.enumerate()) - threads_before)
        assert during == set(), "the endpoint must serve from the event loop, not a thread"

    with pytest.raises(OSError):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
    new_threads = set(threading.enumerate()) - threads_before
    assert _threads_other_than_trio_workers(new_threads) == set()
    cached_workers = len(new_threads)
    assert threading.active_count() - cached_workers <= count_before


async def test_commands_refused_by_the_protocol_are_counted_as_invalid(tmp_path: Path) -> None:
    async with (
        open_engine(tmp_path / "store", app, metrics_port=0) as engine,
        open_server(engine, port=0) as server,
        open_client("127.0.0.1", server.port) as client,
    ):
        replies = [
            await client.request(
                {"op": "command", "type": "PlaceOrder", "data": {"user_id": "u1"}}
            ),
            await client.request({"op": "command", "type": "NoSuchCommand", "data": {"x": 1}}),
            await client.request({"op": "command", "type": "AnotherMadeUpName", "data": {}}),
        ]
        assert [reply["error"]["code"] for reply in replies] == [
            "invalid",
            "unknown_type",
            "unknown_type",
        ]
        counted = commands_by_type_and_outcome(await scrape(engine))
    # Made-up type names share one label value: clients cannot grow the series.
    assert counted == Counter({("PlaceOrder", "invalid"): 1, ("unknown", "invalid"): 2})
