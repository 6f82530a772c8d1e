"""Where the checkout is, for what a test reads from it (README, deploy/) and
for the ``PYTHONPATH`` of the subprocesses it starts."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO"]

# tests/support/paths.py -> the checkout's root.
REPO = Path(__file__).resolve().parents[2]
