"""The dashboard's commit-batch-size quantiles over the engine's own buckets:
when every commit holds one command, p50, p99 and the mean all show 1 (not the
0.5 and 0.99 that interpolating the lowest bucket from 0 gives). Evaluated by
``promtool test rules``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from motet.engine.metrics import BATCH_BUCKETS
from tests.process.test_prometheus_e2e import DASHBOARD, RULES, _binary


def _batch_panel_expressions() -> dict[str, str]:
    """legend -> PromQL of the "Commit batch size" panel, with the dashboard's
    variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Commit batch size"]
    return {
        target["legendFormat"]: target["expr"]
        .replace("$__rate_interval", "5m")
        .replace('"$job"', '".*"')
        .replace('"$instance"', '".*"')
        for target in panel["targets"]
    }


def test_one_command_commits_show_a_batch_size_of_one(tmp_path: Path) -> None:
    assert BATCH_BUCKETS[0] == 1
    labels = 'job="motet", instance="db1:9707"'
    # Ten commits of one command a minute: every bucket counts them all.
    series = [
        {"series": f'motet_commit_batch_size_bucket{{{labels}, le="{bound}"}}', "values": "0+10x20"}
        for bound in [*map(float, BATCH_BUCKETS), "+Inf"]
    ]
    series += [
        {"series": f"motet_commit_batch_size_{part}{{{labels}}}", "values": "0+10x20"}
        for part in ("sum", "count")
    ]
    expressions = _batch_panel_expressions()
    one = [{"labels": "{}", "value": 1}]
    assert set(expressions) == {"p50", "p99", "mean"}
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "10m",
                        "exp_samples": one,
                    }
                    for expr in expressions.values()
                ],
            }
        ],
    }
    path = tmp_path / "batch.test.yml"
    path.write_text(json.dumps(tests, indent=2))  # JSON is YAML
    done = subprocess.run(
        [_binary("promtool"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
