"""pyproject.toml's [project] metadata: who publishes the package, and no
licence claimed without the licence text shipped beside it."""

from __future__ import annotations

import tomllib

from tests.support.paths import REPO


def test_the_package_names_its_authors_and_claims_no_licence_it_does_not_ship() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["authors"] and all(author.get("name") for author in project["authors"])
    assert project["keywords"]
    licence_files = [p for p in REPO.iterdir() if p.name.upper().startswith(("LICENSE", "COPYING"))]
    if "license" in project:
        assert licence_files, "pyproject.toml names a licence, but no LICENSE file ships"
    else:
        assert not any(c.startswith("License ::") for c in project.get("classifiers", ()))
