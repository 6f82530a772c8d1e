"""The test kit's face and what loading it costs: pytest loads the plugin in
every run, and domain code imports now() in production."""

from __future__ import annotations

import pytest

from tests.test_layering import loaded_by, offending


@pytest.mark.parametrize(
    "statement",
    [
        "import motet.engine.testing.plugin",
        "from motet.engine.testing import now, Clock",
    ],
)
def test_loading_the_plugin_or_the_clock_needs_no_runtime(statement: str) -> None:
    modules = loaded_by(statement)
    assert offending(modules, ("trio", "lmdb", "prometheus_client", "motet.actors")) == []


def test_every_exported_name_resolves() -> None:
    import motet.engine.testing as face

    assert sorted(set(face.__all__)) == sorted(face.__all__)
    assert [name for name in face.__all__ if getattr(face, name, None) is None] == []
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        face.NoSuchName  # noqa: B018
