"""pyproject.toml's [project] metadata: who publishes the package, and the
licence it claims (an SPDX expression) shipped beside it as text."""

from __future__ import annotations

import re
import tomllib

from tests.support.paths import REPO


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project


def test_the_package_names_its_authors() -> None:
    project = _project()
    authors = project["authors"]
    assert isinstance(authors, list) and authors
    assert all(author.get("name") for author in authors)
    assert project["keywords"]


def test_the_package_is_mit_licensed_and_ships_the_licence_text() -> None:
    project = _project()
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    # PEP 639: an SPDX expression replaces the "License ::" classifiers.
    classifiers = project.get("classifiers", ())
    assert isinstance(classifiers, list)
    assert not [c for c in classifiers if c.startswith("License ::")]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 The Motet maintainers" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_the_build_backend_reads_spdx_licence_expressions() -> None:
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert match is not None, setuptools
    assert int(match.group(1)) >= 77  # PEP 639 `license = "<SPDX>"` needs setuptools 77


def test_the_readme_names_the_licence() -> None:
    last_lines = (REPO / "README.md").read_text().rstrip().splitlines()[-5:]
    assert any("MIT" in line and "LICENSE" in line for line in last_lines)
