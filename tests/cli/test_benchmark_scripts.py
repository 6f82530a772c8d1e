"""The benchmark scripts run from a source checkout, on the installed package;
the installed package never imports them (they are not installed).

Nothing here times anything: a tiny run only proves the scripts still work.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALLED = ("engine", "actors", "storage")
SCRIPTS = (
    "seed_workload",
    "tcp_workload",
    "catchup",
    "export_import",
    "process_managers",
    "consumer_groups",
)


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, wherever in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_installed_module_imports_the_benchmarks() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(
            name for name in imported_modules(path) if name.split(".")[0] == "benchmarks"
        )
        for folder in INSTALLED
        for path in sorted((REPO / folder).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_script_runs(script: str) -> None:
    result = run_module(f"benchmarks.{script}", "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: ")


def test_the_eventsourcing_baseline_imports() -> None:
    pytest.importorskip("eventsourcing")
    result = run_module("benchmarks.eventsourcing_baseline")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_tiny_seed_workload(tmp_path: Path) -> None:
    result = run_module(
        "benchmarks.seed_workload",
        *("--users", "100", "--commands", "1000", "--clients", "10"),
        *("--tune-gc", "--json-only", "--data", str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["motet"]["phase_a"]["commands"] == 100
    assert report["motet"]["phase_b"]["commands"] == 1000
    assert report["motet"]["phase_b"]["errors"] == {}
    assert (tmp_path / "motet" / "data.mdb").exists()


def test_a_tiny_export_import_run_reexports_the_same_bytes() -> None:
    result = run_module("benchmarks.export_import", "--events", "300", "--users", "10")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["events"] == 300
    assert report["reexport_identical"] is True


def test_the_seed_workload_measures_encryption_against_clear_fields(tmp_path: Path) -> None:
    result = run_module(
        "benchmarks.seed_workload",
        *("--users", "50", "--commands", "300", "--clients", "10"),
        *("--personal-data", "both", "--data", str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    for run in ("motet", "motet-clear"):
        assert report[run]["phase_b"]["commands"] == 300
        assert report[run]["phase_b"]["errors"] == {}
    assert -1 < report["encryption_cost_phase_b"] < 1
    assert "encrypting personal data costs" in result.stdout
    # The emails are in clear in the second store only.
    assert b"@example.com" not in (tmp_path / "motet" / "data.mdb").read_bytes()
    assert b"@example.com" in (tmp_path / "motet-clear" / "data.mdb").read_bytes()
