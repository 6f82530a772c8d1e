"""Motet installs as one ``motet`` package: from a wheel, into a fresh virtualenv,
used from a folder outside the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*command: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_installs_only_motet_and_works_from_any_folder(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO, cwd=tmp_path)
    (wheel,) = dist.glob("motet-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"motet"}
    assert "motet/__init__.py" not in names  # an implicit namespace package
    for package in ("engine", "actors", "storage"):
        assert f"motet/{package}/__init__.py" in names
        assert f"motet/{package}/py.typed" in names
    assert not [name for name in names if name.startswith(("motet/benchmarks", "motet/tests"))]
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        assert "License-Expression: MIT" in archive.read(metadata).decode().splitlines()
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(licence) == (REPO / "LICENSE").read_bytes()

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "pip", "install", "-q", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    program = (
        "import motet.engine, motet.engine.example, motet.engine.net.client;"
        "from motet.engine import open_engine, CommandRejected, Unavailable;"
        "print(motet.engine.__file__)"
    )
    location = _run(venv / "bin" / "python", "-c", program, cwd=elsewhere)
    assert str(venv) in location
    assert str(REPO) not in location
    version = _run(venv / "bin" / "motet", "--version", cwd=elsewhere)
    assert version.startswith("motet ")
