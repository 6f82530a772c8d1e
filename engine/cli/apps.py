"""Finding the :class:`~motet.engine.app.App` that ``--app`` names.

``--app`` is ``MODULE:ATTR`` (``todo:app``, ``motet.engine.example:app``) or
``FILE.py:ATTR`` (``./todo.py:app``, ``todo.py:app``, ``/srv/todo.py:app``).
As uvicorn and gunicorn do, the current directory is searched for modules
first, so an app next to where ``motet`` runs needs no ``PYTHONPATH``; a
file's own directory is searched too, so its sibling modules import.

Every way this can fail ends the command with one line that names the
problem and says what to try, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn

from .errors import USAGE, fail

if TYPE_CHECKING:
    from ..app import App

__all__ = ["DEFAULT_APP", "load_app"]

DEFAULT_APP = "motet.engine.example:app"
"""The app ``motet serve`` and ``motet inspect`` use without ``--app``."""


def load_app(spec: str) -> App:
    """Import the module or file of ``spec`` and return its ``ATTR``, which
    must be an App. Ends the command (status 2) with one line saying what went
    wrong and what to try."""
    from ..app import App

    # The last colon: a Windows path has one of its own (C:\apps\todo.py:app).
    where, colon, attribute = spec.rpartition(":")
    if not colon or not where or not attribute:
        fail(f"--app must look like MODULE:ATTR or FILE.py:ATTR, got {spec!r}", USAGE)
    _search_first(os.getcwd())
    if where.endswith(".py") or "/" in where or os.sep in where:
        module = _import_file(where, spec)
    else:
        module = _import_module(where, attribute, spec)
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
        hint = f"; Apps in it: {', '.join(apps)}" if apps else "; it holds no App"
        if not hasattr(module, attribute):
            fail(f"{where} has no attribute {attribute!r} for --app{hint}", USAGE)
        fail(f"{spec} is not a motet App (found {type(app).__name__}){hint}", USAGE)
    return app


def _search_first(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _import_module(name: str, attribute: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            as_file = f"./{name.replace('.', '/')}.py:{attribute}"
            fail(
                f"cannot import module {name!r} for --app: {exc} (looked in {os.getcwd()} "
                f"and on sys.path; give its file, e.g. --app {as_file}, or add its "
                "directory to PYTHONPATH)",
                USAGE,
            )
        _failed_import(f"module {name!r}", f'python -c "import {name}"', spec, exc)
    except Exception as exc:
        _failed_import(f"module {name!r}", f'python -c "import {name}"', spec, exc)


def _import_file(where: str, spec: str) -> ModuleType:
    if not where.endswith(".py"):
        fail(f"--app {spec}: {where!r} is not a Python file (give FILE.py:ATTR)", USAGE)
    if not Path(where).is_file():
        fail(f"no file {where!r} for --app (the current directory is {os.getcwd()})", USAGE)
    path = Path(where).resolve()
    name = path.stem
    if not name.isidentifier():
        fail(
            f"--app {spec}: a file named {path.name!r} cannot be imported; rename it to "
            "letters, digits and underscores, e.g. todo_app.py",
            USAGE,
        )
    loaded = sys.modules.get(name)
    if loaded is not None:
        if getattr(loaded, "__file__", None) == str(path):
            return loaded
        origin = getattr(loaded, "__file__", None) or "Python itself"
        fail(
            f"--app {spec}: a module named {name!r} is already imported (from {origin}); "
            f"rename {path.name}",
            USAGE,
        )
    _search_first(str(path.parent))
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        fail(f"--app {spec}: cannot load {path} as a module", USAGE)
    module = importlib.util.module_from_spec(module_spec)
    # Registered before it runs, as an import would, so the file's classes
    # pickle and its own "import todo" finds this module, not a second copy.
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        _failed_import(str(path), f"python {path}", spec, exc)
    return module


def _failed_import(what: str, rerun: str, spec: str, exc: Exception) -> NoReturn:
    """End the command for code that failed while it was imported: the error,
    where it happened, and what to try (``rerun`` shows the whole traceback)."""
    if isinstance(exc, SyntaxError):
        fail(f"--app {spec}: {exc.filename} line {exc.lineno}: {exc.msg}", USAGE)
    # The innermost frame outside the import machinery: where the failure happened.
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen ") and "importlib" not in frame.filename
    ]
    place = f" at {frames[-1].filename} line {frames[-1].lineno}" if frames else ""
    if isinstance(exc, ModuleNotFoundError):
        advice = f"is {exc.name!r} installed for {sys.executable}?"
    else:
        advice = f"to see the whole traceback, run: {rerun}"
    fail(
        f"--app {spec}: importing {what} failed{place}: {type(exc).__name__}: {exc} ({advice})",
        USAGE,
    )
