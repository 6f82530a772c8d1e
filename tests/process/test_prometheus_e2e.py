"""deploy/ against a real Prometheus: the rules and configs pass promtool (and
the rules' unit tests), and a Prometheus server scraping a real ``motet
serve`` under load sees its metrics, evaluates the rules and answers every
query of the Grafana dashboard.

Needs the ``prometheus`` and ``promtool`` binaries (Debian package
``prometheus``; .ci/run installs it). Without them the Prometheus tests are
skipped locally but fail in CI (``CI`` set), so the check cannot vanish
silently there. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from motet.engine.net.blocking import connect
from tests.support.paths import REPO as ROOT
from tests.support.ports import free_port as _free_port

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "motet-rules.yml"
RULES_TESTS = DEPLOY / "prometheus" / "motet-rules.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "motet-dashboard.json"

# docs/design.md's metric names (plus motet_projection_failed, which the alerts use).
METRICS = {
    "motet_log_head_position",
    "motet_projection_position",
    "motet_projection_lag_events",
    "motet_projection_lag_seconds",
    "motet_projection_failed",
    "motet_commands_total",
    "motet_command_duration_seconds",
    "motet_events_appended_total",
    "motet_commit_batch_size",
    "motet_commit_duration_seconds",
    "motet_actors_active",
    "motet_snapshots_total",
    "motet_group_parked",
    "motet_group_lag_events",
}
ALERTS = {
    "MotetDown",
    "MotetGroupEventsParked",
    "MotetProjectionLagging",
    "MotetProjectionFailed",
    "MotetProjectionStalled",
    "MotetCommandsOverloaded",
    "MotetCommandErrors",
    "MotetCommitsSlow",
}

# Total budget of the end-to-end scenario, from starting `motet serve` to the
# last successful query.
E2E_BUDGET = 35.0

T = TypeVar("T")


def _binary(name: str) -> str:
    """The path of a Prometheus binary; skip without it, except in CI."""
    found = shutil.which(name) or next(
        (str(path) for path in (Path("/usr/bin") / name,) if path.exists()), None
    )
    if found is None:
        message = f"{name} is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run should have installed it")
        pytest.skip(message)
    return found


def _promtool(*args: str) -> str:
    done = subprocess.run(
        [_binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def _generated_config(directory: Path, target: str) -> Path:
    """A Prometheus config scraping ``target`` every second with Motet's rules.

    JSON is YAML, so no YAML library is needed.
    """
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "motet", "static_configs": [{"targets": [target]}]},
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))
    return path


def _dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    ]


def _metric_names(expression: str) -> set[str]:
    """The Motet metrics an expression reads (histogram series by family)."""
    names = set(re.findall(r"\bmotet_[a-z_]+", expression))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}


# -- files only (no Prometheus needed) -----------------------------------------------


def test_dashboard_is_a_grafana_dashboard_over_motet_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "motet-overview" and dashboard["title"] == "Motet"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= variables.keys()

    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles: list[str] = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            expression = target["expr"]
            assert 'instance=~"$instance"' in expression, (panel["title"], expression)
            names = _metric_names(expression)
            assert names and names <= METRICS, (panel["title"], names - METRICS)

    expressions = [expression for _title, expression in _dashboard_expressions()]
    read = set().union(*map(_metric_names, expressions))
    assert read == METRICS, f"metrics without a panel: {METRICS - read}"
    for wanted in ("lag (seconds)", "lag (events)", "throughput", "latency", "batch size",
                   "commit duration", "head", "actors"):  # fmt: skip
        assert any(wanted in title.lower() for title in titles), wanted
    quantiles = [expression for expression in expressions if "histogram_quantile" in expression]
    assert set().union(*map(_metric_names, quantiles)) >= {
        "motet_command_duration_seconds",
        "motet_commit_batch_size",
        "motet_commit_duration_seconds",
    }


def test_rules_use_only_motet_metrics_and_name_the_design_alerts() -> None:
    text = RULES.read_text()
    assert _metric_names(text) <= METRICS
    assert set(re.findall(r"^\s*- alert: (\w+)$", text, flags=re.MULTILINE)) == ALERTS
    assert "motet_projection_lag_seconds > 30" in text
    assert 'rate(motet_commands_total{outcome="overloaded"}[5m])' in text
    assert "motet_projection_failed == 1" in text
    config = PROMETHEUS_CONFIG.read_text()
    assert "127.0.0.1:9707" in config and "scrape_interval: 5s" in config
    assert re.search(r"rule_files:\s*\n\s*- motet-rules\.yml", config)


# -- promtool ------------------------------------------------------------------------


def test_rules_and_configs_pass_promtool(tmp_path: Path) -> None:
    assert "SUCCESS: 12 rules found" in _promtool("check", "rules", str(RULES))
    assert "SUCCESS" in _promtool("test", "rules", str(RULES_TESTS))
    assert "SUCCESS: 1 rule files found" in _promtool("check", "config", str(PROMETHEUS_CONFIG))
    generated = _generated_config(tmp_path, "127.0.0.1:9707")
    assert "SUCCESS: 1 rule files found" in _promtool("check", "config", str(generated))


def test_promtool_catches_a_broken_rule(tmp_path: Path) -> None:
    """The checks above can fail: promtool refuses a rule with bad PromQL."""
    broken = tmp_path / "broken.yml"
    lagging = "motet_projection_lag_seconds > 30"
    broken.write_text(RULES.read_text().replace(lagging, f"rate({lagging})"))
    with pytest.raises(AssertionError, match=r"MotetProjectionLagging.*expected type range vector"):
        _promtool("check", "rules", str(broken))


# -- a real Prometheus scraping a real `motet serve` ---------------------------------

# Load for the server under test: ~200 commands/s through the TCP client (one
# in ten is rejected) until SIGTERM, then exit 0.
LOAD_SCRIPT = textwrap.dedent(
    """
    import signal
    import sys

    import trio

    from motet.engine import CommandRejected
    from motet.engine.net.client import open_client
    from motet.engine.example import CreateUser, PlaceOrder

    RATE = 200
    USERS = 10


    async def load(client):
        for n in range(USERS):
            try:
                await client.send(CreateUser(
                    user_id=f"u{n}", name=f"User {n}", email=f"u{n}@example.org", password="pw"))
            except CommandRejected:
                pass  # already there
        n = 0
        while True:
            amount = -1.0 if n % 10 == 0 else 5.0
            try:
                await client.send(
                    PlaceOrder(user_id=f"u{n % USERS}", order_id=f"o{n}", amount=amount))
            except CommandRejected:
                pass
            n += 1
            await trio.sleep(1 / RATE)


    async def main(host, port):
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_client(host, port) as client, trio.open_nursery() as nursery:
                nursery.start_soon(load, client)
                print("loading", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
        print("stopped", flush=True)


    trio.run(main, sys.argv[1], int(sys.argv[2]))
    """
)


def _wait_until(
    what: str,
    deadline: float,
    check: Callable[[], T | None],
    log: Path,
    explain: Callable[[], str] = lambda: "",
) -> T:
    """Poll ``check`` until it returns something other than None, or fail."""
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}{explain()}; log:\n{_tail(log)}")
        time.sleep(0.2)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Terminate, then kill if it does not exit; return the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=15)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; whatever is still running is killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=15)


def _start_load(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], host: str, port: int
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the load generator against ``host:port``; return it and its log."""
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    log = tmp_path / "load.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(script), host, str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    processes.append(process)
    return process, log


class PrometheusApi:
    """Prometheus' HTTP API on 127.0.0.1, bypassing any configured proxy."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, **params: str) -> tuple[int, bytes]:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with self._opener.open(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def query(self, expression: str) -> list[dict[str, Any]]:
        status, body = self.get("/api/v1/query", query=expression)
        assert status == 200, f"{expression!r}: HTTP {status} {body[:300]!r}"
        answer = json.loads(body)
        assert answer["status"] == "success", (expression, answer)
        assert answer["data"]["resultType"] == "vector", (expression, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


def test_prometheus_scrapes_motet_serve(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], motet_server: Any
) -> None:
    prometheus = _binary("prometheus")
    deadline = time.monotonic() + E2E_BUDGET
    # `motet serve --port 0 --metrics-port 0`, ports read from its log (conftest.py).
    server = motet_server()
    assert server.metrics_port is not None
    target = f"127.0.0.1:{server.metrics_port}"
    load, load_log = _start_load(tmp_path, processes, server.host, server.port)
    # A consumer group, so that its series exist for the dashboard's panels.
    with (
        connect(server.host, server.port) as client,
        client.consume("dashboard", types=["UserCreated"], prefetch=1) as events,
    ):
        next(iter(events)).ack()

    web_port = _free_port()
    prometheus_log = tmp_path / "prometheus.log"
    with prometheus_log.open("wb") as output:
        scraper = subprocess.Popen(
            [
                prometheus,
                f"--config.file={_generated_config(tmp_path, target)}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    processes.append(scraper)
    api = PrometheusApi(web_port)

    def ready() -> bool | None:
        if scraper.poll() is not None:
            pytest.fail(f"prometheus exited with {scraper.returncode}:\n{_tail(prometheus_log)}")
        return True if api.get("/-/ready")[0] == 200 else None

    _wait_until("prometheus to be ready", deadline, ready, prometheus_log)

    def scraped() -> list[dict[str, Any]] | None:
        up = api.query('up{job="motet"}')
        return up if up and up[0]["value"][1] == "1" else None

    [up] = _wait_until("a successful scrape", deadline, scraped, prometheus_log)
    assert up["metric"]["instance"] == target

    def lag_series() -> list[dict[str, Any]] | None:
        return api.query("motet_projection_lag_seconds") or None

    [lag] = _wait_until("motet_projection_lag_seconds", deadline, lag_series, prometheus_log)
    assert lag["metric"]["projection"] == "users"
    assert lag["metric"]["job"] == "motet" and lag["metric"]["instance"] == target
    assert float(lag["value"][1]) >= 0

    def command_rates() -> dict[str, float] | None:
        rates = api.query("sum by (outcome) (rate(motet_commands_total[10s]))")
        by_outcome = {series["metric"]["outcome"]: float(series["value"][1]) for series in rates}
        return (
            by_outcome
            if by_outcome.get("ok", 0) > 0 and by_outcome.get("rejected", 0) > 0
            else None
        )

    rates = _wait_until("a positive command rate", deadline, command_rates, prometheus_log)
    assert set(rates) == {"ok", "rejected"}, rates

    # Every rule is loaded and evaluates without error against live data.
    def rules_evaluated() -> list[dict[str, Any]] | None:
        status, body = api.get("/api/v1/rules")
        assert status == 200
        groups = json.loads(body)["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

    rules = _wait_until("the rules to be evaluated", deadline, rules_evaluated, prometheus_log)
    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} == ALERTS
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []
    firing = [rule["name"] for rule in rules if rule.get("state") == "firing"]
    assert firing == [], f"alerts firing on a healthy server: {firing}"

    # Every query of the dashboard, as Grafana would send it, returns data.
    def substituted(expression: str) -> str:
        return (
            expression.replace("$__rate_interval", "10s")
            .replace('"$job"', '".*"')
            .replace('"$instance"', '".*"')
        )

    unanswered: list[str] = []

    def dashboard_answers() -> bool | None:
        unanswered[:] = [
            f"{title}: {expression}"
            for title, expression in _dashboard_expressions()
            if not api.query(substituted(expression))
        ]
        return None if unanswered else True

    _wait_until(
        "every dashboard query to return data",
        deadline,
        dashboard_answers,
        prometheus_log,
        lambda: " (no data: " + "; ".join(unanswered) + ")",
    )
    assert load.poll() is None, f"the load generator died:\n{_tail(load_log)}"
    assert _stop(load) == 0, f"the load generator failed:\n{_tail(load_log)}"
    assert "stopped" in load_log.read_text()
    _stop(scraper)
    assert server.terminate() == 0, f"motet serve did not stop cleanly:\n{server.log()}"


def _config_with_the_token(directory: Path, target: str, token_file: Path) -> Path:
    """deploy/'s prometheus.yml with its ``authorization:`` block uncommented
    (pointing at ``token_file``), scraping ``target`` every second, plus a
    job scraping the same target without the token."""
    text = PROMETHEUS_CONFIG.read_text()
    edits = {
        "    # authorization:\n": "    authorization:\n",
        "    #   credentials_file: /etc/prometheus/motet-metrics-token\n": (
            f"      credentials_file: {token_file}\n"
        ),
        "  - motet-rules.yml\n": f"  - {RULES}\n",
        '"127.0.0.1:9707"': f'"{target}"',
        "scrape_interval: 5s": "scrape_interval: 1s",
        "scrape_timeout: 5s": "scrape_timeout: 1s",
    }
    for old, new in edits.items():
        assert text.count(old) == 1, f"{PROMETHEUS_CONFIG} no longer holds {old!r}"
        text = text.replace(old, new)
    text += (
        f'  - job_name: motet-without-token\n    static_configs:\n      - targets: ["{target}"]\n'
    )
    path = directory / "prometheus.yml"
    path.write_text(text)
    return path


def test_prometheus_scrapes_with_the_metrics_token_of_the_deploy_config(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], motet_server: Any
) -> None:
    prometheus = _binary("prometheus")
    deadline = time.monotonic() + E2E_BUDGET
    token_file = tmp_path / "motet-metrics-token"
    token_file.write_text("prometheus-only-s3cret\n")
    token_file.chmod(0o600)
    server = motet_server("--token", "full-s3cret", "--metrics-token-file", str(token_file))
    assert server.metrics_port is not None
    target = f"127.0.0.1:{server.metrics_port}"
    config = _config_with_the_token(tmp_path, target, token_file)
    assert "SUCCESS" in _promtool("check", "config", str(config))

    web_port = _free_port()
    prometheus_log = tmp_path / "prometheus.log"
    with prometheus_log.open("wb") as output:
        scraper = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    processes.append(scraper)
    api = PrometheusApi(web_port)

    def ready() -> bool | None:
        if scraper.poll() is not None:
            pytest.fail(f"prometheus exited with {scraper.returncode}:\n{_tail(prometheus_log)}")
        return True if api.get("/-/ready")[0] == 200 else None

    _wait_until("prometheus to be ready", deadline, ready, prometheus_log)

    def both_scraped() -> dict[str, str] | None:
        up = {series["metric"]["job"]: series["value"][1] for series in api.query("up")}
        return up if len(up) == 2 else None

    def head_scraped() -> list[dict[str, Any]] | None:
        return api.query('motet_log_head_position{job="motet"}') or None

    _wait_until("the token's scrape", deadline, head_scraped, prometheus_log)
    up = _wait_until("both jobs scraped", deadline, both_scraped, prometheus_log)
    assert up == {"motet": "1", "motet-without-token": "0"}, up
    assert not api.query('motet_log_head_position{job="motet-without-token"}')
    assert _stop(scraper) == 0
