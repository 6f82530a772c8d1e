"""Finding the :class:`~motet.engine.app.App` that ``--app MODULE:ATTR`` names."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import USAGE, fail

if TYPE_CHECKING:
    from ..app import App

__all__ = ["DEFAULT_APP", "load_app"]

DEFAULT_APP = "motet.engine.example:app"
"""The app ``motet serve`` and ``motet inspect`` use without ``--app``."""


def load_app(spec: str) -> App:
    """Import ``MODULE`` and return its ``ATTR``, which must be an App.
    Ends the command (status 2) with one line saying what went wrong."""
    from ..app import App

    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        fail(f"--app must look like MODULE:ATTR, got {spec!r}", USAGE)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"cannot import module {module_name!r} for --app: {exc}", USAGE)
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        fail(f"{spec} is not a motet App (found {type(app).__name__})", USAGE)
    return app
