"""The ``motet`` command line: serve, client, status, inspect, bench, demo."""

from .main import main

__all__ = ["main"]
