"""The import direction (storage ← actors ← engine; clients without the
runtime) and the package faces, checked in fresh interpreters: what a module
imports is only visible in a process that has imported nothing else."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# module → top-level (or dotted) names that importing it must not load.
FORBIDDEN: list[tuple[str, tuple[str, ...]]] = [
    ("motet.storage", ("trio", "lmdb")),
    ("motet.storage.errors", ("trio", "lmdb", "msgspec")),
    ("motet.storage.lmdb_store", ("trio",)),
    ("motet.actors", ("motet.engine",)),
    ("motet.actors.aggregate", ("motet.engine",)),
    ("motet.actors.projection", ("motet.engine",)),
    ("motet.engine", ("lmdb", "prometheus_client", "motet.actors", "trio")),
    ("motet.engine.net.client", ("lmdb", "prometheus_client", "motet.actors", "motet.engine.core")),
    ("motet.engine.net.blocking", ("lmdb", "prometheus_client", "motet.actors")),
    ("motet.engine.net.protocol", ("lmdb", "prometheus_client", "motet.actors")),
    ("motet.engine.cli", ("trio", "lmdb")),
]


def loaded_by(statement: str) -> list[str]:
    """The modules in ``sys.modules`` after running ``statement`` in a fresh
    interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


def offending(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize(("module", "forbidden"), FORBIDDEN, ids=[m for m, _ in FORBIDDEN])
def test_imports_follow_the_layers(module: str, forbidden: tuple[str, ...]) -> None:
    assert offending(loaded_by(f"import {module}"), forbidden) == []


def test_the_engine_face_loads_only_what_a_name_needs() -> None:
    modules = loaded_by("from motet.engine import Client, BlockingClient, ConnectionLost, connect")
    assert offending(modules, ("lmdb", "prometheus_client", "motet.actors")) == []
    modules = loaded_by("from motet.storage import MemoryStore")
    assert offending(modules, ("lmdb", "trio")) == []
    assert "lmdb" in loaded_by("from motet.storage import LmdbStore")


# --- The package faces -------------------------------------------------------------

FACES = ["motet.engine", "motet.actors", "motet.storage"]


@pytest.mark.parametrize("face", FACES)
def test_every_exported_name_resolves(face: str) -> None:
    code = (
        f"import {face} as face\n"
        "missing = [n for n in face.__all__ if getattr(face, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert sorted(set(face.__all__)) == sorted(face.__all__), 'duplicates'\n"
        "assert set(face.__all__) <= set(dir(face))\n"
        "try:\n"
        "    face.NoSuchName\n"
        "except AttributeError as exc:\n"
        f"    assert str(exc) == \"module '{face}' has no attribute 'NoSuchName'\", exc\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')"
    )
    loaded_by(code)


def test_the_engine_keeps_its_exports() -> None:
    import motet.engine

    assert {
        "Ack",
        "BadRequest",
        "BlockingClient",
        "Client",
        "ConnectionLost",
        "Engine",
        "EngineClosed",
        "EngineStatus",
        "InvalidMessage",
        "MotetError",
        "RemoteError",
        "RequestTooLarge",
        "Unauthorized",
        "Unavailable",
        "connect",
        "open_client",
        "open_engine",
        "open_server",
        "serve_engine",
    } <= set(motet.engine.__all__)
    from motet.engine.core import EngineStatus
    from motet.engine.net.client import BlockingClient, connect

    assert motet.engine.EngineStatus is EngineStatus
    assert (motet.engine.BlockingClient, motet.engine.connect) == (BlockingClient, connect)


# --- No module imports the old top-level names ---------------------------------------

OLD_NAMES = {"engine", "actors", "storage"}
SCANNED = ["engine", "actors", "storage", "benchmarks", "tests"]


def old_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [
            f"{path.relative_to(ROOT)}:{node.lineno}: {name}"
            for name in names
            if name.split(".")[0] in OLD_NAMES
        ]
    return found


def test_no_module_imports_the_old_top_level_names() -> None:
    files = [path for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 30
    assert [hit for path in files for hit in old_imports(path)] == []
